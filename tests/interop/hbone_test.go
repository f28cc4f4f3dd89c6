package interop

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

const (
	clientID = "spiffe://cluster.local/ns/client/sa/curl"
	serverID = "spiffe://cluster.local/ns/server/sa/echo"
	otherID  = "spiffe://cluster.local/ns/server/sa/other"
)

var meshTD = spiffeid.RequireTrustDomainFromString("cluster.local")

func init() {
	// Istio's hbone package logs every stream at info.
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.WarnLevel)
	}
}

// pki is the in-test mesh CA and the configs built from it.
type pki struct {
	t  *testing.T
	ca *mtlstest.CA
}

func newPKI(t *testing.T) *pki { return &pki{t: t, ca: mtlstest.NewCA(t, "mesh")} }

func (p *pki) roots() []*x509.Certificate { return p.ca.Roots() }

// serverTLS is our mesh server config presenting id.
func (p *pki) serverTLS(id string) *tls.Config {
	cert, _ := mtlstest.Static(p.ca.Issue(p.t, mtlstest.ID(p.t, id)))
	cfg, err := mtls.ServerConfig(meshTD, cert, p.roots)
	if err != nil {
		p.t.Fatal(err)
	}
	return cfg
}

// clientTLS is our mesh client config presenting clientID and expecting want.
func (p *pki) clientTLS(want ...string) *tls.Config {
	_, cert := mtlstest.Static(p.ca.Issue(p.t, mtlstest.ID(p.t, clientID)))
	ids := make([]identity.ID, len(want))
	for i, w := range want {
		ids[i] = mtlstest.ID(p.t, w)
	}
	cfg, err := mtls.ClientConfig(cert, p.roots, ids...)
	if err != nil {
		p.t.Fatal(err)
	}
	return cfg
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// echoApp is a TCP echo server that half-closes after echoing.
func echoApp(t *testing.T) netip.AddrPort {
	t.Helper()
	ln := listen(t)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// ourServer runs pkg/hbone's Server presenting serverID; its handler records the requests
// and dials their targets.
func ourServer(t *testing.T, p *pki, handler hbone.Handler) netip.AddrPort {
	t.Helper()
	s, err := hbone.NewServer(hbone.ServerOptions{TLS: p.serverTLS(serverID), Handler: handler})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func dialTarget(ctx context.Context, req *hbone.Request) (net.Conn, error) {
	c, err := new(net.Dialer).DialContext(ctx, "tcp", req.Target.String())
	if err != nil {
		return nil, hbone.Reject(http.StatusServiceUnavailable, err)
	}
	return c, nil
}

// istioServer runs Istio's HBONE server behind a TLS listener with our mesh server config
// presenting id.
func istioServer(t *testing.T, p *pki, id string) netip.AddrPort {
	t.Helper()
	ln := listen(t)
	s := istiohbone.NewServer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(tls.NewListener(ln, p.serverTLS(id)))
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func roundTrip(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo returned %q, %v; want %q", got, err, msg)
	}
}

// bulk sends size random bytes through c while reading the echo, and compares checksums:
// it exercises flow control across implementations.
func bulk(t *testing.T, c net.Conn, size int64) {
	t.Helper()
	sent := make(chan uint32, 1)
	go func() {
		h := crc32.NewIEEE()
		r := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), h)
		if _, err := io.Copy(c, r); err != nil {
			t.Error(err)
		}
		sent <- h.Sum32()
	}()
	h := crc32.NewIEEE()
	if n, err := io.CopyN(h, c, size); err != nil {
		t.Fatalf("echoed %d of %d bytes: %v", n, size, err)
	}
	if got, want := h.Sum32(), <-sent; got != want {
		t.Fatalf("crc of echo %08x, of sent data %08x", got, want)
	}
}

// TestIstioDialerToOurServer: Istio's Dialer CONNECTs through our Server to an echo app.
func TestIstioDialerToOurServer(t *testing.T) {
	p := newPKI(t)
	app := echoApp(t)
	var (
		mu   sync.Mutex
		seen []*hbone.Request
	)
	deny := false
	srv := ourServer(t, p, func(ctx context.Context, req *hbone.Request) (net.Conn, error) {
		mu.Lock()
		seen = append(seen, req)
		d := deny
		mu.Unlock()
		if d {
			return nil, hbone.Reject(http.StatusUnauthorized, errors.New("denied by test policy"))
		}
		return dialTarget(ctx, req)
	})
	dialer := func(cfg *tls.Config) istiohbone.Dialer {
		return istiohbone.NewDialer(istiohbone.Config{
			ProxyAddress: srv.String(),
			TLS:          cfg,
		})
	}

	t.Run("echo", func(t *testing.T) {
		c, err := dialer(p.clientTLS(serverID)).DialContext(context.Background(), "tcp", app.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, []byte("hello from istio"))
		bulk(t, c, 32<<20)
		mu.Lock()
		req := seen[len(seen)-1]
		mu.Unlock()
		// (Istio's Dialer does not send Config.Headers at this version, so no header check.)
		if req.Target != app || req.Peer.String() != clientID {
			t.Errorf("our server saw target %v peer %q; want %v %s", req.Target, req.Peer, app, clientID)
		}
	})
	t.Run("our server refuses with 401", func(t *testing.T) {
		mu.Lock()
		deny = true
		mu.Unlock()
		defer func() { mu.Lock(); deny = false; mu.Unlock() }()
		_, err := dialer(p.clientTLS(serverID)).DialContext(context.Background(), "tcp", app.String())
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("Istio dial = %v, want a 401 refusal", err)
		}
	})
	t.Run("identity still checked", func(t *testing.T) {
		_, err := dialer(p.clientTLS(otherID)).DialContext(context.Background(), "tcp", app.String())
		if err == nil || !strings.Contains(err.Error(), "server presented "+serverID) {
			t.Fatalf("Istio dial expecting %s = %v, want an identity refusal", otherID, err)
		}
	})
	t.Run("client from another CA refused by our server", func(t *testing.T) {
		stranger := &pki{t: t, ca: mtlstest.NewCA(t, "stranger")}
		cfg := stranger.clientTLS(serverID)
		cfg.InsecureSkipVerify, cfg.VerifyConnection = true, nil //nolint:gosec // the client trusts anything
		// Istio's error depends on when its transport reads our alert; any failure will do.
		if _, err := dialer(cfg).DialContext(context.Background(), "tcp", app.String()); err == nil {
			t.Fatal("our server accepted a client certificate of an unknown CA")
		}
	})
}

