package secrets

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

// Rotation, CA outages and bad chains, in testing/synctest bubbles (virtual time; see
// manager_test.go).
func TestRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice := mustID(t, "ns", "alice")
		ca := secretstest.New(t)
		opts := caOptions(t, ca)
		opts.TTL = time.Hour
		m := start(t, opts)

		first, err := m.Get(t.Context(), alice)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(29 * time.Minute) // before half life: no rotation
		synctest.Wait()
		if got := ca.Issued(); got != 1 {
			t.Fatalf("%d issued before half life, want 1", got)
		}
		if c, _ := m.Get(t.Context(), alice); c != first {
			t.Fatal("certificate replaced before half life")
		}
		time.Sleep(16*time.Minute + time.Second) // past three quarters: rotated in the background
		synctest.Wait()
		if got := ca.Issued(); got != 2 {
			t.Fatalf("%d issued by three quarters of the lifetime, want 2 (rotation without Get)", got)
		}
		second, err := m.Get(t.Context(), alice)
		if err != nil {
			t.Fatal(err)
		}
		if second == first {
			t.Fatal("Get still returns the first certificate")
		}
		if d := second.NotBefore.Sub(first.NotBefore); d < 30*time.Minute || d > 45*time.Minute {
			t.Errorf("rotated %s into a 1h lifetime, want between half and three quarters", d)
		}
		// It keeps rotating: ten more lifetimes, at least ten more certificates, none expired.
		for range 10 * 60 {
			time.Sleep(time.Minute)
			if c := m.cached(alice); !c.ValidAt(time.Now()) {
				t.Fatalf("cached certificate not valid at %s", time.Now())
			}
		}
		if got := ca.Issued(); got < 12 {
			t.Errorf("%d issued over 11 lifetimes, want at least 12", got)
		}
	})
}

func TestRotationBackdated(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice := mustID(t, "ns", "alice")
		ca := secretstest.New(t)
		ca.SetBackdate(time.Minute)
		opts := caOptions(t, ca)
		opts.TTL = 4 * time.Second
		m := start(t, opts)
		first, err := m.Get(t.Context(), alice)
		if err != nil {
			t.Fatal(err)
		}
		if got := first.NotAfter.Sub(first.NotBefore); got != time.Minute+4*time.Second {
			t.Fatalf("lifetime %s, want 1m4s", got)
		}
		time.Sleep(1900 * time.Millisecond)
		synctest.Wait()
		if got := ca.Issued(); got != 1 {
			t.Fatalf("%d issued before half the usable lifetime, want 1", got)
		}
		time.Sleep(1200 * time.Millisecond) // 3.1s: past three quarters of 4s
		synctest.Wait()
		if got := ca.Issued(); got != 2 {
			t.Fatalf("%d issued by three quarters of the usable lifetime, want 2", got)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := ca.Issued(); got < 2+60/3 || got > 2+60/2+1 {
			t.Errorf("%d issued in a further minute of 4s certificates, want one every 2 to 3 s", got)
		}
	})
}

