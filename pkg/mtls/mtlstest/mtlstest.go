// Package mtlstest is an in-memory mesh CA for tests: a self-signed root (and optional
// intermediates) issuing ECDSA P-256 workload certificates with a single SPIFFE URI SAN, the
// shape istiod issues. It is not a CA for production use. Only _test.go files and tests/ may
// import it.
package mtlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// CA is a certificate authority: a root, or an intermediate whose chain leads to one.
type CA struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	chain []*x509.Certificate // this CA's certificate up to (excluding) the root
	root  *x509.Certificate
}

// NewCA returns a new self-signed root CA named name.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert := sign(tb, tmpl, tmpl, &key.PublicKey, key)
	return &CA{cert: cert, key: key, root: cert}
}

// Intermediate returns an intermediate CA signed by ca.
func (ca *CA) Intermediate(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{name}, CommonName: name + " intermediate"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert := sign(tb, tmpl, ca.cert, &key.PublicKey, ca.key)
	return &CA{cert: cert, key: key, chain: append([]*x509.Certificate{cert}, ca.chain...), root: ca.root}
}

// Roots returns the root certificate as a one-element trust anchor list.
func (ca *CA) Roots() []*x509.Certificate { return []*x509.Certificate{ca.root} }

// Issue returns a workload certificate for id: the leaf, then any intermediates.
func (ca *CA) Issue(tb testing.TB, id identity.ID) *tls.Certificate {
	tb.Helper()
	u, err := url.Parse(id.String())
	if err != nil {
		tb.Fatalf("identity %q as URI: %v", id, err)
	}
	return ca.IssueURIs(tb, u)
}

// IssueURIs returns a leaf certificate with exactly the given URI SANs (none, several, or
// ones that are not workload identities), for negative tests.
func (ca *CA) IssueURIs(tb testing.TB, uris ...*url.URL) *tls.Certificate {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         uris,
	}
	leaf := sign(tb, tmpl, ca.cert, &key.PublicKey, ca.key)
	out := &tls.Certificate{PrivateKey: key, Leaf: leaf, Certificate: [][]byte{leaf.Raw}}
	for _, c := range ca.chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}

// ID parses a workload identity or fails tb.
func ID(tb testing.TB, s string) identity.ID {
	tb.Helper()
	id, err := identity.Parse(s)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// Static returns certificate callbacks that always present cert, for both config builders.
func Static(cert *tls.Certificate) (server func(*tls.ClientHelloInfo) (*tls.Certificate, error), client func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) {
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func sign(tb testing.TB, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, key *ecdsa.PrivateKey) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}
