package hbone

// Splicing a stream's received bytes into a socket: the drain loop behind Stream.WriteTo
// and the server's pipe, and the direct path that lets the connection's reader goroutine
// write a small DATA frame straight to the destination socket, so a request or response
// wakes no goroutine besides the one the network woke.

import (
	"io"
	"net"
	"os"
	"sync"
)

// TryWriter is a destination that can take bytes without blocking. A stream copying into
// a TryWriter (Stream.WriteTo, a Server's upstream) lets its connection's reader goroutine
// write a DATA frame that arrives while nothing is buffered straight to it: the copying
// goroutine is not woken, and only what the destination did not take is buffered for it.
type TryWriter interface {
	io.Writer
	// TryWrite writes what it can of p without blocking and returns how many bytes it
	// wrote: 0 if it would block or failed (a later Write reports the error). It is called
	// from the connection's reader goroutine, concurrently with nothing else writing.
	TryWrite(p []byte) int
}

// socketTryWriter is a plain socket as a TryWriter.
type socketTryWriter struct {
	net.Conn
	sw *SocketWriter
}

func (s socketTryWriter) TryWrite(p []byte) int { return s.sw.TryWrite(p) }

// tryWriterFor returns w as a TryWriter: itself if it is one, a socket wrapped, or nil.
func tryWriterFor(w io.Writer) TryWriter {
	if tw, ok := w.(TryWriter); ok {
		return tw
	}
	if c, ok := w.(net.Conn); ok {
		if sw := NewSocketWriter(c); sw != nil {
			return socketTryWriter{Conn: c, sw: sw}
		}
	}
	return nil
}

// WriteTo copies the stream's bytes to w until the stream ends (io.EOF is not an error),
// as io.Copy would, and returns the bytes written. If w is a TryWriter or a socket, the
// connection's reader goroutine writes what arrives while nothing is buffered straight to
// w (see TryWriter). The read deadline applies.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	n, rerr, werr := s.st.splice(w)
	if werr != nil {
		return n, werr
	}
	return n, rerr
}

// splice copies st to w until st ends, with the direct path when w can take it. It
// reports the bytes written and, separately, the read and write errors (a clean EOF is a
// nil read error), as copyStream does.
func (st *stream) splice(w io.Writer) (n int64, rerr, werr error) {
	rb := &st.recv
	if tw := tryWriterFor(w); tw != nil {
		rb.setSink(tw)
		defer func() { n += rb.clearSink() }()
	}
	// The copy buffer is taken only while bytes wait in the stream's buffer: an idle
	// stream, or one whose bytes take the direct path, holds none.
	var (
		bp   *[]byte
		pool *sync.Pool
		buf  []byte
	)
	putBuf := func() {
		if bp != nil {
			pool.Put(bp)
			bp, buf = nil, nil
		}
	}
	defer putBuf()
	for {
		if st.closed.Load() {
			return n, net.ErrClosed, nil
		}
		expired, _ := st.rdDead.wait()
		if isClosed(expired) {
			return n, os.ErrDeadlineExceeded, nil
		}
		if bp == nil && rb.buffered() > 0 {
			bp, pool = smallCopyPool.Get().(*[]byte), &smallCopyPool
			buf = *bp
		}
		k, err := rb.take(buf)
		if k > 0 {
			st.c.consumed(st, k)
			m, ew := w.Write(buf[:k])
			n += int64(m)
			if ew == nil && m != k {
				ew = io.ErrShortWrite
			}
			if ew != nil {
				return n, nil, ew // the sink stays ours: nothing more is written to it
			}
			rb.release()
			switch {
			case k == len(buf) && pool == &smallCopyPool:
				// A full read: bulk transfer, continue with the large buffer.
				pool.Put(bp)
				bp, pool = largeCopyPool.Get().(*[]byte), &largeCopyPool
				buf = *bp
			case k < len(buf) && rb.buffered() == 0:
				putBuf() // drained
			}
			continue
		}
		if err != nil {
			if err == io.EOF {
				return n, nil, nil
			}
			if st.closed.Load() {
				err = net.ErrClosed
			}
			return n, err, nil
		}
		select {
		case <-rb.wake:
		case <-expired:
			return n, os.ErrDeadlineExceeded, nil
		}
	}
}

// deliverDirect is the reader goroutine's direct path for a DATA payload of n bytes (no
// padding) still in c.br: if st is spliced into a TryWriter and nothing is buffered, it
// writes what the destination takes without blocking and returns how many bytes that
// was; the caller buffers the rest as usual.
func (c *conn) deliverDirect(st *stream, n int) (int, error) {
	if n == 0 || n > c.br.Size() {
		return 0, nil
	}
	tw := st.recv.claimSink()
	if tw == nil {
		return 0, nil
	}
	p, err := c.br.Peek(n)
	if err != nil {
		st.recv.releaseSink(0)
		return 0, err
	}
	k := tw.TryWrite(p)
	_, _ = c.br.Discard(k)
	st.recv.releaseSink(k)
	if k > 0 {
		c.queueConsumed(st, k)
	}
	return k, nil
}
