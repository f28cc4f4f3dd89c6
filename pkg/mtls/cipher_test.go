package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	_ "unsafe" // for go:linkname

	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

// crypto/tls offers no way to restrict TLS 1.3 cipher suites, so the only way to make a Go
// peer insist on ChaCha20-Poly1305 is to change the suites crypto/tls offers. These two
// variables are linkname-exported by crypto/tls on purpose (go.dev/issue/67401: "Do not
// remove or change the type signature"); the test swaps them for its duration only.
//
//go:linkname defaultCipherSuitesTLS13 crypto/tls.defaultCipherSuitesTLS13
var defaultCipherSuitesTLS13 []uint16

//go:linkname defaultCipherSuitesTLS13NoAES crypto/tls.defaultCipherSuitesTLS13NoAES
var defaultCipherSuitesTLS13NoAES []uint16

// offerOnlyChaCha makes every TLS 1.3 handshake of this process offer (and so negotiate)
// only ChaCha20-Poly1305 until the test ends. Tests using it must not run in parallel.
func offerOnlyChaCha(t *testing.T) {
	aes, noAES := defaultCipherSuitesTLS13, defaultCipherSuitesTLS13NoAES
	defaultCipherSuitesTLS13 = []uint16{tls.TLS_CHACHA20_POLY1305_SHA256}
	defaultCipherSuitesTLS13NoAES = []uint16{tls.TLS_CHACHA20_POLY1305_SHA256}
	t.Cleanup(func() { defaultCipherSuitesTLS13, defaultCipherSuitesTLS13NoAES = aes, noAES })
}

func TestChaChaRefused(t *testing.T) {
	mesh := mtlstest.NewCA(t, "mesh")
	roots := func() []*x509.Certificate { return mesh.Roots() }
	srvCert, _ := mtlstest.Static(mesh.Issue(t, mtlstest.ID(t, serverID)))
	_, cliCert := mtlstest.Static(mesh.Issue(t, mtlstest.ID(t, clientID)))
	meshServer, err := ServerConfig(meshTD, srvCert, roots)
	if err != nil {
		t.Fatal(err)
	}
	meshClient, err := ClientConfig(cliCert, roots, mtlstest.ID(t, serverID))
	if err != nil {
		t.Fatal(err)
	}
	// Peers that check nothing, so that each side's own refusal is what the test sees.
	plainServer := &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: srvCert, ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{ALPN}}
	plainClient := &tls.Config{MinVersion: tls.VersionTLS13, GetClientCertificate: cliCert, InsecureSkipVerify: true, NextProtos: []string{ALPN}} //nolint:gosec // test peer

	cs, _, cerr, serr := handshake(t, meshClient, meshServer)
	if cerr != nil || serr != nil {
		t.Fatalf("default suites: client %v server %v", cerr, serr)
	}
	if cs.CipherSuite != tls.TLS_AES_128_GCM_SHA256 && cs.CipherSuite != tls.TLS_AES_256_GCM_SHA384 {
		t.Fatalf("default suites negotiated %s", tls.CipherSuiteName(cs.CipherSuite))
	}

	offerOnlyChaCha(t)
	tests := []struct {
		name           string
		client, server *tls.Config
		refusedBy      string
	}{
		{"mesh client refuses", meshClient, plainServer, "client"},
		{"mesh server refuses", plainClient, meshServer, "server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, cerr, serr := handshake(t, tt.client, tt.server)
			err := cerr
			if tt.refusedBy == "server" {
				err = serr
			}
			if !errors.Is(err, ErrCipherSuite) {
				t.Fatalf("%s error = %v, want ErrCipherSuite (client %v, server %v)", tt.refusedBy, err, cerr, serr)
			}
			t.Logf("%s: %v", tt.refusedBy, err)
		})
	}
}
