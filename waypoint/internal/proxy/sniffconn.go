package proxy

import (
	"net"
	"os"
	"sync"
	"time"
)

// sniffConn gives a stream read deadlines that can pass without ending it, for sniffing:
// the stream's own read deadline ends its reading for good once it passes, and a
// server-first protocol lets the sniff timeout pass. A Read with a deadline set reads in
// the background, and a read that outlives its deadline is kept for the next Read; without
// a deadline, and with nothing kept, Read reads the stream directly.
type sniffConn struct {
	net.Conn
	wg       *sync.WaitGroup // owns the background read
	deadline time.Time
	pending  chan sniffRead // a background read in flight, or nil
	left     []byte
	err      error
}

type sniffRead struct {
	b   []byte
	err error
}

func (c *sniffConn) SetReadDeadline(t time.Time) error {
	c.deadline = t
	return nil
}

func (c *sniffConn) SetDeadline(t time.Time) error {
	c.deadline = t
	return c.Conn.SetWriteDeadline(t)
}

func (c *sniffConn) Read(p []byte) (int, error) {
	if len(c.left) > 0 {
		n := copy(p, c.left)
		c.left = c.left[n:]
		return n, nil
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.pending == nil && c.deadline.IsZero() {
		return c.Conn.Read(p)
	}
	var timeout <-chan time.Time
	if !c.deadline.IsZero() {
		d := time.Until(c.deadline)
		if d <= 0 {
			return 0, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	if c.pending == nil {
		c.pending = make(chan sniffRead, 1)
		buf := make([]byte, max(len(p), 1))
		c.wg.Add(1)
		go func() { // ends when the stream delivers data or fails (closing it ends it)
			defer c.wg.Done()
			n, err := c.Conn.Read(buf)
			c.pending <- sniffRead{buf[:n], err}
		}()
	}
	select {
	case r := <-c.pending:
		c.pending = nil
		c.left, c.err = r.b, r.err
		if len(c.left) == 0 {
			return 0, c.err
		}
		n := copy(p, c.left)
		c.left = c.left[n:]
		return n, nil
	case <-timeout:
		return 0, os.ErrDeadlineExceeded
	}
}
