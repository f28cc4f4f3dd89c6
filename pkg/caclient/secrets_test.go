package caclient

import (
	"context"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets"
)

// TestWithSecretsManager runs a node proxy's certificate manager over the gRPC client:
// the manager's CSR, TTL and impersonation reach the CA, and the chain the client parses
// passes the manager's verification.
func TestWithSecretsManager(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	c := newClient(t, f, nil)
	m, err := secrets.New(secrets.Options{
		Signer:      c,
		Roots:       f.ca.Roots,
		TTL:         2 * time.Hour,
		Impersonate: true,
		Log:         testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	runErr := make(chan error, 1)
	go func() { runErr <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	ids := []identity.ID{mustID(t)}
	other, err := identity.New("example.org", "shop", "cart")
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, other)
	for _, id := range ids {
		cert, err := m.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get %s: %v", id, err)
		}
		if cert.ID != id || cert.NotAfter.Sub(cert.NotBefore) != 2*time.Hour {
			t.Errorf("certificate for %s lives %s", cert.ID, cert.NotAfter.Sub(cert.NotBefore))
		}
	}
	reqs := f.requests()
	if len(reqs) != len(ids) {
		t.Fatalf("%d requests, want %d", len(reqs), len(ids))
	}
	for i, r := range reqs {
		if got := r.req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue(); got != ids[i].String() {
			t.Errorf("request %d impersonates %q, want %s", i, got, ids[i])
		}
		if r.req.GetValidityDuration() != 7200 {
			t.Errorf("request %d asks for %d s", i, r.req.GetValidityDuration())
		}
	}
}
