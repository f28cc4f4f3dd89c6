package proxy

import (
	"bufio"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// bufferBeforeChunking is how much body a response without a declared length may write
// before its header is committed: a handler that ends within it gets a Content-Length
// (net/http's bufferBeforeChunkingSize).
const bufferBeforeChunking = 2048

// h1writer is the http.ResponseWriter of one HTTP/1.x request served by serveHTTP1. It
// writes the status line, the header and the body into a bufio.Writer over the stream,
// which is flushed once when the response ends (or when the handler flushes), so a
// response that fits the buffer leaves in one write. It follows net/http's server:
// Content-Length when the declared or buffered length is known, chunked otherwise (close
// delimited for HTTP/1.0), no body for HEAD, 1xx, 204 and 304, Connection: close when the
// request or handler asked for it, 100 Continue on the first read of a body that expects
// it.
type h1writer struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	req  *http.Request
	body *h1body // the request body; nil if none

	header  http.Header
	status  int   // 0 until WriteHeader
	cl      int64 // declared Content-Length, -1 if none
	written int64 // body bytes the handler wrote
	pending []byte

	// mu guards committed and the writer before the commit against writeContinue, which a
	// body read on another goroutine may call.
	mu            sync.Mutex
	committed     bool
	canContinue   bool // the request expects 100 Continue and none was sent
	wroteContinue bool

	chunked    bool
	noBody     bool // HEAD, or a status without a body
	closeAfter bool // close the stream after this response
	hijacked   bool
	draining   func() bool // the proxy is shutting down: close after the response
	scratch    [64]byte
}

var _ http.Flusher = (*h1writer)(nil)
var _ http.Hijacker = (*h1writer)(nil)

// reset prepares w for the next request on the stream.
func (w *h1writer) reset(req *http.Request, body *h1body) {
	if w.header == nil {
		w.header = make(http.Header, 8)
	} else {
		clear(w.header)
	}
	w.req, w.body = req, body
	w.status, w.cl, w.written = 0, -1, 0
	w.pending = w.pending[:0]
	w.committed, w.wroteContinue, w.chunked, w.noBody, w.hijacked = false, false, false, false, false
	w.canContinue = body != nil && body.expectContinue
	w.closeAfter = req.Close
}

func (w *h1writer) Header() http.Header { return w.header }

func (w *h1writer) WriteHeader(code int) {
	if w.hijacked || w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		w.writeInformational(code)
		return
	}
	w.status = code
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.cl = n
		} else {
			w.header.Del("Content-Length")
		}
	}
	w.noBody = w.req.Method == http.MethodHead || !bodyAllowedForStatus(code)
}

// writeInformational sends a 1xx response at once, with the header set so far (not
// cleared, as in net/http).
func (w *h1writer) writeInformational(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.committed {
		return
	}
	if code == http.StatusContinue {
		w.canContinue = false
	}
	w.writeStatusLine(code)
	for k, vv := range w.header {
		if k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		w.writeHeaderField(k, vv)
	}
	_, _ = w.bw.WriteString("\r\n")
	_ = w.bw.Flush()
}

// writeContinue answers 100 Continue, once, unless the response has started.
func (w *h1writer) writeContinue() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.committed || !w.canContinue {
		return
	}
	w.canContinue, w.wroteContinue = false, true
	_, _ = w.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	_ = w.bw.Flush() // a failure shows when the response is written
}

func (w *h1writer) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.cl != -1 && w.written > w.cl {
		return 0, http.ErrContentLength
	}
	if w.noBody {
		return len(p), nil
	}
	if !w.committed {
		if w.cl == -1 && len(w.pending)+len(p) <= bufferBeforeChunking {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		if err := w.commit(false); err != nil {
			return 0, err
		}
	}
	return w.writeBody(p)
}

func (w *h1writer) writeBody(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.chunked {
		w.bw.Write(strconv.AppendInt(w.scratch[:0], int64(len(p)), 16))
		w.bw.WriteString("\r\n")
		n, err := w.bw.Write(p)
		if err == nil {
			_, err = w.bw.WriteString("\r\n")
		}
		return n, err
	}
	return w.bw.Write(p)
}

func (w *h1writer) Flush() { _ = w.FlushError() }

// FlushError commits the header, sends what is buffered, and reports a failed write.
func (w *h1writer) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if err := w.commit(false); err != nil {
			return err
		}
	}
	if err := w.flushPending(); err != nil {
		return err
	}
	return w.bw.Flush()
}

func (w *h1writer) flushPending() error {
	if len(w.pending) == 0 {
		return nil
	}
	_, err := w.writeBody(w.pending)
	w.pending = w.pending[:0]
	return err
}

