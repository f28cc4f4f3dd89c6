package hbone

import (
	"net"
	"net/http"
	"sync"

	"golang.org/x/net/http2"
)

// Stream is one HBONE tunnel opened by a [Dialer]: a full-duplex byte stream over an HTTP/2
// CONNECT. It implements net.Conn with its deadlines, plus CloseWrite, which half-closes
// the stream (the server sees EOF and can still reply).
//
// Write returns once its bytes were written to the connection, as DATA frames of at most
// the peer's frame size. Close ends the stream as closing a TCP socket would: cleanly
// (END_STREAM) if the server already ended its side, with a reset (RST_STREAM CANCEL)
// otherwise. Close must be called to release the stream's slot in its pooled connection.
type Stream struct {
	deadlines
	st      *stream
	header  http.Header
	local   net.Addr
	remote  net.Addr
	release func()
	once    sync.Once
}

var _ net.Conn = (*Stream)(nil)

// Read reads from the tunnel.
func (s *Stream) Read(p []byte) (int, error) { return s.st.Read(p) }

// Write writes to the tunnel.
func (s *Stream) Write(p []byte) (int, error) { return s.st.Write(p) }

// CloseWrite half-closes the stream: the server's upstream reads EOF, and Read still
// returns its reply.
func (s *Stream) CloseWrite() error { return s.st.CloseWrite() }

// Close closes the stream and releases its slot in the pool. It is idempotent.
func (s *Stream) Close() error {
	s.once.Do(func() {
		s.st.close(http2.ErrCodeCancel)
		s.release()
	})
	return nil
}

// LocalAddr is the local address of the pooled TCP connection carrying the stream.
func (s *Stream) LocalAddr() net.Addr { return s.local }

// RemoteAddr is the stream's target, the CONNECT :authority.
func (s *Stream) RemoteAddr() net.Addr { return s.remote }

// ResponseHeader returns the header fields of the server's 200 response.
func (s *Stream) ResponseHeader() http.Header { return s.header }
