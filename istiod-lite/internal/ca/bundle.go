// Package ca is istiod-lite's certificate authority core: the signing key material (a
// self-signed root or a plugged-in intermediate) and the signing of workload certificates
// from CSRs. It is pure: it holds keys and certificates in memory and knows nothing of
// Kubernetes, gRPC or who is allowed to ask for what (see caserver for that).
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Keys of the PEM files in the istio-ca-secret and cacerts Secrets (Istio's names).
const (
	CACertKey    = "ca-cert.pem"
	CAKeyKey     = "ca-key.pem"
	CertChainKey = "cert-chain.pem"
	RootCertKey  = "root-cert.pem"
)

// Bundle is the CA's key material: the certificate and key that sign workload certificates,
// the chain from that certificate up to (not including) the root, and the root.
type Bundle struct {
	SigningCert *x509.Certificate
	SigningKey  crypto.Signer
	// Intermediates lists the certificates between the signing certificate and the root,
	// signing certificate first; empty when the root signs directly.
	Intermediates []*x509.Certificate
	Root          *x509.Certificate
}

// NewSelfSignedRoot generates a root CA for trustDomain: ECDSA P-256, valid for ttl.
func NewSelfSignedRoot(trustDomain string, ttl time.Duration, now time.Time) (*Bundle, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating root key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{trustDomain}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signing root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing generated root: %w", err)
	}
	return &Bundle{SigningCert: root, SigningKey: key, Root: root}, nil
}

// ParseBundle parses and checks CA material in Istio's Secret layout. certChain may be
// empty; rootPEM may be empty only for a self-signed signing certificate.
func ParseBundle(certPEM, keyPEM, certChainPEM, rootPEM []byte) (*Bundle, error) {
	certs, err := parseCerts(certPEM)
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("%s: want exactly one certificate (err: %v)", CACertKey, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyKey, err)
	}
	b := &Bundle{SigningCert: certs[0], SigningKey: key}
	if !b.SigningCert.IsCA || b.SigningCert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s is not a CA certificate (needs basicConstraints CA:true and keyCertSign)", CACertKey)
	}
	if !publicKeysEqual(key.Public(), b.SigningCert.PublicKey) {
		return nil, fmt.Errorf("%s does not match the public key of %s", CAKeyKey, CACertKey)
	}
	if len(bytes.TrimSpace(rootPEM)) == 0 {
		b.Root = b.SigningCert
	} else {
		roots, err := parseCerts(rootPEM)
		if err != nil || len(roots) != 1 {
			return nil, fmt.Errorf("%s: want exactly one certificate (err: %v)", RootCertKey, err)
		}
		b.Root = roots[0]
	}
	if len(bytes.TrimSpace(certChainPEM)) > 0 {
		chain, err := parseCerts(certChainPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", CertChainKey, err)
		}
		for _, c := range chain { // Istio's cert-chain.pem may include the signing cert and the root
			if !c.Equal(b.SigningCert) && !c.Equal(b.Root) {
				b.Intermediates = append(b.Intermediates, c)
			}
		}
	}
	if err := b.verify(); err != nil {
		return nil, err
	}
	return b, nil
}

// verify checks that the signing certificate chains to the root through the intermediates.
func (b *Bundle) verify() error {
	roots := x509.NewCertPool()
	roots.AddCert(b.Root)
	inter := x509.NewCertPool()
	for _, c := range b.Intermediates {
		inter.AddCert(c)
	}
	_, err := b.SigningCert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("%s does not chain to %s: %w", CACertKey, RootCertKey, err)
	}
	return nil
}

// PEM returns the bundle in Istio's Secret layout.
func (b *Bundle) PEM() (map[string][]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(b.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("encoding CA key: %w", err)
	}
	var chain []byte
	for _, c := range b.Intermediates {
		chain = append(chain, encodeCert(c)...)
	}
	return map[string][]byte{
		CACertKey:    encodeCert(b.SigningCert),
		CAKeyKey:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		CertChainKey: chain,
		RootCertKey:  encodeCert(b.Root),
	}, nil
}

// RootPEM returns the root certificate in PEM, as published to namespaces.
func (b *Bundle) RootPEM() []byte { return encodeCert(b.Root) }

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(b)) > 0 {
		return nil, errors.New("trailing data after the PEM certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", key)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	switch k := a.(type) {
	case *ecdsa.PublicKey:
		return k.Equal(b)
	case *rsa.PublicKey:
		return k.Equal(b)
	case equaler:
		return k.Equal(b)
	}
	return false
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return n.Add(n, big.NewInt(1)) // never zero
}
