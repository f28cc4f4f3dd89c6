package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

// handshake runs both sides of a TLS handshake over loopback TCP and then one round trip,
// so that a server-side refusal (TLS 1.3 verifies the client after the client finished)
// also reaches the client.
func handshake(t *testing.T, client, server *tls.Config) (cs, ss tls.ConnectionState, cerr, serr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := new(net.Dialer).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tc := tls.Server(s, server)
		defer tc.Close()
		if serr = tc.HandshakeContext(ctx); serr != nil {
			return
		}
		ss = tc.ConnectionState()
		buf := make([]byte, 1)
		if _, serr = tc.Read(buf); serr == nil {
			_, serr = tc.Write(buf)
		}
	}()
	tc := tls.Client(c, client)
	defer tc.Close()
	if cerr = tc.HandshakeContext(ctx); cerr == nil {
		cs = tc.ConnectionState()
		if _, cerr = tc.Write([]byte{1}); cerr == nil {
			_, cerr = tc.Read(make([]byte, 1))
		}
	}
	tc.Close()
	wg.Wait()
	return cs, ss, cerr, serr
}

func TestHandshake(t *testing.T) {
	mesh := mtlstest.NewCA(t, "mesh")
	other := mtlstest.NewCA(t, "other")
	clientCert := mesh.Issue(t, mtlstest.ID(t, clientID))
	serverCert := mesh.Issue(t, mtlstest.ID(t, serverID))
	tests := []struct {
		name                 string
		clientCert           *tls.Certificate
		serverCert           *tls.Certificate
		clientRoots          []*x509.Certificate
		serverRoots          []*x509.Certificate
		want                 []identity.ID
		clientErr, serverErr string // substrings; "" means success on that side
	}{
		{name: "mutual", clientCert: clientCert, serverCert: serverCert, want: []identity.ID{mtlstest.ID(t, serverID)}},
		{
			name: "wrong server identity", clientCert: clientCert, serverCert: serverCert,
			want:      []identity.ID{mtlstest.ID(t, otherID)},
			clientErr: "server presented " + serverID + ", want one of [" + otherID + "]", serverErr: "bad certificate",
		},
		{
			name: "server from unknown CA", clientCert: clientCert, serverCert: other.Issue(t, mtlstest.ID(t, serverID)),
			want:      []identity.ID{mtlstest.ID(t, serverID)},
			clientErr: "certificate signed by unknown authority", serverErr: "bad certificate",
		},
		{
			name: "client from unknown CA", clientCert: other.Issue(t, mtlstest.ID(t, clientID)), serverCert: serverCert,
			want:      []identity.ID{mtlstest.ID(t, serverID)},
			clientErr: "bad certificate", serverErr: "certificate signed by unknown authority",
		},
		{
			name: "client of another trust domain", clientCert: mesh.Issue(t, mtlstest.ID(t, "spiffe://other.td/ns/a/sa/b")), serverCert: serverCert,
			want:      []identity.ID{mtlstest.ID(t, serverID)},
			clientErr: "bad certificate", serverErr: "outside trust domain cluster.local",
		},
		{
			name: "client without certificate", clientCert: &tls.Certificate{}, serverCert: serverCert,
			want:      []identity.ID{mtlstest.ID(t, serverID)},
			clientErr: "certificate required", serverErr: "client didn't provide a certificate",
		},
		{
			name: "server trusts only the other root", clientCert: clientCert, serverCert: serverCert,
			serverRoots: other.Roots(), want: []identity.ID{mtlstest.ID(t, serverID)},
			clientErr: "bad certificate", serverErr: "certificate signed by unknown authority",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientRoots, serverRoots := mesh.Roots(), mesh.Roots()
			if tt.clientRoots != nil {
				clientRoots = tt.clientRoots
			}
			if tt.serverRoots != nil {
				serverRoots = tt.serverRoots
			}
			var sni atomic.Value
			sc, err := ServerConfig(meshTD, func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				sni.Store(h.ServerName)
				return tt.serverCert, nil
			}, func() []*x509.Certificate { return serverRoots })
			if err != nil {
				t.Fatal(err)
			}
			_, clientCb := mtlstest.Static(tt.clientCert)
			cc, err := ClientConfig(clientCb, func() []*x509.Certificate { return clientRoots }, tt.want...)
			if err != nil {
				t.Fatal(err)
			}
			cs, ss, cerr, serr := handshake(t, cc, sc)
			checkSide(t, "client", cerr, tt.clientErr)
			checkSide(t, "server", serr, tt.serverErr)
			if tt.clientErr != "" || tt.serverErr != "" {
				return
			}
			if got := sni.Load(); got != "" {
				t.Errorf("client sent SNI %q, want none", got)
			}
			if cs.NegotiatedProtocol != ALPN || ss.NegotiatedProtocol != ALPN {
				t.Errorf("ALPN client %q server %q, want %q", cs.NegotiatedProtocol, ss.NegotiatedProtocol, ALPN)
			}
			if cs.Version != tls.VersionTLS13 {
				t.Errorf("version %s, want TLS 1.3", tls.VersionName(cs.Version))
			}
			if id, err := PeerIdentity(ss); err != nil || id.String() != clientID {
				t.Errorf("server sees peer %q, %v; want %s", id, err, clientID)
			}
			if id, err := PeerIdentity(cs); err != nil || id.String() != serverID {
				t.Errorf("client sees peer %q, %v; want %s", id, err, serverID)
			}
		})
	}
}

