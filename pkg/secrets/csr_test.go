package secrets

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

func TestNewKeyAndCSR(t *testing.T) {
	tests := []struct{ td, ns, sa string }{
		{identity.DefaultTrustDomain, "default", "productpage"},
		{"example.org", "istio-system", "ztunnel"},
		{"mesh.internal", "a.b-c", "sa.with.dots"},
	}
	for _, tt := range tests {
		id, err := identity.New(tt.td, tt.ns, tt.sa)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(id.String(), func(t *testing.T) {
			key, csrPEM, err := newKeyAndCSR(id)
			if err != nil {
				t.Fatal(err)
			}
			block, rest := pem.Decode(csrPEM)
			if block == nil || block.Type != "CERTIFICATE REQUEST" || len(rest) != 0 {
				t.Fatalf("want exactly one CERTIFICATE REQUEST PEM block, got %q (rest %d bytes)", csrPEM, len(rest))
			}
			csr, err := x509.ParseCertificateRequest(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Errorf("CSR signature: %v", err)
			}
			if csr.SignatureAlgorithm != x509.ECDSAWithSHA256 {
				t.Errorf("signature algorithm %s, want ECDSA-SHA256", csr.SignatureAlgorithm)
			}
			pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
			if !ok || pub.Curve != elliptic.P256() {
				t.Errorf("public key %T, want ECDSA P-256", csr.PublicKey)
			}
			if !key.PublicKey.Equal(csr.PublicKey) {
				t.Error("CSR public key is not the generated key's")
			}
			if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
				t.Errorf("URI SANs %v, want exactly [%s]", csr.URIs, id)
			}
			if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) != 0 {
				t.Errorf("unexpected SANs: DNS %v, email %v, IP %v", csr.DNSNames, csr.EmailAddresses, csr.IPAddresses)
			}
			if s := csr.Subject.String(); s != "" {
				t.Errorf("subject %q, want empty", s)
			}
		})
	}
}

func TestNewKeyAndCSRFreshKeys(t *testing.T) {
	id := mustID(t, "ns", "sa")
	k1, _, err := newKeyAndCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	k2, _, err := newKeyAndCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Equal(k2) {
		t.Error("two CSRs share a key")
	}
}
