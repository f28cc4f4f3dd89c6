package secrets

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// ErrClosed is returned (wrapped) by Get and Run once the Manager is closed or its Run has
// returned.
var ErrClosed = errors.New("certificate manager closed")

// Manager fetches, caches and rotates the certificates of workload identities. Its methods
// are safe for concurrent use. Fetches happen only while Run runs.
type Manager struct {
	opts Options

	// wake tells Run that work was queued or a schedule changed.
	wake chan struct{}
	// closed is closed once the Manager stops serving.
	closed chan struct{}

	mu         sync.Mutex
	entries    map[identity.ID]*entry
	high, low  []*entry // queued fetches; entries whose state no longer matches are skipped
	busy       int      // fetches in flight
	busyLow    int      // of which background
	running    bool     // Run has started
	stopped    bool     // closed or Run returned
	cancelRun  context.CancelFunc
	runDone    chan struct{}
	closedOnce sync.Once
}

// state is where an entry's next fetch is.
type state int

const (
	idle       state = iota // no fetch queued or in flight
	queuedLow               // in m.low
	queuedHigh              // in m.high
	fetching                // Sign in flight
)

// entry is the cached certificate and fetch schedule of one identity.
type entry struct {
	id        identity.ID
	cert      *Certificate // last issued certificate; may have expired
	state     state
	attempt   *attempt  // the queued or running fetch; nil when idle
	next      time.Time // when to fetch in the background (rotation or retry); zero for never
	failures  int       // consecutive failed attempts
	lastErr   error     // error of the last attempt if it failed
	lastFail  time.Time
	forgotten bool
}

// attempt is one fetch that Get callers may wait for.
type attempt struct {
	done chan struct{} // closed when cert or err is set
	cert *Certificate
	err  error
}

// New validates opts and returns a Manager. Call Run to start fetching.
func New(opts Options) (*Manager, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Manager{
		opts:    o,
		wake:    make(chan struct{}, 1),
		closed:  make(chan struct{}),
		entries: map[identity.ID]*entry{},
	}, nil
}

// Get returns a certificate of id that is valid now. It returns the cached one if it is
// valid; otherwise it fetches one at high priority and waits for it, sharing the fetch
// with concurrent callers. It never returns an expired certificate: if the cached one
// has expired and the CA fails, Get returns the CA's error (an error from an attempt less
// than MinBackoff old is returned without a new attempt). Get registers id for rotation
// until Forget. Fetches happen only while Run runs, so Get blocks until then or until ctx
// ends.
func (m *Manager) Get(ctx context.Context, id identity.ID) (*Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("getting certificate: zero identity")
	}
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return nil, fmt.Errorf("fetching certificate for %s: %w", id, ErrClosed)
	}
	e := m.entry(id)
	now := time.Now()
	if e.cert.ValidAt(now) {
		c := e.cert
		m.mu.Unlock()
		return c, nil
	}
	if e.state == idle && e.lastErr != nil && now.Sub(e.lastFail) < m.opts.MinBackoff {
		err := e.lastErr
		m.mu.Unlock()
		return nil, err
	}
	a := m.enqueue(e, queuedHigh)
	m.mu.Unlock()
	m.poke()

	select {
	case <-a.done:
		return a.cert, a.err
	case <-ctx.Done():
		return nil, fmt.Errorf("fetching certificate for %s: %w", id, ctx.Err())
	case <-m.closed:
		return nil, fmt.Errorf("fetching certificate for %s: %w", id, ErrClosed)
	}
}

// Prefetch fetches certificates for ids in the background, at lower priority than Get, and
// registers them for rotation until Forget. Identities the Manager already knows (cached,
// being fetched or waiting to retry) are left alone; zero IDs are ignored.
func (m *Manager) Prefetch(ids ...identity.ID) {
	m.mu.Lock()
	queued := false
	for _, id := range ids {
		if id.IsZero() || m.stopped {
			continue
		}
		if _, ok := m.entries[id]; ok {
			continue
		}
		m.enqueue(m.entry(id), queuedLow)
		queued = true
	}
	m.mu.Unlock()
	if queued {
		m.poke()
	}
}

// Forget drops the certificate of id and stops rotating it. A fetch already in flight
// completes for the callers waiting for it but is not cached.
func (m *Manager) Forget(id identity.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[id]; ok {
		e.forgotten = true
		e.next = time.Time{}
		delete(m.entries, id)
		m.opts.Log.Debug("forgot certificate", "identity", id)
	}
}

// Close stops the Manager: Run returns, pending and later Gets fail with ErrClosed. It
// waits for Run's goroutines to end. It is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	cancel, done := m.cancelRun, m.runDone
	if cancel == nil { // Run never started; it will refuse to once stopped
		m.stopLocked()
	}
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	return nil
}

// entry returns id's entry, creating it. m.mu must be held.
func (m *Manager) entry(id identity.ID) *entry {
	e, ok := m.entries[id]
	if !ok {
		e = &entry{id: id}
		m.entries[id] = e
	}
	return e
}

// enqueue queues a fetch of e at priority s (queuedLow or queuedHigh) unless one is queued
// at that priority or higher or in flight, and returns the attempt to wait for. m.mu must
// be held.
func (m *Manager) enqueue(e *entry, s state) *attempt {
	if e.state == idle {
		e.attempt = &attempt{done: make(chan struct{})}
	}
	if e.state == idle || e.state == queuedLow && s == queuedHigh {
		e.state = s
		if s == queuedHigh {
			m.high = append(m.high, e)
		} else {
			m.low = append(m.low, e)
		}
	}
	return e.attempt
}

// poke wakes Run's loop.
func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// stopLocked marks the Manager stopped and fails every queued attempt. Fetches in flight
// must have ended. m.mu must be held.
func (m *Manager) stopLocked() {
	m.stopped = true
	for _, q := range [][]*entry{m.high, m.low} {
		for _, e := range q {
			if e.state == queuedHigh || e.state == queuedLow {
				m.finish(e, nil, fmt.Errorf("fetching certificate for %s: %w", e.id, ErrClosed))
			}
		}
	}
	m.high, m.low = nil, nil
	m.closedOnce.Do(func() { close(m.closed) })
}

// finish ends e's attempt with cert or err. m.mu must be held.
func (m *Manager) finish(e *entry, cert *Certificate, err error) {
	a := e.attempt
	e.attempt, e.state = nil, idle
	if a != nil {
		a.cert, a.err = cert, err
		close(a.done)
	}
}
