package hbone

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// Local returns the upstream a Handler returns to serve a stream in process rather than
// connect it somewhere (a waypoint terminating HTTP, say): the Server answers 200 and calls
// serve with the stream itself as a net.Conn. Its Read returns the client's bytes (io.EOF
// once the client half-closed), each Write is sent to the client at once, CloseWrite ends
// the server's direction, and the read and write deadlines work (a read deadline that
// passed ends the reading of the stream for good). The stream ends when serve
// returns; serve need not close c. Stats count the bytes serve read and wrote. Serve runs
// on the stream's goroutine and must return once c fails (the server closing ends it).
func Local(serve func(c net.Conn)) net.Conn { return &localUpstream{serve: serve} }

// localUpstream marks a Handler's result as Local. Its net.Conn methods are never used: the
// Server recognises it and hands the stream to serve.
type localUpstream struct {
	net.Conn // nil; the methods are not called
	serve    func(net.Conn)
}

func (*localUpstream) Close() error { return nil }

// serverConn is an accepted stream as a net.Conn, for Local.
type serverConn struct {
	r             *http.Request
	w             http.ResponseWriter
	rc            *http.ResponseController
	local, remote net.Addr
	read, written int64
	werr          error
	writeClosed   bool
}

func newServerConn(w http.ResponseWriter, r *http.Request, local, remote netip.AddrPort) *serverConn {
	return &serverConn{r: r, w: w, rc: http.NewResponseController(w),
		local: net.TCPAddrFromAddrPort(local), remote: net.TCPAddrFromAddrPort(remote)}
}

func (c *serverConn) Read(p []byte) (int, error) {
	n, err := c.r.Body.Read(p)
	c.read += int64(n)
	return n, err
}

func (c *serverConn) Write(p []byte) (int, error) {
	if c.writeClosed {
		return 0, errWriteClosed
	}
	if c.werr != nil {
		return 0, c.werr
	}
	n, err := c.w.Write(p)
	c.written += int64(n)
	if err == nil {
		err = c.rc.Flush()
	}
	if err != nil {
		c.werr = err
	}
	return n, err
}

// CloseWrite stops further writes. The client sees the end of the server's direction when
// serve returns: net/http's handler model ends a response only by returning.
func (c *serverConn) CloseWrite() error {
	c.writeClosed = true
	return nil
}

// Close ends reading the client; the stream itself ends when serve returns.
func (c *serverConn) Close() error { return c.r.Body.Close() }

func (c *serverConn) LocalAddr() net.Addr  { return c.local }
func (c *serverConn) RemoteAddr() net.Addr { return c.remote }

func (c *serverConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}
func (c *serverConn) SetReadDeadline(t time.Time) error  { return c.rc.SetReadDeadline(t) }
func (c *serverConn) SetWriteDeadline(t time.Time) error { return c.rc.SetWriteDeadline(t) }

var _ io.ReadWriteCloser = (*serverConn)(nil)
