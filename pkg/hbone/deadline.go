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
