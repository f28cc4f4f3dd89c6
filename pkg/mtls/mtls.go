// Package mtls builds the crypto/tls configurations of the mesh's mutual TLS, as HBONE
// (Istio ambient, port 15008) uses it: TLS 1.3 only, ALPN "h2", AES-GCM only, no SNI, and
// SPIFFE workload certificates verified against the mesh roots with go-spiffe.
//
// A server accepts any workload identity of its trust domain and leaves authorization to
// its caller, who reads the verified identity with [PeerIdentity]. A client accepts only the
// identities it is told to expect for this dial. Certificates and roots come from callbacks,
// so they can rotate without rebuilding a config.
//
// It is not a certificate manager (pkg/secrets is), not a CA client, and not an
// authorization engine: it knows nothing of policy. Any package may import it.
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// ALPN is the only application protocol HBONE negotiates.
const ALPN = "h2"

// Roots returns the mesh's current trust anchors. It is called on every handshake, so the
// roots may rotate; it must be safe for concurrent use.
type Roots func() []*x509.Certificate

// ServerCertificate returns the certificate a server presents, chosen per connection (ztunnel
// serves the identity of the destination workload, which it learns from the local address
// of hello.Conn). It must be safe for concurrent use.
type ServerCertificate func(hello *tls.ClientHelloInfo) (*tls.Certificate, error)

// ClientCertificate returns the certificate a client presents. It must be safe for
// concurrent use.
type ClientCertificate func(req *tls.CertificateRequestInfo) (*tls.Certificate, error)

// Errors that callers may branch on (with errors.Is); they are wrapped with the details.
var (
	// ErrCipherSuite: the handshake negotiated a cipher suite other than AES-GCM.
	ErrCipherSuite = errors.New("cipher suite not allowed in the mesh")
	// ErrIdentity: the peer's certificate names an identity this side does not accept.
	ErrIdentity = errors.New("peer identity not accepted")
	// ErrNoRoots: the Roots callback returned no certificates.
	ErrNoRoots = errors.New("no mesh root certificates")
)

// ServerConfig returns the configuration of a mesh (HBONE) server in trustDomain. The server
// presents cert's certificate, requires a client certificate that chains to roots and names a
// workload identity of trustDomain (any workload: authorization is the caller's job), and
// refuses any cipher suite but AES-GCM. Session tickets are disabled, as in ztunnel.
func ServerConfig(trustDomain spiffeid.TrustDomain, cert ServerCertificate, roots Roots) (*tls.Config, error) {
	switch {
	case trustDomain.IsZero():
		return nil, errors.New("mtls server config: trust domain is required")
	case cert == nil:
		return nil, errors.New("mtls server config: certificate callback is required")
	case roots == nil:
		return nil, errors.New("mtls server config: roots callback is required")
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		GetCertificate:         cert,
		ClientAuth:             tls.RequireAnyClientCert, // verified in VerifyConnection
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := CheckCipherSuite(cs); err != nil {
				return err
			}
			_, err := VerifyClient(cs.PeerCertificates, trustDomain, roots())
			return err
		},
	}, nil
}

// ClientConfig returns the configuration of a mesh (HBONE) client that presents cert's
// certificate and accepts a server only if its certificate chains to roots and names one of
// want. It sends no SNI (HBONE dials IP addresses, which SNI cannot carry, and Istio clients
// never set it), so it verifies the server itself rather than by host name. It refuses any
// cipher suite but AES-GCM. Build one per dial: want is the destination's identity set.
func ClientConfig(cert ClientCertificate, roots Roots, want ...identity.ID) (*tls.Config, error) {
	switch {
	case cert == nil:
		return nil, errors.New("mtls client config: certificate callback is required")
	case roots == nil:
		return nil, errors.New("mtls client config: roots callback is required")
	case len(want) == 0:
		return nil, errors.New("mtls client config: at least one expected server identity is required")
	}
	for _, id := range want {
		if id.IsZero() {
			return nil, errors.New("mtls client config: expected server identity is the zero ID")
		}
	}
	want = append([]identity.ID(nil), want...)
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		MaxVersion:           tls.VersionTLS13,
		NextProtos:           []string{ALPN},
		GetClientCertificate: cert,
		// Verification by host name cannot apply to an IP without SNI; VerifyConnection
		// checks the chain against the mesh roots and the URI SAN against want instead.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := CheckCipherSuite(cs); err != nil {
				return err
			}
			_, err := VerifyServer(cs.PeerCertificates, roots(), want)
			return err
		},
	}, nil
}

// PeerIdentity returns the workload identity of the peer of a connection made with a
// [ServerConfig] or [ClientConfig] configuration, which verified the peer's chain during the
// handshake. It reads the URI SAN of the leaf certificate and does not verify it again, so
// do not use it on connections configured otherwise.
func PeerIdentity(cs tls.ConnectionState) (identity.ID, error) {
	if !cs.HandshakeComplete {
		return identity.ID{}, errors.New("peer identity: handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return identity.ID{}, errors.New("peer identity: peer presented no certificate")
	}
	id, err := leafIdentity(cs.PeerCertificates[0])
	if err != nil {
		return identity.ID{}, fmt.Errorf("peer identity: %w", err)
	}
	return id, nil
}

// CheckCipherSuite rejects a connection whose cipher suite is not TLS 1.3 AES-GCM. Go does
// not let a config restrict TLS 1.3 suites, so both configurations call it from
// VerifyConnection; a peer that insists on ChaCha20-Poly1305 is refused after the handshake.
func CheckCipherSuite(cs tls.ConnectionState) error {
	if cs.Version != tls.VersionTLS13 {
		return fmt.Errorf("negotiated %s, the mesh requires TLS 1.3: %w", tls.VersionName(cs.Version), ErrCipherSuite)
	}
	switch cs.CipherSuite {
	case tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384:
		return nil
	}
	return fmt.Errorf("negotiated %s, the mesh allows only TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384: %w",
		tls.CipherSuiteName(cs.CipherSuite), ErrCipherSuite)
}