func TestCADown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alice := mustID(t, "ns", "alice")
		ca := secretstest.New(t)
		opts := caOptions(t, ca)
		opts.TTL = time.Hour
		opts.MinBackoff, opts.MaxBackoff = time.Second, time.Minute
		m := start(t, opts)
		serve := m.GetCertificateFunc(alice)
		present := m.GetClientCertificateFunc(alice)

		old, err := m.Get(t.Context(), alice)
		if err != nil {
			t.Fatal(err)
		}
		errDown := errors.New("ca is down")
		ca.SetError(errDown)

		// Until it expires, the old certificate keeps serving while the CA is retried.
		for time.Now().Add(time.Minute).Before(old.NotAfter) {
			time.Sleep(time.Minute)
			c, err := m.Get(t.Context(), alice)
			if err != nil || c != old {
				t.Fatalf("at %s before expiry: Get = %v, %v; want the old certificate", time.Now(), c, err)
			}
			if tc, err := serve(&tls.ClientHelloInfo{}); err != nil || tc != old.TLS {
				t.Fatalf("GetCertificate before expiry = %v, %v; want the old certificate", tc, err)
			}
		}
		attempts := len(ca.Requests()) - 1
		if attempts < 10 || attempts > 100 {
			t.Errorf("%d attempts during half an hour of outage with backoff between 1s and 1m, want 10 to 100", attempts)
		}

		// Once it has expired, nothing is handed out.
		time.Sleep(time.Until(old.NotAfter) + time.Second)
		for i := range 3 {
			c, err := m.Get(t.Context(), alice)
			if !errors.Is(err, errDown) || c != nil {
				t.Fatalf("Get %d after expiry = %v, %v; want an error wrapping %v", i, c, err, errDown)
			}
			if !strings.Contains(err.Error(), "fetching certificate for "+alice.String()) {
				t.Errorf("error %q lacks context", err)
			}
			if tc, err := serve(&tls.ClientHelloInfo{}); err == nil || tc != nil {
				t.Fatalf("GetCertificate after expiry = %v, %v; want an error", tc, err)
			}
			if tc, err := present(&tls.CertificateRequestInfo{}); err == nil || tc != nil {
				t.Fatalf("GetClientCertificate after expiry = %v, %v; want an error", tc, err)
			}
			time.Sleep(2 * time.Second)
		}

		// The CA comes back: the next retry succeeds with no caller action.
		ca.SetError(nil)
		issued := ca.Issued()
		time.Sleep(opts.MaxBackoff + time.Second)
		synctest.Wait()
		if got := ca.Issued(); got != issued+1 {
			t.Fatalf("%d issued after recovery, want %d", got, issued+1)
		}
		fresh := m.cached(alice)
		if !fresh.ValidAt(time.Now()) || fresh == old {
			t.Fatalf("no fresh certificate cached after recovery")
		}
		if c, err := m.Get(t.Context(), alice); err != nil || c != fresh {
			t.Errorf("Get after recovery = %v, %v; want the fresh certificate", c, err)
		}
	})
}

func TestBadChainRejectedAndRetried(t *testing.T) {
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		tamper func(*x509.Certificate, *crypto.PublicKey)
		roots  bool // verify against another CA's roots
	}{
		{name: "wrong SAN", tamper: func(c *x509.Certificate, _ *crypto.PublicKey) {
			c.URIs = []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/ns/sa/mallory"}}
		}},
		{name: "unknown root", roots: true},
		{name: "key mismatch", tamper: func(_ *x509.Certificate, pub *crypto.PublicKey) { *pub = &otherKey.PublicKey }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				alice := mustID(t, "ns", "alice")
				ca, other := secretstest.New(t), secretstest.New(t)
				var roots atomic.Pointer[[]*x509.Certificate]
				good, bad := ca.Roots(), other.Roots()
				roots.Store(&good)
				if tt.roots {
					roots.Store(&bad)
				}
				ca.SetTamper(tt.tamper)
				opts := caOptions(t, ca)
				opts.Roots = func() []*x509.Certificate { return *roots.Load() }
				opts.MinBackoff, opts.MaxBackoff = time.Second, 4*time.Second
				m := start(t, opts)

				c, err := m.Get(t.Context(), alice)
				if !errors.Is(err, errInvalidChain) || c != nil {
					t.Fatalf("Get = %v, %v; want an invalid chain error", c, err)
				}
				if m.cached(alice) != nil {
					t.Fatal("bad certificate cached")
				}
				time.Sleep(10 * time.Second)
				synctest.Wait()
				if n := len(ca.Requests()); n < 3 {
					t.Fatalf("%d attempts in 10s with backoff up to 4s, want retries", n)
				}
				if m.cached(alice) != nil {
					t.Fatal("bad certificate cached on retry")
				}

				ca.SetTamper(nil)
				roots.Store(&good)
				time.Sleep(opts.MaxBackoff + time.Second)
				synctest.Wait()
				if c := m.cached(alice); !c.ValidAt(time.Now()) {
					t.Fatal("no valid certificate after the CA was fixed")
				}
			})
		})
	}
}
