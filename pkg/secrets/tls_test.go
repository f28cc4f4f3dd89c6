package secrets

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestTLSAcrossRotation uses real time and real short lifetimes: an mTLS server and client
// whose certificates come from the Manager keep handshaking across several rotations, and
// each side checks that the peer's certificate is valid at that moment.
func TestTLSAcrossRotation(t *testing.T) {
	server, client := mustID(t, "ns", "server"), mustID(t, "ns", "client")
	ca := secretstest.New(t)
	opts := caOptions(t, ca)
	opts.TTL = 3 * time.Second // x509 truncates to seconds: a leaf lives 3s, rotated after 1.5–2.25s
	opts.MinBackoff, opts.MaxBackoff = 50*time.Millisecond, 200*time.Millisecond
	m := start(t, opts)

	var mu sync.Mutex
	seen := map[string]bool{} // serials the client saw
	var problems []error
	report := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, err)
	}
	verifyPeer := func(want identity.ID, record bool) func(tls.ConnectionState) error {
		return func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no peer certificate")
			}
			now := time.Now()
			leaf := cs.PeerCertificates[0]
			if !now.Before(leaf.NotAfter) {
				return fmt.Errorf("peer served a certificate that expired at %s (now %s)", leaf.NotAfter, now)
			}
			id, _, err := x509svid.Verify(cs.PeerCertificates, x509bundle.FromX509Authorities(want.TrustDomain(), ca.Roots()), x509svid.WithTime(now))
			if err != nil {
				return err
			}
			if id != want.SPIFFE() {
				return fmt.Errorf("peer is %s, want %s", id, want)
			}
			if record {
				mu.Lock()
				seen[leaf.SerialNumber.String()] = true
				mu.Unlock()
			}
			return nil
		}
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:         tls.VersionTLS13,
		GetCertificate:     m.GetCertificateFunc(server),
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true, // SPIFFE: the peer is checked by VerifyConnection
		VerifyConnection:   verifyPeer(client, false),
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				if err := conn.(*tls.Conn).Handshake(); err != nil {
					report(fmt.Errorf("server handshake: %w", err))
					return
				}
				_, _ = io.WriteString(conn, "ok")
			})
		}
	})

	clientConfig := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: m.GetClientCertificateFunc(client),
		InsecureSkipVerify:   true, // SPIFFE: the peer is checked by VerifyConnection
		VerifyConnection:     verifyPeer(server, true),
	}
	const wantCerts = 4 // three rotations
	deadline := time.Now().Add(30 * time.Second)
	handshakes := 0
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n >= wantCerts {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("saw %d server certificates in %d handshakes, want %d (no rotation?)", n, handshakes, wantCerts)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := (&tls.Dialer{Config: clientConfig}).DialContext(ctx, "tcp", ln.Addr().String())
		cancel()
		if err != nil {
			t.Fatalf("handshake %d: %v", handshakes, err)
		}
		if b, err := io.ReadAll(conn); err != nil || string(b) != "ok" {
			t.Errorf("read %q, %v", b, err)
		}
		conn.Close()
		handshakes++
		time.Sleep(50 * time.Millisecond)
	}
	ln.Close()
	wg.Wait()
	for _, err := range problems {
		t.Error(err)
	}
	t.Logf("%d handshakes saw %d server certificates", handshakes, len(seen))
}

func TestTLSCallbacksShareCache(t *testing.T) {
	alice := mustID(t, "ns", "alice")
	ca := secretstest.New(t)
	var logs lockedBuffer
	opts := caOptions(t, ca)
	opts.Log = slog.New(slog.NewTextHandler(&logs, nil)) // Info and above
	m := start(t, opts)
	serverCert, err := m.GetCertificateFunc(alice)(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	logged := logs.Len()
	for range 100 {
		clientCert, err := m.GetClientCertificateFunc(alice)(&tls.CertificateRequestInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if serverCert != clientCert {
			t.Fatal("server and client callbacks returned different certificates for one identity")
		}
		if _, err := m.GetCertificateFunc(alice)(&tls.ClientHelloInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	if logs.Len() != logged {
		t.Errorf("handshakes logged at Info: %s", logs.String())
	}
	if serverCert.Leaf == nil || len(serverCert.Certificate) != 2 {
		t.Errorf("TLS certificate has leaf %v and %d DER certificates, want a leaf and 2 (root left out)", serverCert.Leaf, len(serverCert.Certificate))
	}
	if _, err := x509.ParseCertificate(serverCert.Certificate[0]); err != nil {
		t.Error(err)
	}
	if n := len(ca.Requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

// TestTLSCallbackContext checks that a handshake waits for a fetch only as long as its
// context allows.
func TestTLSCallbackContext(t *testing.T) {
	alice := mustID(t, "ns", "alice")
	ca := secretstest.New(t)
	ca.SetHook(func(ctx context.Context, _ secretstest.Request) error {
		<-ctx.Done()
		return ctx.Err()
	})
	m := start(t, caOptions(t, ca))
	srv, cli := net.Pipe()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cli.Close()
	defer srv.Close()
	conn := tls.Server(srv, &tls.Config{GetCertificate: m.GetCertificateFunc(alice)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- conn.HandshakeContext(ctx) }()
	wg.Go(func() { _ = tls.Client(cli, &tls.Config{InsecureSkipVerify: true}).Handshake() })
	for len(ca.Requests()) == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("handshake = %v, want it to end with its context", err)
	}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
