package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
)

// The HTTP/1.1 client's limits.
const (
	// maxBufferedBody bounds a request body read ahead, so that it leaves with the head in
	// one write (and may be sent again on another connection); a larger one is streamed.
	maxBufferedBody = 64 << 10
	// maxResponseHeaderBytes is net/http's Transport's default limit.
	maxResponseHeaderBytes = 10 << 20
	// max1xxResponses is net/http's Transport's limit of informational responses.
	max1xxResponses = 5
	// staleAfter: a connection idle this long that fails before any response byte is
	// taken as closed by the upstream while idle, and the request is sent again.
	staleAfter = time.Second
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) <= 2*maxBufferedBody {
		*b = (*b)[:0]
		bufPool.Put(b)
	}
}

var (
	headRequest  = &http.Request{Method: http.MethodHead}
	otherRequest = &http.Request{Method: http.MethodGet}
)

// errNothingReceived: the connection failed before any byte of a response.
var errNothingReceived = errors.New("upstream connection closed before a response")

// roundTrip sends rq to route over a pooled connection, or a new one, and reads the
// response head; the response Body (an *upBody) returns the connection to the pool once
// read to its end and closed. 1xx responses go to on1xx if set. ctx cancels the exchange
// until the body is closed. A replayable request that fails before any response byte on
// a reused connection idle long enough to have been closed by the upstream is sent once
// more on a new one (net/http's Transport notices such closes with a background read).
func (p *Proxy) roundTrip(ctx context.Context, key upstreamKey, route meshstate.Route, rq *upRequest, on1xx func(*http.Response)) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		var uc *upstreamConn
		if attempt == 0 {
			uc = p.h1.get(key)
		}
		var stale bool
		if uc == nil {
			c, err := p.dialRoute(ctx, route)
			if err != nil {
				return nil, err
			}
			uc = newUpstreamConn(c, key)
		} else {
			stale = time.Since(uc.idleSince) >= staleAfter
		}
		resp, err := p.exchange(ctx, uc, rq, on1xx)
		if err != nil && attempt == 0 && uc.reused && rq.replayable && (rq.idempotent || stale) &&
			errors.Is(err, errNothingReceived) && ctx.Err() == nil {
			continue
		}
		return resp, err
	}
}

// exchange is one request and response head on uc; it closes uc on failure.
func (p *Proxy) exchange(ctx context.Context, uc *upstreamConn, rq *upRequest, on1xx func(*http.Response)) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		uc.Close()
		return nil, err
	}
	if _, err := uc.Write(rq.msg); err != nil {
		return fail(fmt.Errorf("writing the request: %w: %w", errNothingReceived, err))
	}
	var bodyDone chan error
	if rq.body != nil {
		bodyDone = make(chan error, 1)
		if rq.held != nil {
			rq.held.Store(true)
		}
		p.wg.Add(1)
		go func() { // ends with the body, or when uc or the client's stream closes
			defer p.wg.Done()
			err := writeBody(uc, rq.body, rq.length)
			if err != nil {
				uc.Close() // the upstream must not wait for the rest
			}
			if rq.held != nil {
				rq.held.Store(false)
			}
			bodyDone <- err
		}()
	}
	var resp *http.Response
	for n1xx := 0; ; n1xx++ {
		uc.lr.limit(maxResponseHeaderBytes)
		var err error
		resp, err = http.ReadResponse(uc.br, methodRequest(rq.method))
		received := uc.lr.n < maxResponseHeaderBytes
		uc.lr.unlimited()
		if err != nil {
			if !received && n1xx == 0 {
				err = fmt.Errorf("%w: %w", errNothingReceived, err)
			}
			return fail(fmt.Errorf("reading the response: %w", err))
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if n1xx == max1xxResponses {
			return fail(errors.New("too many 1xx informational responses"))
		}
		if on1xx != nil {
			on1xx(resp)
		}
	}
	resp.Body = &upBody{body: resp.Body, uc: uc, pool: &p.h1, stop: stop, bodyDone: bodyDone,
		eof: resp.Body == http.NoBody, reusable: !resp.Close}
	return resp, nil
}

func methodRequest(method string) *http.Request {
	switch method {
	case http.MethodHead:
		return headRequest
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions:
		return otherRequest
	}
	return &http.Request{Method: method}
}

// writeBody streams a request body after its head: length bytes, or chunked if
// length < 0, each chunk in one write.
func writeBody(w io.Writer, body io.Reader, length int64) error {
	bp := getBuf()
	defer putBuf(bp)
	buf := (*bp)[:cap(*bp)]
	if len(buf) < 32<<10 {
		buf = make([]byte, 32<<10)
		*bp = buf[:0]
	}
	if length >= 0 {
		n, err := io.CopyBuffer(w, io.LimitReader(body, length), buf)
		if err == nil && n != length {
			err = fmt.Errorf("request body of %d bytes, %d declared: %w", n, length, io.ErrUnexpectedEOF)
		}
		return err
	}
	const room = 12 // "%x\r\n" of a 32 KiB chunk, then "\r\n"
	for {
		n, rerr := body.Read(buf[room : len(buf)-2])
		if n > 0 {
			size := strconv.AppendInt(buf[:0:room], int64(n), 16)
			start := room - len(size) - 2
			copy(buf[start:], size)
			copy(buf[room-2:], "\r\n")
			copy(buf[room+n:], "\r\n")
			if _, err := w.Write(buf[start : room+n+2]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			_, err := io.WriteString(w, "0\r\n\r\n")
			return err
		}
		if rerr != nil {
			return rerr
		}
	}
}

// upBody is an upstream response body: closing it returns the connection to the pool if
// the body was read to its end, the request body was sent, and neither side asked to
// close; else it closes the connection.
type upBody struct {
	body     io.ReadCloser
	uc       *upstreamConn
	pool     *h1pool
	stop     func() bool
	bodyDone chan error // the request body writer's result; nil if there is none
	eof      bool
	reusable bool
	done     bool
}

func (b *upBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *upBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	keep := b.eof && b.reusable
	if b.bodyDone != nil {
		select {
		case err := <-b.bodyDone:
			keep = keep && err == nil
		default:
			keep = false // still sending: the upstream answered early
		}
	}
	if !b.stop() {
		keep = false // the context closed it
	}
	if keep && b.pool.put(b.uc) {
		return nil
	}
	return b.uc.Close()
}

// detach hands the connection over (after 101 Switching Protocols); it is never pooled.
func (b *upBody) detach() *upstreamConn {
	b.done = true
	b.stop()
	return b.uc
}
