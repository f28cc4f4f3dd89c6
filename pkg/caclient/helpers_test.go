package caclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/url"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

func mustID(t testing.TB) identity.ID {
	t.Helper()
	id, err := identity.New(identity.DefaultTrustDomain, "ns", "workload")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// testCSR returns a PEM CSR for id with a fresh P-256 key.
func testCSR(t testing.TB, id identity.ID) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.SPIFFE().URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
