package secrets

import (
	"context"
	"log/slog"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

func mustID(t testing.TB, ns, sa string) identity.ID {
	t.Helper()
	id, err := identity.New(identity.DefaultTrustDomain, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// caOptions returns Options that use ca, with a test logger.
func caOptions(t testing.TB, ca *secretstest.CA) Options {
	return Options{Signer: ca, Roots: ca.Roots, Log: testLog(t)}
}

// start creates a Manager and runs it until the test ends, then checks Run's result.
func start(t testing.TB, opts Options) *Manager {
	t.Helper()
	m, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return m
}

// cached returns id's cached certificate without fetching, or nil.
func (m *Manager) cached(id identity.ID) *Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[id]; ok {
		return e.cert
	}
	return nil
}

// requestsFor counts the CA's requests for id.
func requestsFor(ca *secretstest.CA, id identity.ID) int {
	n := 0
	for _, r := range ca.Requests() {
		if r.ID == id {
			n++
		}
	}
	return n
}