// Hijack hands the stream to the handler, for protocol upgrades: the writer and the
// serving loop leave it alone afterwards, and the stream ends when the handler returns.
func (w *h1writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	w.mu.Lock()
	w.hijacked, w.committed = true, true
	w.mu.Unlock()
	return w.conn, bufio.NewReadWriter(w.br, w.bw), nil
}

// finish ends the response once the handler returned, and reports whether the stream may
// serve another request.
func (w *h1writer) finish() bool {
	if w.hijacked {
		return false
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if err := w.commit(true); err != nil {
			return false
		}
	}
	if err := w.flushPending(); err != nil {
		return false
	}
	if w.chunked {
		w.bw.WriteString("0\r\n")
		w.writeTrailers()
		w.bw.WriteString("\r\n")
	}
	if w.cl != -1 && !w.noBody && w.written != w.cl {
		w.closeAfter = true // a cut response: the client must see the stream end
	}
	if err := w.bw.Flush(); err != nil {
		return false
	}
	return !w.closeAfter
}

// commit decides the framing and writes the status line and header into the buffer.
// final says the handler returned, so the pending body is all of it.
func (w *h1writer) commit(final bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.canContinue {
		// The client waits for 100 Continue, which will not come: it may or may not send
		// the body, so nothing after this response can be parsed.
		w.canContinue, w.closeAfter = false, true
	}
	w.committed = true
	h, req := w.header, w.req
	delete(h, "Transfer-Encoding")
	hasTrailers := h.Get("Trailer") != "" || w.hasPrefixedTrailers()
	switch {
	case w.noBody:
		if w.status == http.StatusNotModified {
			delete(h, "Content-Type")
			delete(h, "Content-Length")
		} else if !bodyAllowedForStatus(w.status) {
			delete(h, "Content-Length")
		}
	case w.cl != -1:
	case final && !hasTrailers:
		w.cl = int64(len(w.pending))
		h["Content-Length"] = []string{strconv.Itoa(len(w.pending))}
	case req.ProtoAtLeast(1, 1):
		w.chunked = true
	default:
		w.closeAfter = true // HTTP/1.0 without a length: the end of the stream delimits it
	}
	if w.draining != nil && w.draining() {
		w.closeAfter = true
	}
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	if !req.ProtoAtLeast(1, 1) && !w.closeAfter {
		if _, ok := h["Connection"]; !ok {
			h["Connection"] = []string{"keep-alive"}
		}
	}
	if w.closeAfter && req.ProtoAtLeast(1, 1) && w.status != http.StatusSwitchingProtocols {
		h["Connection"] = []string{"close"}
	}
	w.writeStatusLine(w.status)
	if _, ok := h["Date"]; !ok {
		w.bw.WriteString("Date: ")
		w.bw.Write(time.Now().UTC().AppendFormat(w.scratch[:0], http.TimeFormat))
		w.bw.WriteString("\r\n")
	}
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) || w.chunked && k == "Content-Length" {
			continue
		}
		w.writeHeaderField(k, vv)
	}
	if w.chunked {
		w.bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	_, err := w.bw.WriteString("\r\n")
	return err
}

func (w *h1writer) hasPrefixedTrailers() bool {
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// writeTrailers writes the trailers of a chunked response: the fields the Trailer header
// announced, and those set with http.TrailerPrefix.
func (w *h1writer) writeTrailers() {
	for _, v := range w.header["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			k = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(k))
			if vv, ok := w.header[k]; ok && k != "" {
				w.writeHeaderField(k, vv)
			}
		}
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			w.writeHeaderField(name, vv)
		}
	}
}

func (w *h1writer) writeStatusLine(code int) {
	if w.req.ProtoAtLeast(1, 1) {
		w.bw.WriteString("HTTP/1.1 ")
	} else {
		w.bw.WriteString("HTTP/1.0 ")
	}
	w.bw.Write(strconv.AppendInt(w.scratch[:0], int64(code), 10))
	w.bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		w.bw.WriteString(text)
	} else {
		w.bw.WriteString("status code ")
		w.bw.Write(strconv.AppendInt(w.scratch[:0], int64(code), 10))
	}
	w.bw.WriteString("\r\n")
}

func (w *h1writer) writeHeaderField(k string, vv []string) {
	for _, v := range vv {
		w.bw.WriteString(k)
		w.bw.WriteString(": ")
		writeFieldValue(w.bw, v)
		w.bw.WriteString("\r\n")
	}
}

// writeFieldValue writes a header value with CR and LF replaced by spaces and the
// surrounding white space trimmed, as net/http's Header.Write does.
func writeFieldValue(bw *bufio.Writer, v string) {
	v = textproto.TrimString(v)
	if !strings.ContainsAny(v, "\r\n") {
		bw.WriteString(v)
		return
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		bw.WriteByte(c)
	}
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199, status == http.StatusNoContent, status == http.StatusNotModified:
		return false
	}
	return true
}
