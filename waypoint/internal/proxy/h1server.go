package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 server's limits, net/http's as the waypoint configured them.
const (
	readHeaderTimeout = 30 * time.Second
	idleTimeout       = time.Hour
	maxHeaderBytes    = http.DefaultMaxHeaderBytes
	writeBufferSize   = 8 << 10
)

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufferSize) }}
)

func getReader(r io.Reader) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
}

func getWriter(w io.Writer) *bufio.Writer {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writerPool.Put(bw)
}

// serveHTTP1 serves HTTP/1.x requests on a stream, one after the other, on the stream's
// goroutine, until either side closes it or a timeout passes: 30 s to read a request
// head, an hour idle between requests. lr is the limit under br.
func (p *Proxy) serveHTTP1(ctx context.Context, sv *served, c net.Conn, lr *limitReader, br *bufio.Reader, handle handlerFunc) {
	bw := getWriter(c)
	w := &h1writer{conn: c, br: br, bw: bw, draining: p.streams.draining.Load}
	body := &h1body{w: w}
	remote := c.RemoteAddr().String()
	// Timeouts close the stream, which fails the read in progress.
	timer := time.AfterFunc(readHeaderTimeout, sv.close)
	defer func() {
		timer.Stop()
		putWriter(bw)
		if !body.held.Load() && !w.hijacked { // nothing can read br any more
			putReader(br)
		}
	}()
	for first := true; ; first = false {
		if !first {
			if br.Buffered() == 0 {
				if !p.streams.idle(sv) {
					return
				}
				timer.Reset(idleTimeout)
				_, err := br.Peek(1)
				if !sv.active() || err != nil {
					return
				}
			}
			timer.Reset(readHeaderTimeout)
		}
		lr.limit(maxHeaderBytes + 4096)
		req, err := http.ReadRequest(br)
		lr.unlimited()
		timer.Stop()
		if err != nil {
			if lr.hit {
				err = errHeaderTooLarge
			}
			if sv.state.Load() != stateClosed {
				writeReadError(c, err)
			}
			return
		}
		if msg := checkRequest(req); msg != "" {
			writeReadError(c, badRequest(msg))
			return
		}
		req.RemoteAddr = remote
		if req.Body == http.NoBody {
			w.reset(req, nil)
		} else {
			*body = h1body{src: req.Body, w: w, expectContinue: expectsContinue(req)}
			req.Body = body
			w.reset(req, body)
		}
		if expect := req.Header["Expect"]; len(expect) > 0 {
			if !httpguts.HeaderValuesContainsToken(expect, "100-continue") {
				w.closeAfter = true
				w.WriteHeader(http.StatusExpectationFailed)
				w.finish()
				return
			}
			delete(req.Header, "Expect") // answered here (as Envoy does), not passed upstream
		}
		if !p.serveOne(ctx, w, req, handle) || w.hijacked || !w.finish() {
			return
		}
		if req.Body != http.NoBody && !body.drain(req.ContentLength) {
			return
		}
	}
}

// handlerFunc serves one request; ctx ends with the stream.
type handlerFunc func(ctx context.Context, w http.ResponseWriter, r *http.Request)

// serveOne runs the handler for one request; false if it panicked (the stream must be
// cut: http.ErrAbortHandler is how a handler aborts a response in progress).
func (p *Proxy) serveOne(ctx context.Context, w *h1writer, req *http.Request, handle handlerFunc) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				p.log.Error("panic serving a request", "err", v, "path", req.URL.Path)
			}
			if !w.hijacked && w.committed {
				_ = w.bw.Flush() // what the response had, as net/http sends it before closing
			}
			ok = false
		}
	}()
	handle(ctx, w, req)
	return true
}

// expectsContinue: an HTTP/1.1 request with a body that waits for 100 Continue (net/http
// ignores the expectation otherwise).
func expectsContinue(req *http.Request) bool {
	return req.ProtoAtLeast(1, 1) && req.ContentLength != 0 &&
		httpguts.HeaderValuesContainsToken(req.Header["Expect"], "100-continue")
}

// checkRequest applies net/http's server checks that http.ReadRequest leaves out; it
// returns the reason a request is bad, or "". (ReadRequest drops the Host field, so an
// empty Host counts as missing, and a repeated one goes unnoticed.)
func checkRequest(req *http.Request) string {
	if req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != http.MethodConnect {
		return "missing required Host header"
	}
	if !httpguts.ValidHostHeader(req.Host) {
		return "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return "invalid header value"
			}
		}
	}
	return ""
}

var errHeaderTooLarge = errors.New("request header too large")

type badRequest string

func (e badRequest) Error() string { return string(e) }

// writeReadError answers a request that could not be read as net/http's server does: 431
// for a head too large, 501 for an unknown transfer coding, 400 otherwise; nothing when
// the client went away or a timeout closed the stream.
func writeReadError(c net.Conn, err error) {
	const headers = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	var br badRequest
	switch {
	case errors.Is(err, errHeaderTooLarge):
		const msg = "431 Request Header Fields Too Large"
		_, _ = io.WriteString(c, "HTTP/1.1 "+msg+headers+msg)
	case errors.Is(err, io.EOF), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed):
	case isUnsupportedTE(err):
		_, _ = io.WriteString(c, "HTTP/1.1 501 Not Implemented"+headers+"Unsupported transfer encoding")
	case errors.As(err, &br):
		msg := "400 Bad Request: " + string(br)
		_, _ = io.WriteString(c, "HTTP/1.1 "+msg+headers+msg)
	default:
		const msg = "400 Bad Request"
		_, _ = io.WriteString(c, "HTTP/1.1 "+msg+headers+msg)
	}
}

// isUnsupportedTE: http.ReadRequest's error for a transfer coding it does not know (of an
// unexported type).
func isUnsupportedTE(err error) bool {
	return strings.HasPrefix(err.Error(), "unsupported transfer encoding")
}
