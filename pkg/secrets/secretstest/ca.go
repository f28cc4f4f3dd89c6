// Package secretstest is an in-memory certificate authority for tests of pkg/secrets and
// of the components that use it: it implements secrets.Signer, records every request, and
// can be told to fail, to block, or to issue bad certificates.
//
// It is not a real CA (no authorization, keys in memory, a fixed three-level hierarchy) and
// it does no networking. Only _test.go files and tests/ may import it.
package secretstest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// DefaultTTL is the validity of a leaf when a request asks for none.
const DefaultTTL = time.Hour

// caValidity is the validity of the root and the intermediate.
const caValidity = 10 * 365 * 24 * time.Hour

// Request is one call to CA.Sign.
type Request struct {
	CSR         *x509.CertificateRequest
	ID          identity.ID // the CSR's URI SAN
	TTL         time.Duration
	Impersonate identity.ID
}

// CA is a root and an intermediate that issue leaves: chains are leaf, intermediate, root.
// Create it inside a testing/synctest bubble when the test runs in one, so that its
// validity starts at the bubble's clock.
type CA struct {
	Root, Intermediate *x509.Certificate
	rootKey, intKey    *ecdsa.PrivateKey

	mu       sync.Mutex
	err      error
	hook     func(context.Context, Request) error
	tamper   func(leaf *x509.Certificate, pub *crypto.PublicKey)
	requests []Request
	issued   int
	backdate time.Duration
}

// New returns a CA with a fresh root and intermediate, or stops tb.
func New(tb testing.TB) *CA {
	tb.Helper()
	ca, err := NewCA()
	if err != nil {
		tb.Fatalf("creating test CA: %v", err)
	}
	return ca
}

// NewCA returns a CA with a fresh root and intermediate.
func NewCA() (*CA, error) {
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	rootTmpl, err := caTemplate("secretstest root", now, 1)
	if err != nil {
		return nil, err
	}
	root, err := create(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating root: %w", err)
	}
	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	intTmpl, err := caTemplate("secretstest intermediate", now, 0)
	if err != nil {
		return nil, err
	}
	inter, err := create(intTmpl, root, &intKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating intermediate: %w", err)
	}
	return &CA{Root: root, Intermediate: inter, rootKey: rootKey, intKey: intKey}, nil
}

// Roots returns the CA's trust anchor, for secrets.Options.Roots.
func (c *CA) Roots() []*x509.Certificate { return []*x509.Certificate{c.Root} }

// Sign implements secrets.Signer: it records the request, runs the hook, returns the error
// set by SetError if any, and otherwise issues a leaf for the CSR's URI SAN valid from now
// (less any backdate) until now plus ttl (DefaultTTL if zero).
func (c *CA) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, impersonate identity.ID) ([]*x509.Certificate, error) {
	csr, id, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	req := Request{CSR: csr, ID: id, TTL: ttl, Impersonate: impersonate}
	c.mu.Lock()
	c.requests = append(c.requests, req)
	hook, failure := c.hook, c.err
	c.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, req); err != nil {
			return nil, err
		}
	}
	if failure != nil {
		return nil, failure
	}
	return c.Issue(csrPEM, ttl)
}

// Issue signs csrPEM for ttl (DefaultTTL if zero) without recording it or consulting the
// error and hook, for servers that wrap the CA. The backdate and tamper settings apply.
func (c *CA) Issue(csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, id, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	backdate := c.backdate
	c.mu.Unlock()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		URIs:                  []*url.URL{id.SPIFFE().URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	var pub crypto.PublicKey = csr.PublicKey
	c.mu.Lock()
	tamper := c.tamper
	c.issued++
	c.mu.Unlock()
	if tamper != nil {
		tamper(tmpl, &pub)
	}
	leaf, err := create(tmpl, c.Intermediate, pub, c.intKey)
	if err != nil {
		return nil, fmt.Errorf("issuing leaf for %s: %w", id, err)
	}
	return []*x509.Certificate{leaf, c.Intermediate, c.Root}, nil
}

// SetError makes Sign fail with err (after recording the request) until it is set to nil.
func (c *CA) SetError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

// SetHook makes Sign call hook after recording each request; a non-nil error fails the
// request. A hook may block, for example until ctx ends or the test releases it.
func (c *CA) SetHook(hook func(ctx context.Context, r Request) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hook = hook
}

// SetBackdate makes the CA set each leaf's NotBefore d before the time of issuance, as
// Istio's CA does to tolerate clock skew; NotAfter stays issuance plus TTL.
func (c *CA) SetBackdate(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.backdate = d
}

// SetTamper makes the CA edit each leaf template, and optionally the public key it
// certifies, before signing, to issue bad certificates. nil restores normal issuance.
func (c *CA) SetTamper(tamper func(leaf *x509.Certificate, pub *crypto.PublicKey)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tamper = tamper
}

// Requests returns the requests Sign has received, in order.
func (c *CA) Requests() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Request(nil), c.requests...)
}

// Issued returns how many leaves the CA has issued.
func (c *CA) Issued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.issued
}

// ParseCSR decodes a PEM CSR, checks its signature and returns it with its single URI SAN
// as an identity.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, identity.ID, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, identity.ID{}, errors.New("parsing CSR: no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, identity.ID{}, fmt.Errorf("parsing CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, identity.ID{}, fmt.Errorf("checking CSR signature: %w", err)
	}
	if len(csr.URIs) != 1 {
		return nil, identity.ID{}, fmt.Errorf("parsing CSR: %d URI SANs, want 1", len(csr.URIs))
	}
	id, err := identity.Parse(csr.URIs[0].String())
	if err != nil {
		return nil, identity.ID{}, fmt.Errorf("parsing CSR: %w", err)
	}
	return csr, id, nil
}

// EncodePEM returns each certificate as a PEM string, as Istio's CA service sends a chain.
func EncodePEM(chain []*x509.Certificate) []string {
	out := make([]string, len(chain))
	for i, c := range chain {
		out[i] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return out
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func caTemplate(name string, now time.Time, maxPathLen int) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"secretstest"}, CommonName: name},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}, nil
}

func create(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// IssueServing returns a TLS serving certificate for dnsNames, chained to the CA's root
// through its intermediate, for test servers that stand in for the CA or the control plane.
func (c *CA) IssueServing(dnsNames []string, ttl time.Duration) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	leaf, err := create(&x509.Certificate{
		SerialNumber: serial, DNSNames: dnsNames,
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ttl),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, c.Intermediate, key.Public(), c.intKey)
	if err != nil {
		return nil, fmt.Errorf("issuing serving certificate for %v: %w", dnsNames, err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, c.Intermediate.Raw}, PrivateKey: key, Leaf: leaf}, nil
}
