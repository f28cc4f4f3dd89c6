package secrets

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

func TestVerifyChain(t *testing.T) {
	alice, bob := mustID(t, "ns", "alice"), mustID(t, "ns", "bob")
	ca, other := secretstest.New(t), secretstest.New(t)
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		issuer  *secretstest.CA
		tamper  func(*x509.Certificate, *crypto.PublicKey)
		edit    func([]*x509.Certificate) []*x509.Certificate
		roots   []*x509.Certificate
		at      time.Duration // after issuance
		wantErr string        // substring; "" for success
	}{
		{name: "valid", issuer: ca},
		{name: "valid without root in chain", issuer: ca, edit: func(c []*x509.Certificate) []*x509.Certificate { return c[:2] }},
		{name: "wrong SAN", issuer: ca, wantErr: "leaf names spiffe://cluster.local/ns/ns/sa/bob",
			tamper: func(c *x509.Certificate, _ *crypto.PublicKey) { c.URIs = []*url.URL{bob.SPIFFE().URL()} }},
		{name: "two URI SANs", issuer: ca, wantErr: "more than one URI SAN",
			tamper: func(c *x509.Certificate, _ *crypto.PublicKey) { c.URIs = append(c.URIs, bob.SPIFFE().URL()) }},
		{name: "no URI SAN", issuer: ca, wantErr: "no URI SAN",
			tamper: func(c *x509.Certificate, _ *crypto.PublicKey) { c.URIs = nil; c.DNSNames = []string{"alice"} }},
		{name: "unknown root", issuer: other, wantErr: "could not verify leaf"},
		{name: "roots of another CA", issuer: ca, roots: other.Roots(), wantErr: "could not verify leaf"},
		{name: "no roots", issuer: ca, roots: []*x509.Certificate{}, wantErr: "no trust anchors"},
		{name: "leaf key is not ours", issuer: ca, wantErr: "public key does not match",
			tamper: func(_ *x509.Certificate, pub *crypto.PublicKey) { *pub = &otherKey.PublicKey }},
		{name: "leaf is a CA", issuer: ca, wantErr: "CA flag",
			tamper: func(c *x509.Certificate, _ *crypto.PublicKey) { c.IsCA = true }},
		{name: "expired", issuer: ca, at: 2 * time.Hour, wantErr: "expired"},
		{name: "intermediate missing", issuer: ca, wantErr: "could not verify leaf",
			edit: func(c []*x509.Certificate) []*x509.Certificate { return []*x509.Certificate{c[0], c[2]} }},
		{name: "empty", issuer: ca, wantErr: "empty", edit: func([]*x509.Certificate) []*x509.Certificate { return nil }},
		{name: "nil certificate", issuer: ca, wantErr: "certificate 1 is nil",
			edit: func(c []*x509.Certificate) []*x509.Certificate { return []*x509.Certificate{c[0], nil} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, csr, err := newKeyAndCSR(alice)
			if err != nil {
				t.Fatal(err)
			}
			tt.issuer.SetTamper(tt.tamper)
			defer tt.issuer.SetTamper(nil)
			chain, err := tt.issuer.Issue(csr, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if tt.edit != nil {
				chain = tt.edit(chain)
			}
			roots := ca.Roots()
			if tt.roots != nil {
				roots = tt.roots
			}
			err = verifyChain(alice, key, chain, roots, time.Now().Add(tt.at))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("verifyChain: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("verifyChain succeeded, want error containing %q", tt.wantErr)
			case tt.wantErr != "" && (!strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errInvalidChain)):
				t.Fatalf("verifyChain: %v, want errInvalidChain containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewCertificate(t *testing.T) {
	alice := mustID(t, "ns", "alice")
	ca := secretstest.New(t)
	key, csr, err := newKeyAndCSR(alice)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Issue(csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		chain    []*x509.Certificate
		wantSent int
	}{
		{"self-signed root left out", chain, 2},
		{"chain without root kept whole", chain[:2], 2},
		{"leaf alone", chain[:1], 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCertificate(alice, tt.chain, key)
			if got := len(c.TLS.Certificate); got != tt.wantSent {
				t.Errorf("TLS chain has %d certificates, want %d", got, tt.wantSent)
			}
			if c.TLS.Leaf != chain[0] || c.TLS.PrivateKey != key || c.Key != key {
				t.Error("TLS leaf or key not set")
			}
			if !c.NotBefore.Equal(chain[0].NotBefore) || !c.NotAfter.Equal(chain[0].NotAfter) {
				t.Error("validity not the leaf's")
			}
			if !c.ValidAt(c.NotBefore) || c.ValidAt(c.NotAfter) || c.ValidAt(c.NotBefore.Add(-time.Second)) {
				t.Error("ValidAt disagrees with [NotBefore, NotAfter)")
			}
		})
	}
	var nilCert *Certificate
	if nilCert.ValidAt(time.Now()) {
		t.Error("nil certificate valid")
	}
}