func checkSide(t *testing.T, side string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: unexpected error: %v", side, err)
	case want != "" && err == nil:
		t.Errorf("%s: succeeded, want an error saying %q", side, want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("%s: error %q does not say %q", side, err, want)
	}
}

func TestRootsRotate(t *testing.T) {
	oldCA, newCA := mtlstest.NewCA(t, "old"), mtlstest.NewCA(t, "new")
	var roots atomic.Pointer[[]*x509.Certificate]
	roots.Store(&[]*x509.Certificate{oldCA.Roots()[0]})
	getRoots := func() []*x509.Certificate { return *roots.Load() }
	var serverCert atomic.Pointer[tls.Certificate]
	serverCert.Store(oldCA.Issue(t, mtlstest.ID(t, serverID)))
	sc, err := ServerConfig(meshTD, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert.Load(), nil }, getRoots)
	if err != nil {
		t.Fatal(err)
	}
	clientConfig := func(c *tls.Certificate) *tls.Config {
		_, cb := mtlstest.Static(c)
		cc, err := ClientConfig(cb, getRoots, mtlstest.ID(t, serverID))
		if err != nil {
			t.Fatal(err)
		}
		return cc
	}
	newClient := newCA.Issue(t, mtlstest.ID(t, clientID))
	if _, _, cerr, serr := handshake(t, clientConfig(newClient), sc); serr == nil || cerr == nil {
		t.Fatalf("certificate of a root not yet trusted was accepted: client %v server %v", cerr, serr)
	}
	// Both roots trusted during the rotation, then the server moves to the new root.
	roots.Store(&[]*x509.Certificate{oldCA.Roots()[0], newCA.Roots()[0]})
	if _, _, cerr, serr := handshake(t, clientConfig(newClient), sc); cerr != nil || serr != nil {
		t.Fatalf("during rotation: client %v server %v", cerr, serr)
	}
	serverCert.Store(newCA.Issue(t, mtlstest.ID(t, serverID)))
	roots.Store(&[]*x509.Certificate{newCA.Roots()[0]})
	if _, _, cerr, serr := handshake(t, clientConfig(newClient), sc); cerr != nil || serr != nil {
		t.Fatalf("after rotation: client %v server %v", cerr, serr)
	}
	if _, _, _, serr := handshake(t, clientConfig(oldCA.Issue(t, mtlstest.ID(t, clientID))), sc); serr == nil {
		t.Fatal("certificate of the retired root was accepted")
	}
}

func TestConfigArguments(t *testing.T) {
	roots := func() []*x509.Certificate { return nil }
	srv, cli := mtlstest.Static(&tls.Certificate{})
	id := mtlstest.ID(t, serverID)
	tests := []struct {
		name string
		err  error
	}{
		{"server without trust domain", second(ServerConfig(spiffeid.TrustDomain{}, srv, roots))},
		{"server without certificate", second(ServerConfig(meshTD, nil, roots))},
		{"server without roots", second(ServerConfig(meshTD, srv, nil))},
		{"client without certificate", second(ClientConfig(nil, roots, id))},
		{"client without roots", second(ClientConfig(cli, nil, id))},
		{"client without identities", second(ClientConfig(cli, roots))},
		{"client with zero identity", second(ClientConfig(cli, roots, identity.ID{}))},
	}
	for _, tt := range tests {
		if tt.err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
	if _, err := PeerIdentity(tls.ConnectionState{}); err == nil {
		t.Error("PeerIdentity of an incomplete handshake succeeded")
	}
	if _, err := PeerIdentity(tls.ConnectionState{HandshakeComplete: true}); err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Errorf("PeerIdentity without certificates = %v", err)
	}
}

func second[T any](_ T, err error) error { return err }

func TestReadRoots(t *testing.T) {
	dir := t.TempDir()
	root := mtlstest.NewCA(t, "root").Roots()[0]
	good := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(good, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots, err := ReadRoots(good)
	if err != nil || len(roots) != 1 || !roots[0].Equal(root) {
		t.Errorf("ReadRoots(good) = %d roots, %v; want the CA's root", len(roots), err)
	}
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{empty, filepath.Join(dir, "missing.pem")} {
		if _, err := ReadRoots(p); err == nil {
			t.Errorf("ReadRoots(%s) succeeded, want an error", p)
		}
	}
}
