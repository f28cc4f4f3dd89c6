package proxy

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
)

// A copy starts with a small buffer, enough for request/response traffic, and moves to
// a large one once a read fills the small one: bulk streams then move several TLS records
// (16 KiB) per syscall, while the many mostly idle connections of a node hold 16 KiB per
// direction instead of 256 KiB (as Istio's ztunnel resizes its copy buffers).
const (
	smallBufSize = 16 << 10
	largeBufSize = 256 << 10
)

var (
	smallBufPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufPool = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// closeWriter is a connection that can half-close (TCP, TLS, HBONE streams).
type closeWriter interface{ CloseWrite() error }

// Pipe copies a→b and b→a until both directions end, propagating half-closes, and reports
// bytes moved in each direction through the callbacks as they flow (for live metrics). It
// closes both connections before returning.
func Pipe(a, b net.Conn, aToB, bToA func(n int64)) (sentAB, sentBA int64, err error) {
	var wg sync.WaitGroup
	var errAB, errBA error
	wg.Add(1)
	go func() {
		defer wg.Done()
		sentBA, errBA = copyHalf(a, b, bToA)
	}()
	sentAB, errAB = copyHalf(b, a, aToB)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return sentAB, sentBA, errors.Join(quiet(errAB), quiet(errBA))
}

// copyHalf copies src to dst, then half-closes dst (or closes it when it cannot half-close)
// so the peer sees EOF while the other direction keeps flowing.
func copyHalf(dst, src net.Conn, count func(int64)) (int64, error) {
	var total int64
	var err error
	if st, ok := src.(*hbone.Stream); ok {
		// The stream's connection writes what arrives straight to dst when it can.
		total, err = st.WriteTo(newSink(dst, count))
	} else {
		total, err = copyBuffered(dst, src, count)
	}
	if cw, ok := dst.(closeWriter); ok && err == nil {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
		_ = src.Close() // unblock the other direction's write into src's peer
	}
	return total, err
}

// copyBuffered copies src to dst until src ends (a clean EOF is no error).
func copyBuffered(dst, src net.Conn, count func(int64)) (int64, error) {
	bp, pool := smallBufPool.Get().(*[]byte), &smallBufPool
	defer func() { pool.Put(bp) }()
	var total int64
	var err error
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if count != nil && w > 0 {
				count(int64(w))
			}
			if werr != nil {
				err = werr
				break
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				err = rerr
			}
			break
		}
		if n == len(buf) && pool == &smallBufPool {
			// A full read: bulk transfer, continue with the large buffer.
			pool.Put(bp)
			bp, pool = largeBufPool.Get().(*[]byte), &largeBufPool
			buf = *bp
		}
	}
	return total, err
}

// sink is a destination socket of a stream that counts its bytes; it is an
// hbone.TryWriter when dst is a socket.
type sink struct {
	net.Conn
	count func(int64)
}

func (s sink) Write(p []byte) (int, error) {
	n, err := s.Conn.Write(p)
	if n > 0 && s.count != nil {
		s.count(int64(n))
	}
	return n, err
}

type socketSink struct {
	sink
	sw *hbone.SocketWriter
}

func (s socketSink) TryWrite(p []byte) int {
	n := s.sw.TryWrite(p)
	if n > 0 && s.count != nil {
		s.count(int64(n))
	}
	return n
}

var _ hbone.TryWriter = socketSink{}

// newSink returns dst counting its bytes, as an hbone.TryWriter if dst is a socket.
func newSink(dst net.Conn, count func(int64)) io.Writer {
	s := sink{Conn: dst, count: count}
	if sw := hbone.NewSocketWriter(dst); sw != nil {
		return socketSink{sink: s, sw: sw}
	}
	return s
}

// quiet drops the errors that only say a peer closed first.
func quiet(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
		return nil
	}
	return err
}
