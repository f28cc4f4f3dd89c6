package hbone

import (
	"os"

	"golang.org/x/net/http2"
)

// Flow control: the send windows writers wait on (grown by the peer's WINDOW_UPDATEs),
// and the receive credit returned to the peer as Reads consume bytes.

func (c *conn) wakeWritersLocked() {
	if c.winWake != nil {
		close(c.winWake)
		c.winWake = nil
	}
}

// awaitSend waits for flow-control credit to send up to n bytes on st, and takes it.
func (c *conn) awaitSend(st *stream, n int) (int, error) {
	for {
		expired, _ := st.wrDead.wait()
		if isClosed(expired) {
			return 0, os.ErrDeadlineExceeded
		}
		c.mu.Lock()
		if err := st.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		if c.closed {
			err := connError{c.err}
			c.mu.Unlock()
			return 0, err
		}
		if w := min(c.sendWindow, st.sendWindow); w > 0 {
			k := min(int64(n), w, int64(c.peerMaxFrame), maxWriteChunk)
			c.sendWindow -= k
			st.sendWindow -= k
			c.mu.Unlock()
			return int(k), nil
		}
		if c.winWake == nil {
			c.winWake = make(chan struct{})
		}
		wake := c.winWake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-st.done:
		case <-c.done:
		}
	}
}

func (c *conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > maxWindow {
			return h2Error{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		c.wakeWritersLocked()
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if c.idleLocked(f.StreamID) {
			return h2Error{http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream"}
		}
		return nil
	}
	st.sendWindow += int64(f.Increment)
	if st.sendWindow > maxWindow {
		st.resetSent = true
		drained := c.finishLocked(st)
		id := st.id
		c.mu.Unlock()
		c.queueCtl(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeFlowControl) })
		st.fail(resetError{code: http2.ErrCodeFlowControl})
		if drained {
			c.closeDrained()
		}
		c.mu.Lock()
		return nil
	}
	c.wakeWritersLocked()
	return nil
}

// consumed returns receive credit for n bytes a Read took from st, in WINDOW_UPDATEs
// once half a window was consumed.
func (c *conn) consumed(st *stream, n int) {
	if c.queueConsumed(st, n) {
		c.tryFlushCtl()
	}
}

// queueConsumed is consumed for the reader goroutine: it only queues the WINDOW_UPDATEs
// (see queueCtl), and reports whether it did.
func (c *conn) queueConsumed(st *stream, n int) bool {
	c.mu.Lock()
	var connInc, stInc int64
	c.recvUnacked += int64(n)
	if c.recvUnacked >= ConnWindow/2 {
		connInc = c.recvUnacked
		c.recvWindow += connInc
		c.recvUnacked = 0
	}
	if !st.remoteEnded && !st.finished {
		st.recvUnacked += int64(n)
		if st.recvUnacked >= StreamWindow/2 {
			stInc = st.recvUnacked
			st.recvWindow += stInc
			st.recvUnacked = 0
		}
	}
	c.mu.Unlock()
	if connInc == 0 && stInc == 0 {
		return false
	}
	id := st.id
	c.queueCtl(func(fr *http2.Framer) error {
		if connInc > 0 {
			fr.WriteWindowUpdate(0, uint32(connInc))
		}
		if stInc > 0 {
			fr.WriteWindowUpdate(id, uint32(stInc))
		}
		return nil
	})
	return true
}

// returnConnCredit returns connection credit for n received bytes nobody will read.
func (c *conn) returnConnCredit(n int64) {
	if c.queueConnCredit(n) {
		c.tryFlushCtl()
	}
}

func (c *conn) queueConnCredit(n int64) bool {
	c.mu.Lock()
	c.recvUnacked += n
	var inc int64
	if c.recvUnacked >= ConnWindow/2 && !c.closed {
		inc = c.recvUnacked
		c.recvWindow += inc
		c.recvUnacked = 0
	}
	c.mu.Unlock()
	if inc == 0 {
		return false
	}
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(inc)) })
	return true
}