// TestOurDialerToIstioServer: our Dialer CONNECTs through Istio's Server to an echo app.
func TestOurDialerToIstioServer(t *testing.T) {
	p := newPKI(t)
	app := echoApp(t)
	d, err := hbone.NewDialer(hbone.DialerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	request := func(srv netip.AddrPort, want string) hbone.DialRequest {
		return hbone.DialRequest{
			Key: hbone.PoolKey{
				Source:        mtlstest.ID(t, clientID),
				Destinations:  hbone.IdentitySet(mtlstest.ID(t, want)),
				SourceIP:      netip.MustParseAddr("127.0.0.1"),
				DestinationIP: srv.Addr(),
			},
			Address:     srv,
			Target:      app,
			TLS:         p.clientTLS(want),
			Source:      netip.MustParseAddrPort("10.1.2.3:45678"),
			Baggage:     "k8s.namespace.name=client",
			Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		}
	}

	t.Run("echo and half-close", func(t *testing.T) {
		srv := istioServer(t, p, serverID)
		s, err := d.Dial(context.Background(), request(srv, serverID))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		roundTrip(t, s, []byte("hello from ambient lite"))
		bulk(t, s, 32<<20)
		// Istio's server turns our END_STREAM into a FIN to the app, whose echo ends;
		// then the response ends.
		s.Write([]byte("last words"))
		if err := s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(s)
		if err != nil || string(rest) != "last words" {
			t.Fatalf("after CloseWrite read %q, %v", rest, err)
		}
	})
	t.Run("several streams on one connection", func(t *testing.T) {
		srv := istioServer(t, p, serverID)
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := d.Dial(context.Background(), request(srv, serverID))
				if err != nil {
					t.Error(err)
					return
				}
				defer s.Close()
				roundTrip(t, s, []byte(strings.Repeat("x", i+1)))
			}()
		}
		wg.Wait()
	})
	t.Run("istio server with the wrong identity refused", func(t *testing.T) {
		srv := istioServer(t, p, otherID)
		_, err := d.Dial(context.Background(), request(srv, serverID))
		want := "server presented " + otherID + ", want one of [" + serverID + "]"
		if !errors.Is(err, mtls.ErrIdentity) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Dial = %v, want %q", err, want)
		}
	})
}
