package secrets

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

// The tests below run in testing/synctest bubbles: time is virtual, so hours of certificate
// lifetime pass instantly and deterministically, and the bubble fails the test if any
// goroutine is left behind.

func TestGetFetchesAndCaches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice := mustID(t, "ns", "alice")
		ca := secretstest.New(t)
		opts := caOptions(t, ca)
		opts.TTL = 2 * time.Hour
		m := start(t, opts)

		c, err := m.Get(t.Context(), alice)
		if err != nil {
			t.Fatal(err)
		}
		if c.ID != alice || len(c.Chain) != 3 || c.Key == nil || c.TLS == nil {
			t.Fatalf("certificate incomplete: %+v", c)
		}
		if got := c.NotAfter.Sub(c.NotBefore); got != 2*time.Hour {
			t.Errorf("lifetime %s, want the requested 2h", got)
		}
		if r := ca.Requests(); len(r) != 1 || r[0].TTL != 2*time.Hour || r[0].ID != alice {
			t.Errorf("requests %+v, want one for %s with TTL 2h", r, alice)
		}
		again, err := m.Get(t.Context(), alice)
		if err != nil || again != c {
			t.Errorf("second Get = %p, %v; want the cached %p", again, err, c)
		}
		if n := len(ca.Requests()); n != 1 {
			t.Errorf("%d requests, want 1 (cached)", n)
		}
	})
}

func TestConcurrentGetsShareOneSign(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice := mustID(t, "ns", "alice")
		ca := secretstest.New(t)
		release := make(chan struct{})
		ca.SetHook(func(ctx context.Context, _ secretstest.Request) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		m := start(t, caOptions(t, ca))

		const n = 20
		certs := make([]*Certificate, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				c, err := m.Get(t.Context(), alice)
				if err != nil {
					t.Errorf("Get %d: %v", i, err)
				}
				certs[i] = c
			})
		}
		synctest.Wait() // every Get is waiting for the one fetch
		if got := len(ca.Requests()); got != 1 {
			t.Fatalf("%d Sign calls while %d Gets wait, want 1", got, n)
		}
		close(release)
		wg.Wait()
		for i, c := range certs {
			if c != certs[0] {
				t.Errorf("Get %d returned a different certificate", i)
			}
		}
		if got := ca.Issued(); got != 1 {
			t.Errorf("%d certificates issued, want 1", got)
		}
	})
}

func TestImpersonation(t *testing.T) {
	tests := []struct {
		name        string
		impersonate bool
	}{
		{"node proxy names the identity", true},
		{"own identity leaves it zero", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				alice, bob := mustID(t, "ns", "alice"), mustID(t, "other", "bob")
				ca := secretstest.New(t)
				opts := caOptions(t, ca)
				opts.Impersonate = tt.impersonate
				m := start(t, opts)
				m.Prefetch(bob)
				if _, err := m.Get(t.Context(), alice); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				reqs := ca.Requests()
				if len(reqs) != 2 {
					t.Fatalf("%d requests, want 2", len(reqs))
				}
				for _, r := range reqs {
					want := identity.ID{}
					if tt.impersonate {
						want = r.ID
					}
					if r.Impersonate != want {
						t.Errorf("request for %s impersonates %q, want %q", r.ID, r.Impersonate, want)
					}
				}
			})
		})
	}
}

// TestRotationBackdated checks a CA that backdates NotBefore (as Istio's does, to tolerate
// clock skew) with a short TTL: the lifetime counts from arrival, so the certificate is
// neither renewed on arrival nor in a tight loop.
func TestPrefetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ids := []identity.ID{mustID(t, "a", "one"), mustID(t, "a", "two"), mustID(t, "b", "three")}
		ca := secretstest.New(t)
		m := start(t, caOptions(t, ca))
		m.Prefetch(append(ids, identity.ID{})...)
		m.Prefetch(ids[0]) // already known: no second fetch
		synctest.Wait()
		if got := ca.Issued(); got != len(ids) {
			t.Fatalf("%d issued after Prefetch, want %d", got, len(ids))
		}
		for _, id := range ids {
			if _, err := m.Get(t.Context(), id); err != nil {
				t.Fatal(err)
			}
		}
		if got := len(ca.Requests()); got != len(ids) {
			t.Errorf("%d requests, want %d (Get served prefetched certificates)", got, len(ids))
		}
	})
}

// TestPriority checks that background fetches use at most half the fetch slots and that
// queued Gets go before queued prefetches.
func TestPriority(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b, c := mustID(t, "low", "a"), mustID(t, "low", "b"), mustID(t, "low", "c")
		d, e := mustID(t, "high", "d"), mustID(t, "high", "e")
		gates := map[identity.ID]chan struct{}{}
		for _, id := range []identity.ID{a, b, c, d, e} {
			gates[id] = make(chan struct{})
		}
		ca := secretstest.New(t)
		ca.SetHook(func(ctx context.Context, r secretstest.Request) error {
			select {
			case <-gates[r.ID]:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		opts := caOptions(t, ca)
		opts.MaxFetches = 2 // one for the background
		m := start(t, opts)
		order := func() []string {
			var s []string
			for _, r := range ca.Requests() {
				s = append(s, r.ID.Namespace()+"/"+r.ID.ServiceAccount())
			}
			return s
		}
		want := func(step string, w ...string) {
			t.Helper()
			synctest.Wait()
			if got := order(); strings.Join(got, " ") != strings.Join(w, " ") {
				t.Fatalf("%s: Sign calls %v, want %v", step, got, w)
			}
		}

		m.Prefetch(a, b, c)
		want("prefetch uses one slot", "low/a")
		var wg sync.WaitGroup
		for _, id := range []identity.ID{d, e} {
			wg.Go(func() {
				if _, err := m.Get(t.Context(), id); err != nil {
					t.Errorf("Get %s: %v", id, err)
				}
			})
			synctest.Wait()
		}
		want("Get takes the free slot; the second waits", "low/a", "high/d")
		close(gates[d])
		want("the queued Get goes before queued prefetches", "low/a", "high/d", "high/e")
		close(gates[e])
		want("background stays limited to one slot", "low/a", "high/d", "high/e")
		close(gates[a])
		want("next prefetch", "low/a", "high/d", "high/e", "low/b")
		close(gates[b])
		close(gates[c])
		wg.Wait()
		synctest.Wait()
		if got := ca.Issued(); got != 5 {
			t.Errorf("%d issued, want 5", got)
		}
	})
}

// TestCADown checks that a failing CA leaves the old certificate in service until it
// expires, that nothing expired is handed out, and that fetching resumes by itself.
