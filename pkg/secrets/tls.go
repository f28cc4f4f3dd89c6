package secrets

import (
	"context"
	"crypto/tls"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// GetCertificateFunc returns a tls.Config.GetCertificate callback that serves id's
// certificate (see Get; it never serves an expired one). A handshake waits for a fetch
// only as long as its context allows. Nothing is logged per handshake.
func (m *Manager) GetCertificateFunc(id identity.ID) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return m.tlsCertificate(hello.Context(), id)
	}
}

// GetClientCertificateFunc returns a tls.Config.GetClientCertificate callback that
// presents id's certificate, like GetCertificateFunc.
func (m *Manager) GetClientCertificateFunc(id identity.ID) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(req *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return m.tlsCertificate(req.Context(), id)
	}
}

func (m *Manager) tlsCertificate(ctx context.Context, id identity.ID) (*tls.Certificate, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	c, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.TLS, nil
}
