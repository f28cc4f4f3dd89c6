package hbone

import (
	"sync"
	"time"
)

// deadline is a settable deadline whose expiry closes a channel, the way net.Pipe
// implements net.Conn deadlines.
type deadline struct {
	mu     sync.Mutex
	set    bool // a non-zero deadline is in force
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline passes
}

func newDeadline() *deadline { return &deadline{cancel: make(chan struct{})} }

// setDeadline sets the deadline; the zero time clears it. Like net.Conn, a deadline in
// the past expires at once, and a later call can extend an expired deadline.
func (d *deadline) setDeadline(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired (or is firing): wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	d.set = !t.IsZero()
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait returns a channel closed when the deadline passes, and whether one is set.
func (d *deadline) wait() (<-chan struct{}, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel, d.set
}

// stop releases the timer.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// deadlines gives either end of a stream (Stream, a Local upstream's conn) net.Conn's
// deadline methods. The read deadline interrupts a blocked Read; the write deadline
// interrupts a Write waiting for flow-control window (not one blocked on the connection
// itself, which the keepalive bounds).
type deadlines struct{ rd, wr *deadline }

// deadlines returns st's deadlines.
func (st *stream) deadlines() deadlines { return deadlines{rd: st.rdDead, wr: st.wrDead} }

// SetDeadline sets both deadlines.
func (d deadlines) SetDeadline(t time.Time) error {
	d.rd.setDeadline(t)
	d.wr.setDeadline(t)
	return nil
}

// SetReadDeadline sets the read deadline.
func (d deadlines) SetReadDeadline(t time.Time) error {
	d.rd.setDeadline(t)
	return nil
}

// SetWriteDeadline sets the write deadline.
func (d deadlines) SetWriteDeadline(t time.Time) error {
	d.wr.setDeadline(t)
	return nil
}
