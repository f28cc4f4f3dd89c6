package secrets

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

// TestNoGoroutineLeak runs a Manager in real time with fetches finished, queued and in
// flight, stops it, and checks that the goroutine count returns to where it was. (The
// synctest tests check the same for every scenario; this one does not rely on bubbles.)
func TestNoGoroutineLeak(t *testing.T) {
	tests := []struct {
		name string
		stop func(cancel context.CancelFunc, m *Manager)
	}{
		{"context cancelled", func(cancel context.CancelFunc, _ *Manager) { cancel() }},
		{"Close", func(_ context.CancelFunc, m *Manager) { _ = m.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			ca := secretstest.New(t)
			block := mustID(t, "slow", "blocked")
			ca.SetHook(func(ctx context.Context, r secretstest.Request) error {
				if r.ID == block {
					<-ctx.Done()
					return ctx.Err()
				}
				return nil
			})
			opts := caOptions(t, ca)
			opts.MaxFetches = 2
			m, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			runErr := make(chan error, 1)
			go func() { runErr <- m.Run(ctx) }()

			if _, err := m.Get(ctx, mustID(t, "ns", "alice")); err != nil {
				t.Fatal(err)
			}
			var ids []identity.ID
			for _, sa := range []string{"a", "b", "c", "d", "e"} {
				ids = append(ids, mustID(t, "bulk", sa))
			}
			m.Prefetch(append([]identity.ID{block}, ids...)...)
			getErr := make(chan error, 1)
			go func() {
				_, err := m.Get(context.Background(), block)
				getErr <- err
			}()
			for len(ca.Requests()) < 2 {
				time.Sleep(time.Millisecond)
			}

			tt.stop(cancel, m)
			if err := <-runErr; err != nil {
				t.Errorf("Run = %v", err)
			}
			if err := <-getErr; err == nil {
				t.Error("Get of the blocked identity succeeded after stop")
			}
			// Goroutines that have returned may take a moment to be counted out; this polls
			// for an outcome, it does not measure speed.
			deadline := time.Now().Add(10 * time.Second)
			for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if after := runtime.NumGoroutine(); after > before {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines before, %d after Run returned:\n%s", before, after, buf[:runtime.Stack(buf, true)])
			}
		})
	}
}
