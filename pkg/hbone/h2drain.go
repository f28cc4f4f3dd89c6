package hbone

import (
	"fmt"
	"time"

	"golang.org/x/net/http2"
)

// How a connection ends without an error: streams finishing, GOAWAY sent (shutdown) or
// received, the close once drained, and the keepalive PINGs that close a silent peer's
// connection.

// finishLocked removes st from the connection and reports whether the connection is now
// drained.
func (c *conn) finishLocked(st *stream) bool {
	if st.finished {
		return false
	}
	st.finished = true
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		c.active--
	}
	return c.drainedLocked()
}

// drainedLocked reports whether the connection should close: it went away (either side)
// and has no stream left.
func (c *conn) drainedLocked() bool {
	return (c.goAwayRecv || c.goAwaySent) && c.active == 0 && c.reserved == 0 && !c.closed
}

// closeDrained closes a connection that went away and has no stream left.
func (c *conn) closeDrained() {
	if !c.server {
		c.close(nil)
		return
	}
	c.mu.Lock()
	if !c.closed && c.closeTimer == nil {
		c.closeTimer = time.AfterFunc(goAwayGrace, func() { c.close(nil) })
	}
	c.mu.Unlock()
}

// shutdown sends GOAWAY (server): no stream above the last one seen will be processed;
// the connection closes once the others ended.
func (c *conn) shutdown() {
	c.mu.Lock()
	if c.closed || c.goAwaySent {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	last := c.maxPeerID
	drained := c.drainedLocked()
	c.mu.Unlock()
	c.queueCtl(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	c.tryFlushCtl()
	if drained {
		c.closeDrained()
	}
}

func (c *conn) processGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	var refused []*stream
	if !c.server {
		for id, st := range c.streams {
			if id > f.LastStreamID {
				refused = append(refused, st)
				st.finished = true
				delete(c.streams, id)
				c.active--
			}
		}
	}
	drained := c.drainedLocked()
	c.mu.Unlock()
	for _, st := range refused {
		st.fail(fmt.Errorf("%w (GOAWAY %v)", errRefused, f.ErrCode))
	}
	if drained {
		c.closeDrained()
	}
}

func (c *conn) startKeepalive() {
	if c.kaInterval <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.kaSeen = c.frames.Load()
	c.ka = time.AfterFunc(c.kaInterval, c.keepalive)
}

// keepalive runs every kaInterval while frames arrive; after a silent interval it sends a
// PING, and closes the connection if the PING has no ack kaTimeout later.
func (c *conn) keepalive() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	seen := c.frames.Load()
	switch {
	case c.pinging:
		c.mu.Unlock()
		c.close(errKeepaliveTimeout)
		return
	case seen != c.kaSeen:
		c.kaSeen = seen
		c.ka.Reset(c.kaInterval)
		c.mu.Unlock()
		return
	}
	c.pings++
	c.pinging = true
	c.pingData = [8]byte{'h', 'b', byte(c.pings >> 40), byte(c.pings >> 32), byte(c.pings >> 24), byte(c.pings >> 16), byte(c.pings >> 8), byte(c.pings)}
	data := c.pingData
	c.ka.Reset(c.kaTimeout)
	c.mu.Unlock()
	c.queueCtl(func(fr *http2.Framer) error { return fr.WritePing(false, data) })
	c.tryFlushCtl()
}
