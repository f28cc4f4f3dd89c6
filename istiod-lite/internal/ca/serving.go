package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"sync"
	"time"
)

// ServingCert keeps a TLS serving certificate for the CA's own endpoint (istiod.<ns>.svc),
// signed by the bundle and re-issued on demand once past half its lifetime. Use its
// GetCertificate in a tls.Config; it starts no goroutine.
type ServingCert struct {
	bundle   *Bundle
	dnsNames []string
	ttl      time.Duration
	now      func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

// NewServingCert issues the first certificate for dnsNames, valid for ttl.
func NewServingCert(b *Bundle, dnsNames []string, ttl time.Duration, now func() time.Time) (*ServingCert, error) {
	s := &ServingCert{bundle: b, dnsNames: dnsNames, ttl: ttl, now: now}
	if _, err := s.GetCertificate(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// GetCertificate returns the current certificate, issuing a new one when due.
func (s *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.cert != nil && now.Before(s.renewAt) {
		return s.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating serving key: %w", err)
	}
	notAfter := now.Add(s.ttl)
	if notAfter.After(s.bundle.SigningCert.NotAfter) {
		notAfter = s.bundle.SigningCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: s.dnsNames[0]},
		DNSNames:     s.dnsNames,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.bundle.SigningCert, key.Public(), s.bundle.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("signing serving certificate for %v: %w", s.dnsNames, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	chain := s.bundle.chainFor(leaf)
	for _, c := range chain[:len(chain)-1] { // the root is the client's to have
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.cert = cert
	s.renewAt = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	return cert, nil
}
