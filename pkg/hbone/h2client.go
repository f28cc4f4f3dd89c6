package hbone

// The client side of a connection: reserving and opening streams with HEADERS, and the
// response HEADERS that answer them.

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// canTakeNewStream reports whether the connection can open one more stream.
func (c *conn) canTakeNewStream() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.canTakeLocked()
}

func (c *conn) canTakeLocked() bool {
	return !c.closed && !c.goAwayRecv && c.nextID+2*uint32(c.reserved) < maxStreamID &&
		int64(c.active+c.reserved) < int64(c.peerMaxStreams)
}

// reserve takes a slot for a stream the caller will open with openStream.
func (c *conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.canTakeLocked() {
		return false
	}
	c.reserved++
	return true
}

// openStream sends HEADERS opening a stream on a slot taken with reserve.
func (c *conn) openStream(fields []hpack.HeaderField, endStream bool) (*stream, error) {
	c.wmu.Lock()
	defer c.unlockWrite()
	c.mu.Lock()
	c.reserved--
	switch {
	case c.closed:
		err := connError{c.err}
		c.mu.Unlock()
		return nil, err
	case c.goAwayRecv:
		drained := c.drainedLocked()
		c.mu.Unlock()
		if drained {
			c.closeDrained()
		}
		return nil, errRefused
	}
	st := newStream(c, c.nextID)
	c.nextID += 2
	st.sendWindow = c.peerInitWindow
	st.recvWindow = StreamWindow
	st.resp = make(chan *response, 1)
	st.localEnded = endStream
	c.streams[st.id] = st
	c.active++
	maxList, table := c.peerMaxHeaderList, c.peerTableSize
	c.mu.Unlock()

	if maxList > 0 {
		var size uint32
		for _, f := range fields {
			size += f.Size()
		}
		if size > maxList {
			c.mu.Lock()
			drained := c.finishLocked(st)
			c.mu.Unlock()
			if drained {
				c.closeDrained()
			}
			return nil, fmt.Errorf("request header list of %d bytes exceeds the server's limit of %d", size, maxList)
		}
	}
	c.writeHeadersLocked(st.id, fields, endStream, table)
	if err := c.flushLocked(nil); err != nil {
		return nil, err
	}
	return st, nil
}

// awaitResponse waits for the response HEADERS of a client stream.
func (st *stream) awaitResponse(done <-chan struct{}) (*response, error) {
	select {
	case r := <-st.resp:
		return r, nil
	case <-st.done:
		select {
		case r := <-st.resp:
			return r, nil
		default:
		}
		return nil, st.recv.error()
	case <-done:
		return nil, nil
	}
}

func (c *conn) clientHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	st := c.streams[id]
	idle := st == nil && c.idleLocked(id)
	c.mu.Unlock()
	if idle {
		return h2Error{http2.ErrCodeProtocol, "HEADERS on an idle stream"}
	}
	if st == nil {
		return nil
	}
	if len(st.resp) > 0 || st.gotResponse {
		// Trailers.
		if !f.StreamEnded() {
			st.reset(http2.ErrCodeProtocol, errors.New("hbone stream: HEADERS after the response without END_STREAM"))
			return nil
		}
		c.remoteEnd(st)
		return nil
	}
	if f.Truncated {
		st.reset(http2.ErrCodeProtocol, errors.New("hbone response header list too long"))
		return nil
	}
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 {
		st.reset(http2.ErrCodeProtocol, fmt.Errorf("hbone response with malformed :status %q", f.PseudoValue("status")))
		return nil
	}
	if code < 200 {
		if f.StreamEnded() {
			st.reset(http2.ErrCodeProtocol, errors.New("hbone informational response ends the stream"))
		}
		return nil // 1xx: the response follows
	}
	st.gotResponse = true
	st.resp <- &response{status: code, header: c.header(f.RegularFields())}
	if f.StreamEnded() {
		c.remoteEnd(st)
	}
	return nil
}
