package secrets

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// Run fetches queued certificates, rotates cached ones and retries failures until ctx ends
// or Close is called. It owns every goroutine of the Manager and returns only after all of
// them have ended, with nil; it returns an error if called twice or after Close.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	switch {
	case m.stopped:
		m.mu.Unlock()
		return fmt.Errorf("running certificate manager: %w", ErrClosed)
	case m.running:
		m.mu.Unlock()
		return errors.New("running certificate manager: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	m.running, m.cancelRun, m.runDone = true, cancel, make(chan struct{})
	m.mu.Unlock()
	defer close(m.runDone)
	defer cancel()

	var wg sync.WaitGroup
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := m.dispatch(ctx, &wg)
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			wg.Wait()
			m.mu.Lock()
			m.stopLocked()
			m.mu.Unlock()
			return nil
		case <-m.wake:
		case <-timer.C:
		}
	}
}

// idleWait is how long Run sleeps when nothing is scheduled.
const idleWait = time.Hour

// dispatch queues the background fetches that are due, starts as many queued fetches as
// the limits allow, high priority first, and returns how long to wait for the next due one.
func (m *Manager) dispatch(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	wait := idleWait
	for _, e := range m.entries {
		if e.state != idle || e.next.IsZero() {
			continue
		}
		if d := e.next.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		e.next = time.Time{}
		m.enqueue(e, queuedLow)
	}
	for m.busy < m.opts.MaxFetches {
		e, background := m.pop(&m.high, queuedHigh), false
		if e == nil && m.busyLow < m.opts.maxBackground() {
			e, background = m.pop(&m.low, queuedLow), true
		}
		if e == nil {
			break
		}
		e.state = fetching
		m.busy++
		if background {
			m.busyLow++
		}
		wg.Go(func() { m.fetchAndStore(ctx, e, background) })
	}
	return wait
}

// pop removes and returns the first entry of q still in state s, or nil. Entries queued
// in the background that were forgotten meanwhile are dropped. m.mu must be held.
func (m *Manager) pop(q *[]*entry, s state) *entry {
	for len(*q) > 0 {
		e := (*q)[0]
		(*q)[0] = nil
		*q = (*q)[1:]
		if e.state != s {
			continue
		}
		if e.forgotten && s == queuedLow {
			m.finish(e, nil, fmt.Errorf("fetching certificate for %s: identity forgotten", e.id))
			continue
		}
		return e
	}
	return nil
}

// fetchAndStore runs one fetch for e and records its outcome: the certificate and its
// rotation time, or the error and the time of the next attempt.
func (m *Manager) fetchAndStore(ctx context.Context, e *entry, background bool) {
	cert, err := m.fetch(ctx, e.id)

	m.mu.Lock()
	defer m.poke()
	defer m.mu.Unlock()
	m.busy--
	if background {
		m.busyLow--
	}
	now := time.Now()
	switch {
	case err == nil:
		e.cert, e.failures, e.lastErr = cert, 0, nil
		// Never sooner than MinBackoff, so a CA that issues nearly expired certificates is
		// not asked again in a tight loop.
		e.next = later(rotateAt(usableFrom(cert.NotBefore, now), cert.NotAfter, rand.Float64()), now.Add(m.opts.MinBackoff))
		m.opts.Log.Info("issued certificate", "identity", e.id,
			"notAfter", cert.NotAfter.UTC().Format(time.RFC3339), "rotateAt", e.next.UTC().Format(time.RFC3339))
	case ctx.Err() != nil:
		err = fmt.Errorf("fetching certificate for %s: %w", e.id, ErrClosed)
	default:
		e.failures++
		e.lastErr, e.lastFail = err, now
		wait := backoff(e.failures, m.opts.MinBackoff, m.opts.MaxBackoff, rand.Float64())
		e.next = now.Add(wait)
		serving := e.cert.ValidAt(now)
		m.opts.Log.Warn("certificate fetch failed; will retry", "identity", e.id, "err", err,
			"failures", e.failures, "retryIn", wait.Round(time.Millisecond), "servingPrevious", serving)
	}
	if e.forgotten {
		e.next = time.Time{}
	}
	m.finish(e, cert, err)
}

// fetch generates a key and CSR for id, has the Signer sign it and verifies the chain.
func (m *Manager) fetch(ctx context.Context, id identity.ID) (*Certificate, error) {
	key, csr, err := newKeyAndCSR(id)
	if err != nil {
		return nil, fmt.Errorf("fetching certificate for %s: %w", id, err)
	}
	var impersonate identity.ID
	if m.opts.Impersonate {
		impersonate = id
	}
	chain, err := m.opts.Signer.Sign(ctx, csr, m.opts.TTL, impersonate)
	if err != nil {
		return nil, fmt.Errorf("fetching certificate for %s: %w", id, err)
	}
	if err := verifyChain(id, key, chain, m.opts.Roots(), time.Now()); err != nil {
		return nil, fmt.Errorf("fetching certificate for %s: %w", id, err)
	}
	return newCertificate(id, chain, key), nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
