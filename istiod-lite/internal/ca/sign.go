package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// ErrInvalidCSR marks a CSR the CA refuses to sign; the message says why.
var ErrInvalidCSR = errors.New("invalid CSR")

// maxCSRSize bounds the CSR PEM accepted from the network.
const maxCSRSize = 64 << 10

var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// ParseCSR parses a PEM CSR from a workload and checks it is one the CA may sign: a valid
// self-signature, an ECDSA (P-256/P-384) or RSA (2048–8192 bit) key, exactly one SAN which
// is a workload identity URI, and no request to be a CA. It returns the CSR and the
// identity it names. Errors wrap ErrInvalidCSR.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, identity.ID, error) {
	bad := func(format string, args ...any) (*x509.CertificateRequest, identity.ID, error) {
		return nil, identity.ID{}, fmt.Errorf("%w: %s", ErrInvalidCSR, fmt.Sprintf(format, args...))
	}
	if len(csrPEM) > maxCSRSize {
		return bad("larger than %d bytes", maxCSRSize)
	}
	block, rest := pem.Decode(csrPEM)
	if block == nil {
		return bad("no PEM block")
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return bad("PEM block is %q, want CERTIFICATE REQUEST", block.Type)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return bad("trailing data after the PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return bad("parsing: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return bad("signature does not verify: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return bad("ECDSA curve %s not accepted (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return bad("RSA key of %d bits not accepted (want 2048 to 8192)", n)
		}
	default:
		return bad("key type %T not accepted (want ECDSA or RSA)", csr.PublicKey)
	}
	if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) > 0 {
		return bad("has DNS, email or IP SANs; only one URI SAN (the workload identity) is allowed")
	}
	if len(csr.URIs) != 1 {
		return bad("has %d URI SANs, want exactly one (the workload identity)", len(csr.URIs))
	}
	id, err := identity.Parse(csr.URIs[0].String())
	if err != nil {
		return bad("URI SAN: %v", err)
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidBasicConstraints) {
			continue
		}
		var bc struct {
			IsCA       bool `asn1:"optional"`
			MaxPathLen int  `asn1:"optional,default:-1"`
		}
		if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil {
			return bad("malformed basicConstraints extension: %v", err)
		}
		if bc.IsCA {
			return bad("requests CA:true; workload certificates cannot be CAs")
		}
	}
	return csr, id, nil
}

// Sign issues a workload certificate for id with csr's public key, valid for ttl from now
// (clamped so it never outlives the signing certificate), and returns the chain leaf first,
// root last.
func (b *Bundle) Sign(csr *x509.CertificateRequest, id identity.ID, ttl time.Duration, now time.Time) ([]*x509.Certificate, error) {
	notAfter := now.Add(ttl)
	if notAfter.After(b.SigningCert.NotAfter) {
		notAfter = b.SigningCert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("signing certificate expired at %s", b.SigningCert.NotAfter.Format(time.RFC3339))
	}
	u := id.SPIFFE().URL()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		NotBefore:             now.Add(-time.Minute), // tolerate clock skew between nodes
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
	}
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); !isRSA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.SigningCert, csr.PublicKey, b.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing issued certificate: %w", err)
	}
	return b.chainFor(leaf), nil
}

// chainFor returns leaf, the signing certificate (unless it is the root), the
// intermediates, and the root.
func (b *Bundle) chainFor(leaf *x509.Certificate) []*x509.Certificate {
	chain := []*x509.Certificate{leaf}
	if !b.SigningCert.Equal(b.Root) {
		chain = append(chain, b.SigningCert)
	}
	chain = append(chain, b.Intermediates...)
	return append(chain, b.Root)
}

// EncodeChain returns each certificate as its own PEM string (the IstioCertificateResponse form).
func EncodeChain(chain []*x509.Certificate) []string {
	out := make([]string, len(chain))
	for i, c := range chain {
		out[i] = string(encodeCert(c))
	}
	return out
}
