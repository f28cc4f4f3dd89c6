package proxy

import (
	"errors"
	"io"
	"math"
	"net/http"
	"sync/atomic"
)

// maxPostHandlerReadBytes is how much of a request body the handler left unread is read
// and discarded to keep the stream alive (net/http's limit); a larger rest closes it.
const maxPostHandlerReadBytes = 256 << 10

// h1body is the body of a request served by serveHTTP1, as the handler reads it. Its
// first read answers 100 Continue if the request expects it; Close only stops further
// reads (net/http's server body drains on Close, which would block on a slow client).
// It records whether the body was read to its end, for keep-alive.
type h1body struct {
	src            io.ReadCloser // from http.ReadRequest
	w              *h1writer
	expectContinue bool
	read           atomic.Int64
	eof            atomic.Bool
	closed         atomic.Bool
	// held is set while a goroutine other than the stream's may read the body (an
	// upstream body writer); the stream then closes after the response.
	held atomic.Bool
}

func (b *h1body) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.expectContinue && len(p) > 0 {
		b.w.writeContinue()
	}
	n, err := b.src.Read(p)
	b.read.Add(int64(n))
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func (b *h1body) Close() error {
	b.closed.Store(true)
	return nil
}

// drain reads and discards what the handler left of the body, up to
// maxPostHandlerReadBytes, and reports whether the body then ended, so the stream can
// serve the next request.
func (b *h1body) drain(contentLength int64) bool {
	if b.eof.Load() {
		return true
	}
	if b.held.Load() || b.expectContinue && !b.w.wroteContinue {
		return false // read elsewhere, or the client waits for a 100 Continue it did not get
	}
	if contentLength > 0 && contentLength-b.read.Load() > maxPostHandlerReadBytes {
		return false
	}
	_, err := io.CopyN(io.Discard, b.src, maxPostHandlerReadBytes+1)
	return errors.Is(err, io.EOF)
}

// limitReader is what the stream's bufio.Reader reads through: it bounds the bytes of a
// request head (net/http's MaxHeaderBytes), returning EOF past the limit.
type limitReader struct {
	r   io.Reader
	n   int64 // bytes left
	hit bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		l.hit = true
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func (l *limitReader) limit(n int64) { l.n, l.hit = n, false }
func (l *limitReader) unlimited()    { l.n = math.MaxInt64 }
