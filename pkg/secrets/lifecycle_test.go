package secrets

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

// Forget, Run, Close and contexts, in testing/synctest bubbles (virtual time; see
// manager_test.go).
func TestForgetStopsRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice, bob := mustID(t, "ns", "alice"), mustID(t, "ns", "bob")
		ca := secretstest.New(t)
		opts := caOptions(t, ca)
		opts.TTL = time.Hour
		m := start(t, opts)
		if _, err := m.Get(t.Context(), alice); err != nil {
			t.Fatal(err)
		}
		m.Prefetch(bob)
		synctest.Wait()
		m.Forget(alice)
		m.Forget(mustID(t, "ns", "unknown")) // no-op
		time.Sleep(5 * time.Hour)
		synctest.Wait()
		if n := requestsFor(ca, alice); n != 1 {
			t.Errorf("%d requests for forgotten %s, want 1", n, alice)
		}
		if n := requestsFor(ca, bob); n < 7 {
			t.Errorf("%d requests for %s over 5 lifetimes, want it still rotating", n, bob)
		}
		if m.cached(alice) != nil {
			t.Error("forgotten certificate still cached")
		}
		if _, err := m.Get(t.Context(), alice); err != nil {
			t.Fatal(err)
		}
		if n := requestsFor(ca, alice); n != 2 {
			t.Errorf("%d requests for %s after Get, want a fresh fetch", n, alice)
		}
	})
}

func TestForgetDuringFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice := mustID(t, "ns", "alice")
		ca := secretstest.New(t)
		release := make(chan struct{})
		ca.SetHook(func(context.Context, secretstest.Request) error { <-release; return nil })
		opts := caOptions(t, ca)
		opts.TTL = time.Hour
		m := start(t, opts)
		done := make(chan error)
		go func() {
			_, err := m.Get(t.Context(), alice)
			done <- err
		}()
		synctest.Wait()
		m.Forget(alice)
		close(release)
		if err := <-done; err != nil {
			t.Fatalf("Get waiting when the identity was forgotten: %v", err)
		}
		time.Sleep(3 * time.Hour)
		synctest.Wait()
		if n := len(ca.Requests()); n != 1 {
			t.Errorf("%d requests, want 1 (forgotten while fetching: no rotation)", n)
		}
	})
}

func TestGetContextAndLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice := mustID(t, "ns", "alice")
		ca := secretstest.New(t)
		m, err := New(caOptions(t, ca))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Get(t.Context(), identity.ID{}); err == nil {
			t.Error("Get of the zero identity succeeded")
		}

		// Before Run, Get waits (here until its context ends).
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		_, err = m.Get(ctx, alice)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Get before Run = %v, want the context's error", err)
		}

		// A Get waiting when Run starts is served.
		got := make(chan error)
		go func() {
			_, err := m.Get(t.Context(), alice)
			got <- err
		}()
		synctest.Wait()
		runCtx, stopRun := context.WithCancel(t.Context())
		runErr := make(chan error)
		go func() { runErr <- m.Run(runCtx) }()
		if err := <-got; err != nil {
			t.Fatalf("Get waiting for Run: %v", err)
		}
		if err := m.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "twice") {
			t.Errorf("second Run = %v, want an error", err)
		}

		// Ending Run's context stops the Manager; Get then fails with ErrClosed.
		stopRun()
		if err := <-runErr; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		if _, err := m.Get(t.Context(), alice); !errors.Is(err, ErrClosed) {
			t.Errorf("Get after Run returned = %v, want ErrClosed", err)
		}
		for range 2 {
			if err := m.Close(); err != nil {
				t.Errorf("Close = %v", err)
			}
		}
	})
}

func TestCloseUnblocksWaiters(t *testing.T) {
	tests := []struct {
		name    string
		withRun bool
	}{
		{"while Sign is in flight", true},
		{"before Run", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				alice, bob := mustID(t, "ns", "alice"), mustID(t, "ns", "bob")
				ca := secretstest.New(t)
				ca.SetHook(func(ctx context.Context, _ secretstest.Request) error {
					<-ctx.Done()
					return ctx.Err()
				})
				opts := caOptions(t, ca)
				opts.MaxFetches = 1
				m, err := New(opts)
				if err != nil {
					t.Fatal(err)
				}
				runErr := make(chan error, 1)
				if tt.withRun {
					go func() { runErr <- m.Run(t.Context()) }()
				}
				errs := make(chan error, 2)
				for _, id := range []identity.ID{alice, bob} { // bob stays queued behind alice
					go func() {
						_, err := m.Get(t.Context(), id)
						errs <- err
					}()
				}
				m.Prefetch(mustID(t, "ns", "carol"))
				synctest.Wait()
				if err := m.Close(); err != nil {
					t.Fatal(err)
				}
				for range 2 {
					if err := <-errs; !errors.Is(err, ErrClosed) {
						t.Errorf("waiting Get = %v, want ErrClosed", err)
					}
				}
				if tt.withRun {
					if err := <-runErr; err != nil {
						t.Errorf("Run = %v", err)
					}
				} else if err := m.Run(t.Context()); !errors.Is(err, ErrClosed) {
					t.Errorf("Run after Close = %v, want ErrClosed", err)
				}
				m.Prefetch(alice) // ignored once closed
				if err := m.Close(); err != nil {
					t.Errorf("second Close = %v", err)
				}
			})
		})
	}
}
