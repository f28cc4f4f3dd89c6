package hbone

import (
	"io"
	"sync"
)

// A server stream's copy starts with a small buffer, enough for request/response traffic,
// and moves to a large one once a read fills the small one: bulk streams then write large
// DATA frames and upstream writes, while mostly idle streams hold 16 KiB per direction.
const (
	smallCopySize = 16 << 10
	largeCopySize = 256 << 10
)

var (
	smallCopyPool = sync.Pool{New: func() any { b := make([]byte, smallCopySize); return &b }}
	largeCopyPool = sync.Pool{New: func() any { b := make([]byte, largeCopySize); return &b }}
)

// copyStream copies src to dst with pooled buffers until src ends. (A stream's Write sends
// its bytes at once; nothing needs flushing.) It reports the bytes written and,
// separately, the read and write errors (a clean EOF is a nil read error), so the caller
// can tell which side failed. It deliberately bypasses ReaderFrom/WriterTo, which would
// allocate their own buffers.
func copyStream(dst io.Writer, src io.Reader) (n int64, rerr, werr error) {
	bp, pool := smallCopyPool.Get().(*[]byte), &smallCopyPool
	defer func() { pool.Put(bp) }()
	buf := *bp
	for {
		nr, err := src.Read(buf)
		if nr > 0 {
			nw, ew := dst.Write(buf[:nr])
			n += int64(nw)
			if ew == nil && nw != nr {
				ew = io.ErrShortWrite
			}
			if ew != nil {
				return n, nil, ew
			}
		}
		if err == io.EOF {
			return n, nil, nil
		}
		if err != nil {
			return n, err, nil
		}
		if nr == len(buf) && pool == &smallCopyPool {
			// A full read: bulk transfer, continue with the large buffer.
			pool.Put(bp)
			bp, pool = largeCopyPool.Get().(*[]byte), &largeCopyPool
			buf = *bp
		}
	}
}

// closeWrite half-closes c if it can (TCP, TLS, Stream), and reports whether it did.
func closeWrite(c any) bool {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite() == nil
	}
	return false
}
