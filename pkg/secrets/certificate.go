package secrets

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// Certificate is a verified certificate of one identity with its private key. It is shared
// between callers and must not be modified.
type Certificate struct {
	ID identity.ID
	// Chain is leaf first, root last, as the CA returned it.
	Chain []*x509.Certificate
	// Key is the leaf's private key (ECDSA P-256).
	Key crypto.Signer
	// TLS is the chain and key for crypto/tls; it leaves out a self-signed root, which
	// peers already hold.
	TLS *tls.Certificate
	// NotBefore and NotAfter are the leaf's validity period.
	NotBefore, NotAfter time.Time
}

// ValidAt reports whether the leaf is within its validity period at t.
func (c *Certificate) ValidAt(t time.Time) bool {
	return c != nil && !t.Before(c.NotBefore) && t.Before(c.NotAfter)
}

// newCertificate assembles a Certificate from a verified chain and its leaf's key.
func newCertificate(id identity.ID, chain []*x509.Certificate, key crypto.Signer) *Certificate {
	send := chain
	if n := len(chain); n > 1 && isSelfSigned(chain[n-1]) {
		send = chain[:n-1]
	}
	der := make([][]byte, len(send))
	for i, c := range send {
		der[i] = c.Raw
	}
	leaf := chain[0]
	return &Certificate{
		ID:        id,
		Chain:     chain,
		Key:       key,
		TLS:       &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf},
		NotBefore: leaf.NotBefore,
		NotAfter:  leaf.NotAfter,
	}
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}
