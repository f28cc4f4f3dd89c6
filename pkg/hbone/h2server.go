package hbone

// The server side of a connection: the requests HEADERS open, checked as HTTP/2 requires,
// and the response HEADERS.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// streamRequest is a request a server conn parsed from HEADERS, for its Server.
type streamRequest struct {
	method, authority string
	header            http.Header
	// status, if not zero, refuses the request with this status before any Handler sees
	// it (malformed in a way HTTP answers, not one HTTP/2 resets), err saying why.
	status int
	err    error
}

// connHeaders are the connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2).
var connHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

func (c *conn) serverHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 != 1 {
		return h2Error{http2.ErrCodeProtocol, "HEADERS with an even stream id"}
	}
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		c.mu.Unlock()
		// Trailers.
		switch {
		case st.remoteEnded:
			st.reset(http2.ErrCodeStreamClosed, resetError{code: http2.ErrCodeStreamClosed})
		case !f.StreamEnded():
			st.reset(http2.ErrCodeProtocol, errors.New("hbone stream: trailers without END_STREAM"))
		default:
			c.remoteEnd(st)
		}
		return nil
	}
	if id <= c.maxPeerID {
		c.mu.Unlock()
		return h2Error{http2.ErrCodeProtocol, "HEADERS reuse a stream id"}
	}
	c.maxPeerID = id
	switch {
	case c.goAwaySent || c.closed:
		c.mu.Unlock()
		return nil // above the GOAWAY's last stream: ignored
	case c.active >= serverMaxStreams:
		c.mu.Unlock()
		c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
		return nil
	}
	method, scheme := f.PseudoValue("method"), f.PseudoValue("scheme")
	authority, path := f.PseudoValue("authority"), f.PseudoValue("path")
	if f.PseudoValue("protocol") != "" ||
		method == "CONNECT" && (path != "" || scheme != "" || authority == "") ||
		method != "CONNECT" && (method == "" || path == "" || scheme != "https" && scheme != "http" || path[0] != '/' && path != "*") ||
		(scheme == "http" || scheme == "https") && strings.IndexByte(authority, '@') >= 0 {
		c.mu.Unlock()
		c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeProtocol) })
		return nil
	}
	st := newStream(c, id)
	st.sendWindow = c.peerInitWindow
	st.recvWindow = StreamWindow
	st.remoteEnded = f.StreamEnded()
	c.streams[id] = st
	c.active++
	c.mu.Unlock()
	if st.remoteEnded {
		st.recv.setErr(io.EOF)
	}
	req := &streamRequest{method: method, authority: authority, header: c.header(f.RegularFields())}
	if authority == "" {
		req.authority = req.header.Get("Host")
	}
	switch {
	case f.Truncated:
		req.status, req.err = http.StatusRequestHeaderFieldsTooLarge, errors.New("request header list too long")
	default:
		for _, k := range connHeaders {
			if _, ok := req.header[k]; ok {
				req.status, req.err = http.StatusBadRequest, fmt.Errorf("request header %q is not valid in HTTP/2", k)
			}
		}
		if te := req.header["Te"]; len(te) > 1 || len(te) == 1 && te[0] != "trailers" && te[0] != "" {
			req.status, req.err = http.StatusBadRequest, errors.New(`request header "TE" may only be "trailers" in HTTP/2`)
		}
	}
	c.onStream(st, req)
	return nil
}

// respond sends the response HEADERS of a server stream; a status other than 200 ends
// the stream's sending side.
func (c *conn) respond(st *stream, status int) error {
	end := status != http.StatusOK
	c.wmu.Lock()
	defer c.unlockWrite()
	c.mu.Lock()
	err := st.writeErrLocked()
	if err == nil && c.closed {
		err = connError{c.err}
	}
	var drained bool
	if err == nil && end {
		st.localEnded = true
		if st.remoteEnded {
			drained = c.finishLocked(st)
		}
	}
	table := c.peerTableSize
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.writeHeadersLocked(st.id, []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, end, table)
	err = c.flushLocked(nil)
	if drained {
		c.closeDrained()
	}
	return err
}
