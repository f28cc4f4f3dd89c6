package hbone

// A write to a socket that never blocks, for the reader goroutine's direct path (see
// splice.go).

import "syscall"

// SocketWriter writes to a socket without blocking, for TryWriter implementations.
type SocketWriter struct{ rc syscall.RawConn }

// NewSocketWriter returns a SocketWriter for c if c is a socket (a syscall.Conn, such as
// *net.TCPConn), or nil. A nil *SocketWriter writes nothing.
func NewSocketWriter(c any) *SocketWriter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &SocketWriter{rc: rc}
}

// TryWrite writes what the socket's buffer takes of p now and returns how much that was.
func (w *SocketWriter) TryWrite(p []byte) int {
	if w == nil || len(p) == 0 {
		return 0
	}
	var n int
	// The function returns true at once: RawConn.Write does not wait for writability.
	_ = w.rc.Write(func(fd uintptr) bool {
		n = writeNonblocking(fd, p)
		return true
	})
	return n
}
