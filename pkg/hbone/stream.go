package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

var (
	// errStreamGone is what Write returns once the transport stopped reading: the peer
	// ended or reset the stream, or the connection failed.
	errStreamGone = errors.New("hbone stream closed by the peer or the connection")
	// errWriteClosed is what Write returns after CloseWrite.
	errWriteClosed = errors.New("hbone stream: write after CloseWrite")
)

// Stream is one HBONE tunnel opened by a [Dialer]: a full-duplex byte stream over an HTTP/2
// CONNECT. It implements net.Conn, plus CloseWrite, which half-closes the stream (the server
// sees EOF and can still reply).
//
// A Read with no read deadline set reads straight from the HTTP/2 stream; with a deadline,
// the read runs in the background into a pooled buffer so the deadline can interrupt it,
// and its data is kept for the next Read. SetReadDeadline therefore interrupts only a
// Read that started with a deadline set; Close interrupts any.
//
// Close must be called to release the stream's slot in its pooled connection.
type Stream struct {
	body    *bodyPipe
	resp    *http.Response
	cancel  context.CancelFunc
	local   net.Addr
	remote  net.Addr
	release func()

	rdMu      sync.Mutex // serializes Reads
	rdDead    *deadline
	pending   chan readResult // a background read in flight, or nil
	left      []byte          // data of a finished background read not yet returned
	leftBuf   *[]byte         // the pooled buffer left points into
	rdErr     error           // sticky error of a finished background read
	closeOnce sync.Once
	closed    atomic.Bool
}

type readResult struct {
	buf *[]byte
	n   int
	err error
}

var _ net.Conn = (*Stream)(nil)

// Read reads from the tunnel.
func (s *Stream) Read(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	s.rdMu.Lock()
	defer s.rdMu.Unlock()
	if len(s.left) > 0 {
		return s.drain(p), nil
	}
	if s.rdErr != nil {
		return 0, s.rdErr
	}
	expired, set := s.rdDead.wait()
	if !set && s.pending == nil {
		return s.resp.Body.Read(p)
	}
	select {
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	default:
	}
	if s.pending == nil {
		s.pending = make(chan readResult, 1)
		go backgroundRead(s.resp.Body, min(len(p), copyBufferSize), s.pending)
	}
	select {
	case r := <-s.pending:
		s.pending = nil
		s.left, s.leftBuf, s.rdErr = (*r.buf)[:r.n], r.buf, r.err
		if len(s.left) == 0 {
			s.recycle()
			return 0, s.rdErr
		}
		return s.drain(p), nil
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	}
}

// backgroundRead does one read for a Read that has a deadline. It always completes (Close
// closes the body), so the goroutine never outlives the stream.
func backgroundRead(body io.Reader, size int, out chan<- readResult) {
	buf := getBuffer()
	n, err := body.Read((*buf)[:max(size, 1)])
	out <- readResult{buf: buf, n: n, err: err}
}

func (s *Stream) drain(p []byte) int {
	n := copy(p, s.left)
	s.left = s.left[n:]
	if len(s.left) == 0 {
		s.recycle()
	}
	return n
}

func (s *Stream) recycle() {
	if s.leftBuf != nil {
		putBuffer(s.leftBuf)
		s.left, s.leftBuf = nil, nil
	}
}

// Write writes to the tunnel. It returns once the HTTP/2 transport has taken the bytes.
func (s *Stream) Write(p []byte) (int, error) { return s.body.write(p) }

// CloseWrite half-closes the stream: the server's upstream reads EOF, and Read still
// returns its reply.
func (s *Stream) CloseWrite() error {
	s.body.closeWithError(io.EOF, errWriteClosed)
	return nil
}

// Close closes the stream, resetting it if either direction is still open, and releases
// its slot in the pool. It is idempotent.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.body.closeWithError(net.ErrClosed, net.ErrClosed)
		s.resp.Body.Close()
		s.cancel()
		s.body.deadline.stop()
		s.rdDead.stop()
		s.release()
	})
	return nil
}

// LocalAddr is the local address of the pooled TCP connection carrying the stream.
func (s *Stream) LocalAddr() net.Addr { return s.local }

// RemoteAddr is the stream's target, the CONNECT :authority.
func (s *Stream) RemoteAddr() net.Addr { return s.remote }

// ResponseHeader returns the header fields of the server's 200 response.
func (s *Stream) ResponseHeader() http.Header { return s.resp.Header }

// SetDeadline sets both deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.rdDead.setDeadline(t)
	s.body.deadline.setDeadline(t)
	return nil
}

// SetReadDeadline sets the read deadline (see the type's documentation for which Reads
// it interrupts).
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.rdDead.setDeadline(t)
	return nil
}

// SetWriteDeadline sets the write deadline; it interrupts a blocked Write.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.body.deadline.setDeadline(t)
	return nil
}
