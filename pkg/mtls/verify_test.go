package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

const (
	clientID = "spiffe://cluster.local/ns/client/sa/curl"
	serverID = "spiffe://cluster.local/ns/server/sa/echo"
	otherID  = "spiffe://cluster.local/ns/server/sa/other"
)

var meshTD = spiffeid.RequireTrustDomainFromString("cluster.local")

func chain(c *tls.Certificate) []*x509.Certificate {
	out := make([]*x509.Certificate, len(c.Certificate))
	for i, der := range c.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		out[i] = cert
	}
	return out
}

func TestVerifyClient(t *testing.T) {
	mesh := mtlstest.NewCA(t, "mesh")
	other := mtlstest.NewCA(t, "other")
	inter := mesh.Intermediate(t, "mesh")
	uri := func(s string) *url.URL { u, _ := url.Parse(s); return u }
	tests := []struct {
		name    string
		chain   []*x509.Certificate
		roots   []*x509.Certificate
		want    string // identity on success
		wantErr string // substring of the error
		is      error
	}{
		{name: "workload of the trust domain", chain: chain(mesh.Issue(t, mtlstest.ID(t, clientID))), roots: mesh.Roots(), want: clientID},
		{name: "through an intermediate", chain: chain(inter.Issue(t, mtlstest.ID(t, clientID))), roots: mesh.Roots(), want: clientID},
		{name: "unknown CA", chain: chain(other.Issue(t, mtlstest.ID(t, clientID))), roots: mesh.Roots(), wantErr: "certificate signed by unknown authority"},
		{name: "other trust domain", chain: chain(mesh.Issue(t, mtlstest.ID(t, "spiffe://evil.org/ns/a/sa/b"))), roots: mesh.Roots(), wantErr: "client presented spiffe://evil.org/ns/a/sa/b, outside trust domain cluster.local", is: ErrIdentity},
		{name: "not a workload identity", chain: chain(mesh.IssueURIs(t, uri("spiffe://cluster.local/ztunnel"))), roots: mesh.Roots(), is: identity.ErrNotWorkload},
		{name: "no URI SAN", chain: chain(mesh.IssueURIs(t)), roots: mesh.Roots(), wantErr: "certificate contains no URI SAN"},
		{name: "two URI SANs", chain: chain(mesh.IssueURIs(t, uri(clientID), uri(serverID))), roots: mesh.Roots(), wantErr: "more than one URI SAN"},
		{name: "no certificate", roots: mesh.Roots(), wantErr: "client presented no certificate"},
		{name: "no roots", chain: chain(mesh.Issue(t, mtlstest.ID(t, clientID))), is: ErrNoRoots},
		{name: "CA certificate as leaf", chain: mesh.Roots(), roots: mesh.Roots(), wantErr: "certificate contains no URI SAN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := VerifyClient(tt.chain, meshTD, tt.roots)
			checkVerify(t, id, err, tt.want, tt.wantErr, tt.is)
		})
	}
}

func TestVerifyServer(t *testing.T) {
	mesh := mtlstest.NewCA(t, "mesh")
	other := mtlstest.NewCA(t, "other")
	server := chain(mesh.Issue(t, mtlstest.ID(t, serverID)))
	tests := []struct {
		name    string
		chain   []*x509.Certificate
		want    []identity.ID
		wantID  string
		wantErr string
		is      error
	}{
		{name: "expected identity", chain: server, want: []identity.ID{mtlstest.ID(t, serverID)}, wantID: serverID},
		{name: "one of the set", chain: server, want: []identity.ID{mtlstest.ID(t, otherID), mtlstest.ID(t, serverID)}, wantID: serverID},
		{
			name: "wrong identity", chain: server, want: []identity.ID{mtlstest.ID(t, otherID), mtlstest.ID(t, clientID)},
			wantErr: "server presented " + serverID + ", want one of [" + otherID + ", " + clientID + "]", is: ErrIdentity,
		},
		{name: "unknown CA", chain: chain(other.Issue(t, mtlstest.ID(t, serverID))), want: []identity.ID{mtlstest.ID(t, serverID)}, wantErr: "certificate signed by unknown authority"},
		{name: "no certificate", want: []identity.ID{mtlstest.ID(t, serverID)}, wantErr: "server presented no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := VerifyServer(tt.chain, mesh.Roots(), tt.want)
			checkVerify(t, id, err, tt.wantID, tt.wantErr, tt.is)
		})
	}
}

func checkVerify(t *testing.T, id identity.ID, err error, want, wantErr string, is error) {
	t.Helper()
	if wantErr == "" && is == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		if id.String() != want {
			t.Fatalf("identity = %q, want %q", id, want)
		}
		return
	}
	if err == nil {
		t.Fatalf("succeeded with %q, want an error", id)
	}
	if wantErr != "" && !strings.Contains(err.Error(), wantErr) {
		t.Errorf("error %q does not say %q", err, wantErr)
	}
	if is != nil && !errors.Is(err, is) {
		t.Errorf("error %q is not %v", err, is)
	}
	if strings.Contains(wantErr, "unknown authority") && !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Errorf("error %q does not wrap x509.UnknownAuthorityError", err)
	}
}

func TestCheckCipherSuite(t *testing.T) {
	tests := []struct {
		name    string
		cs      tls.ConnectionState
		wantErr string
	}{
		{"AES-128-GCM", tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}, ""},
		{"AES-256-GCM", tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_256_GCM_SHA384}, ""},
		{"ChaCha20", tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_CHACHA20_POLY1305_SHA256},
			"negotiated TLS_CHACHA20_POLY1305_SHA256, the mesh allows only TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384"},
		{"TLS 1.2", tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
			"negotiated TLS 1.2, the mesh requires TLS 1.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckCipherSuite(tt.cs)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrCipherSuite) {
				t.Fatalf("CheckCipherSuite = %v, want %q wrapping ErrCipherSuite", err, tt.wantErr)
			}
		})
	}
}
