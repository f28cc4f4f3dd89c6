package accesslog

import (
	"io"
	"sync"
	"time"
)

// FlushInterval is how long an access log line may wait in a Buffer before it is written,
// as Envoy buffers its file access logs.
const FlushInterval = time.Second

// bufferSize is how many bytes a Buffer holds before it writes them at once.
const bufferSize = 64 << 10

// Buffer gathers access log lines and writes them to its destination in batches: when it
// holds bufferSize bytes, when a line has waited FlushInterval, and on Close. Under load
// that is one write per many requests instead of one per request. Each Write (one line
// from slog's handler) is kept whole. It is safe for concurrent use.
type Buffer struct {
	dst      io.Writer
	interval time.Duration

	mu     sync.Mutex
	buf    []byte
	timer  *time.Timer // armed while buf holds lines
	err    error       // the first write error, returned by later Writes and Close
	closed bool
}

// NewBuffer returns a Buffer writing to dst, flushing lines that waited interval (if zero,
// FlushInterval).
func NewBuffer(dst io.Writer, interval time.Duration) *Buffer {
	if interval <= 0 {
		interval = FlushInterval
	}
	return &Buffer{dst: dst, interval: interval, buf: make([]byte, 0, bufferSize)}
}

// Write buffers p, one line.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.closed {
		// After Close, write through: nothing must be lost.
		return b.dst.Write(p)
	}
	if len(b.buf)+len(p) > cap(b.buf) {
		b.flushLocked()
		if len(p) > cap(b.buf) {
			if _, err := b.dst.Write(p); err != nil {
				b.err = err
				return 0, err
			}
			return len(p), nil
		}
	}
	b.buf = append(b.buf, p...)
	if b.timer == nil {
		b.timer = time.AfterFunc(b.interval, b.Flush)
	}
	return len(p), nil
}

// Flush writes what is buffered.
func (b *Buffer) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
}

func (b *Buffer) flushLocked() {
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if len(b.buf) == 0 || b.err != nil {
		return
	}
	if _, err := b.dst.Write(b.buf); err != nil {
		b.err = err
	}
	b.buf = b.buf[:0]
}

// Close flushes and makes later Writes go straight to the destination. It returns the
// first write error.
func (b *Buffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	b.closed = true
	return b.err
}
