package hbone

import (
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The write side: frames are encoded into a pooled buffer and written under the write
// mutex by the goroutine that sends them, one flush per call, except that small DATA frames
// of senders running at the same time share one flush (flushCombinedLocked). Control frames
// decided by goroutines that must not block on that mutex are queued and written by
// whoever holds it next.

// writeBuf gathers frames between flushes in a pooled buffer, released at each flush.
type writeBuf struct{ b *[]byte }

var writeBufPool = sync.Pool{New: func() any { b := make([]byte, 0, smallWrite+1<<10); return &b }}

func (w *writeBuf) Write(p []byte) (int, error) {
	if w.b == nil {
		w.b = writeBufPool.Get().(*[]byte)
	}
	*w.b = append(*w.b, p...)
	return len(p), nil
}

func (w *writeBuf) bytes() []byte {
	if w.b == nil {
		return nil
	}
	return *w.b
}

func (w *writeBuf) reset() {
	if w.b == nil {
		return
	}
	if cap(*w.b) <= 4*smallWrite {
		*w.b = (*w.b)[:0]
		writeBufPool.Put(w.b)
	}
	w.b = nil
}

type ctlWriter struct{ c *conn }

func (w ctlWriter) Write(p []byte) (int, error) {
	w.c.ctl = append(w.c.ctl, p...)
	return len(p), nil
}

// flushLocked writes the buffered frames, then tail (a large DATA payload, written
// without a copy), in one write to the TLS connection. A write error closes the
// connection.
func (c *conn) flushLocked(tail []byte) error {
	if c.werr != nil {
		c.wb.reset()
		return c.werr
	}
	buf := c.wb.bytes()
	var err error
	switch {
	case len(tail) > 0:
		if bt, ok := c.nc.(*batchedTLS); ok {
			err = bt.writeBatch(buf, tail)
		} else if _, err = c.nc.Write(buf); err == nil {
			_, err = c.nc.Write(tail)
		}
	case len(buf) > 0:
		_, err = c.nc.Write(buf)
	}
	c.wb.reset()
	if err != nil {
		c.werr = err
		c.close(fmt.Errorf("writing: %w", err))
	}
	return err
}

// unlockWrite releases the write mutex, first writing the control frames queued while it
// was held (their queuers could not take it).
func (c *conn) unlockWrite() {
	for {
		c.wmu.Unlock()
		if !c.ctlPending.Load() || !c.wmu.TryLock() {
			return
		}
		c.drainCtlLocked()
		c.flushLocked(nil)
	}
}

// queueCtl encodes a control frame for the write side. Then a goroutine other than the
// reader calls tryFlushCtl; the reader goroutine never writes to the connection (two
// readers blocked on full socket buffers would deadlock), it calls kickCtl before it
// blocks.
func (c *conn) queueCtl(write func(fr *http2.Framer) error) {
	c.ctlMu.Lock()
	_ = write(c.ctlFr)
	c.ctlN++
	over := c.ctlN > maxQueuedControl
	c.ctlPending.Store(true)
	c.ctlMu.Unlock()
	if over {
		c.close(errTooManyControl)
	}
}

// tryFlushCtl writes the queued control frames unless another goroutine holds the write
// mutex (which then writes them when it lets go).
func (c *conn) tryFlushCtl() {
	if !c.ctlPending.Load() || !c.wmu.TryLock() {
		return
	}
	c.drainCtlLocked()
	c.flushLocked(nil)
	c.unlockWrite()
}

// kickCtl is the reader goroutine's tryFlushCtl: if nobody holds the write mutex, a
// short-lived goroutine takes it over and writes the queued control frames, so the reader
// never blocks on a write. (Rare: on streams in use, WINDOW_UPDATEs are written by the
// Reads that free the window.)
func (c *conn) kickCtl() {
	if !c.ctlPending.Load() || !c.wmu.TryLock() {
		return
	}
	go func() {
		c.drainCtlLocked()
		c.flushLocked(nil)
		c.unlockWrite()
	}()
}

func (c *conn) drainCtlLocked() {
	if !c.ctlPending.Load() {
		return
	}
	c.ctlMu.Lock()
	c.wb.Write(c.ctl)
	if cap(c.ctl) > 64<<10 {
		c.ctl = nil
	} else {
		c.ctl = c.ctl[:0]
	}
	c.ctlN = 0
	c.ctlPending.Store(false)
	c.ctlMu.Unlock()
}

// writeData writes p, for which the caller took credit, as one DATA frame of st.
func (c *conn) writeData(st *stream, p []byte) error {
	c.wmu.Lock()
	defer c.unlockWrite()
	c.mu.Lock()
	err := st.writeErrLocked()
	if err == nil && c.closed {
		err = connError{c.err}
	}
	if err != nil {
		c.sendWindow += int64(len(p)) // unused
		c.mu.Unlock()
		return err
	}
	c.mu.Unlock()
	c.drainCtlLocked()
	n := len(p)
	id := st.id
	hdr := [9]byte{byte(n >> 16), byte(n >> 8), byte(n), byte(http2.FrameData), 0, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
	c.wb.Write(hdr[:])
	if n <= smallWrite {
		c.wb.Write(p)
		return c.flushCombinedLocked()
	}
	return c.flushLocked(p)
}

// flushCombinedLocked writes the buffered frames together with those of the other senders
// ready to run now: unless another sender already holds the flush for them (then it
// returns, its frames leave with that one's), it lets go of the write mutex and yields
// once, so that the goroutines the poller woke with this one (streams whose sockets turned
// readable at the same time) buffer their frames, then writes them all in one syscall.
// Under concurrent load that is one write, one TCP segment and one wakeup of the peer for
// several requests instead of one each; alone it costs a yield that returns at once. The
// flush waits for the goroutines runnable before it, each until it blocks (in a proxy,
// a read and a write). Measured on make bench-l7's mesh path (two ztunnels and the
// waypoint), max rps over 8 keep-alive connections 5.1-6.8k before, 7.4-8.3k after
// (caddy 6.0-6.2k in the same runs); over 64, 7.8-9.5k before, 11.5-12.3k after.
// Frames buffered by a sender that returned are written by the flusher, or fail the
// connection with its write error. Once maxCombined bytes wait, the sender writes them
// itself (a bulk stream refilling the buffer while the flusher waits to run).
func (c *conn) flushCombinedLocked() error {
	if c.combining {
		if len(c.wb.bytes()) < maxCombined {
			return c.werr
		}
		return c.flushLocked(nil)
	}
	c.combining = true
	c.wmu.Unlock()
	runtime.Gosched()
	c.wmu.Lock()
	c.combining = false
	return c.flushLocked(nil)
}

// writeHeadersLocked encodes a header block and buffers it as HEADERS and CONTINUATION
// frames.
func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, endStream bool, table uint32) {
	if table != c.tables {
		c.tables = table
		c.henc.SetMaxDynamicTableSizeLimit(table)
	}
	c.hbuf.Reset()
	for _, f := range fields {
		c.henc.WriteField(f)
	}
	c.drainCtlLocked()
	block := c.hbuf.Bytes()
	c.mu.Lock()
	max := int(c.peerMaxFrame)
	c.mu.Unlock()
	first := true
	for first || len(block) > 0 {
		frag := block[:min(len(block), max)]
		block = block[len(frag):]
		if first {
			c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			c.wfr.WriteContinuation(id, len(block) == 0, frag)
		}
	}
}

// endStream queues END_STREAM (an empty DATA frame) for st, after what it wrote.
func (c *conn) endStream(st *stream) error {
	c.mu.Lock()
	if st.localEnded || st.resetSent || st.finished {
		c.mu.Unlock()
		return nil
	}
	if c.closed {
		err := connError{c.err}
		c.mu.Unlock()
		return err
	}
	st.localEnded = true
	drained := false
	if st.remoteEnded {
		drained = c.finishLocked(st)
	}
	c.mu.Unlock()
	id := st.id
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteData(id, true, nil) })
	c.tryFlushCtl()
	if drained {
		c.closeDrained()
	}
	return nil
}

// resetStream queues RST_STREAM for st unless it is over; the caller flushes (see
// queueCtl).
func (c *conn) resetStream(st *stream, code http2.ErrCode) {
	c.mu.Lock()
	if st.finished || c.closed {
		c.mu.Unlock()
		return
	}
	st.resetSent = true
	drained := c.finishLocked(st)
	c.mu.Unlock()
	id := st.id
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
	if drained {
		c.closeDrained()
	}
}
