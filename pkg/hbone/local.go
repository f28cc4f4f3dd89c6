package hbone

import (
	"net"
	"net/http"
	"sync/atomic"

	"golang.org/x/net/http2"
)

// Local returns the upstream a Handler returns to serve a stream in process rather than
// connect it somewhere (a waypoint terminating HTTP, say): the Server answers 200 and calls
// serve with the stream itself as a net.Conn. Its Read returns the client's bytes (io.EOF
// once the client half-closed), each Write is sent to the client at once, CloseWrite ends
// the server's direction (END_STREAM; the client's direction keeps flowing), and read and
// write deadlines work as net.Conn's (a passed deadline can be extended). The stream ends
// when serve returns: cleanly if both directions ended, with a reset otherwise; serve need
// not close c, and Close ends the stream early. Stats count the bytes serve read and
// wrote. Serve runs on the stream's goroutine and must return once c fails (the server
// closing ends it).
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
	deadlines
	st            *stream
	local, remote net.Addr
	read, written atomic.Int64
	werr          atomic.Pointer[error] // the first write error
}

var _ net.Conn = (*serverConn)(nil)

// serveLocal hands st to lu's serve and ends the stream when it returns.
func serveLocal(st *stream, lu *localUpstream, req *Request) Stats {
	c := &serverConn{deadlines: st.deadlines(), st: st, local: net.TCPAddrFromAddrPort(req.LocalAddr), remote: net.TCPAddrFromAddrPort(req.RemoteAddr)}
	lu.serve(c)
	stats := Stats{Status: http.StatusOK, ToUpstream: c.read.Load(), FromUpstream: c.written.Load()}
	if err := c.werr.Load(); err != nil {
		stats.Err = *err
	}
	return stats
}

func (c *serverConn) Read(p []byte) (int, error) {
	n, err := c.st.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *serverConn) Write(p []byte) (int, error) {
	n, err := c.st.Write(p)
	c.written.Add(int64(n))
	if err != nil && err != errWriteClosed && err != net.ErrClosed {
		c.werr.CompareAndSwap(nil, &err)
	}
	return n, err
}

// CloseWrite ends the server's direction: the client reads EOF.
func (c *serverConn) CloseWrite() error { return c.st.CloseWrite() }

// Close ends the stream now (see stream.close).
func (c *serverConn) Close() error {
	c.st.close(http2.ErrCodeNo)
	return nil
}

func (c *serverConn) LocalAddr() net.Addr  { return c.local }
func (c *serverConn) RemoteAddr() net.Addr { return c.remote }
