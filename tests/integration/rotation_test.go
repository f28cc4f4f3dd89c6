package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/caclient"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
)

// observation is one TLS handshake against a server whose certificate comes from the manager.
type observation struct {
	at       time.Time
	serial   string
	notAfter time.Time
	err      error
}

// 5. With a 10 s TTL the manager has a new certificate before the old one expires and a TLS
// server using it never serves an expired certificate; with the CA stopped the old
// certificate keeps serving until it expires, and fetching resumes once the CA is back.
func TestCertificateRotationAndCAOutage(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	app := c.Namespace(t, nil)
	istiodtest.CreateSA(t, c, app, "web")
	id, err := identity.New("cluster.local", app, "web")
	if err != nil {
		t.Fatal(err)
	}
	tokenPath := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenPath, []byte(istiodtest.SAToken(t, c, app, "web", "istio-ca", nil)), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(m.Root)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	client, err := caclient.New(caclient.Options{
		Address: m.GRPCAddr, Roots: roots, ServerName: "istiod." + m.NS + ".svc", TokenPath: tokenPath, Log: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	mgr, err := secrets.New(secrets.Options{
		Signer: client, Roots: func() []*x509.Certificate { return []*x509.Certificate{m.Root} },
		TTL: 10 * time.Second, MinBackoff: 200 * time.Millisecond, MaxBackoff: time.Second, Log: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Run(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()

	srv := tlsServer(t, mgr.GetCertificateFunc(id))
	handshake := func() observation {
		var o observation
		conn, err := tls.Dial("tcp", srv, &tls.Config{
			InsecureSkipVerify: true, // verified below: the point is to see exactly what is served
			VerifyConnection: func(cs tls.ConnectionState) error {
				leaf := cs.PeerCertificates[0]
				o.serial, o.notAfter = leaf.SerialNumber.String(), leaf.NotAfter
				pool := x509.NewCertPool()
				pool.AddCert(m.Root)
				_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
				return err // an expired leaf fails here
			},
		})
		o.at = time.Now()
		if err == nil {
			err = conn.Close()
		}
		o.err = err
		return o
	}
	// watch handshakes every 100 ms until stop says enough, failing on any expired certificate.
	watch := func(stop func(observation) bool, limit time.Duration) []observation {
		t.Helper()
		var seen []observation
		deadline := time.Now().Add(limit)
		for time.Now().Before(deadline) {
			o := handshake()
			if o.serial != "" && !o.at.Before(o.notAfter) {
				t.Fatalf("served a certificate that expired at %s (handshake at %s)", o.notAfter.Format(time.StampMilli), o.at.Format(time.StampMilli))
			}
			seen = append(seen, o)
			if stop(o) {
				return seen
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("condition not reached within %s; last observation: %+v", limit, seen[len(seen)-1])
		return nil
	}

	// Phase 1: CA up. Two rotations, each new certificate seen before the previous expired.
	serials := map[string]time.Time{} // serial -> notAfter
	var order []string
	watch(func(o observation) bool {
		if o.err != nil {
			t.Fatalf("handshake with the CA up: %v", o.err)
		}
		if _, ok := serials[o.serial]; !ok {
			if len(order) > 0 {
				prev := serials[order[len(order)-1]]
				if !o.at.Before(prev) {
					t.Fatalf("new certificate first served at %s, after the previous one expired at %s", o.at.Format(time.StampMilli), prev.Format(time.StampMilli))
				}
			}
			serials[o.serial] = o.notAfter
			order = append(order, o.serial)
		}
		return len(order) >= 3
	}, 60*time.Second)
	t.Logf("phase 1: %d certificates served across rotations, none expired", len(order))

	// Phase 2: CA down. The last certificate keeps serving until it expires, then handshakes fail.
	m.Stop()
	last := handshake()
	if last.err != nil {
		t.Fatalf("handshake right after stopping the CA: %v", last.err)
	}
	watch(func(o observation) bool {
		if o.err == nil && o.serial != last.serial {
			t.Fatalf("a new certificate %s appeared with the CA down", o.serial)
		}
		if o.err != nil && o.at.Before(last.notAfter) {
			t.Fatalf("handshake failed at %s, before the cached certificate expired at %s: %v", o.at.Format(time.StampMilli), last.notAfter.Format(time.StampMilli), o.err)
		}
		return o.err != nil && o.at.After(last.notAfter.Add(time.Second))
	}, 30*time.Second)
	t.Logf("phase 2: the cached certificate served until %s, then handshakes failed", last.notAfter.Format(time.StampMilli))

	// Phase 3: CA back (same namespace, so the same root): fetching resumes by itself.
	m.Start()
	watch(func(o observation) bool { return o.err == nil && o.serial != last.serial }, 30*time.Second)
	t.Log("phase 3: a new certificate is served after the CA came back")
}

// tlsServer serves TLS handshakes on loopback with getCert, closing each connection at
// once, until the test ends. It returns its address.
func tlsServer(t testing.TB, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: getCert, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			go func() {
				_ = conn.(*tls.Conn).Handshake()
				_ = conn.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
	})
	return l.Addr().String()
}
