package netns

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// TestTrustFailuresRefuse: the tunnel is refused when the server presents another identity
// than the destination's, or when either side's certificate comes from a CA the other side
// does not trust; the client's connection then carries nothing.
func TestTrustFailuresRefuse(t *testing.T) {
	impostor := strings.Replace(meshConfig, "serviceAccount: echo", "serviceAccount: impostor", 1)
	tests := []struct {
		name    string
		a, b    func(caA, caB *testca.Server) node
		refuser string // whose log says why
		wantLog string
	}{
		{"server presents the wrong identity",
			func(caA, _ *testca.Server) node { return node{ca: caA} },
			func(caA, _ *testca.Server) node { return node{ca: caA, config: impostor} },
			"a", "impostor"},
		{"client refuses a server from an unknown CA",
			func(caA, _ *testca.Server) node { return node{ca: caA} },
			func(caA, caB *testca.Server) node { return node{ca: caB, roots: []*testca.Server{caA}} },
			"a", "unknown authority"},
		{"server refuses a client from an unknown CA",
			func(caA, caB *testca.Server) node { return node{ca: caA, roots: []*testca.Server{caB}} },
			func(_, caB *testca.Server) node { return node{ca: caB} },
			"b", "unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caA, caB := testca.Start(t), testca.Start(t)
			m := newMeshWith(t, tt.a(caA, caB), tt.b(caA, caB))
			echoServer(t, m.tp, m.server, "10.10.2.2:8080")
			var got []byte
			_ = m.tp.Do(m.client, func() error {
				c, err := net.DialTimeout("tcp", "10.10.2.2:8080", 5*time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = c.Write([]byte("must not arrive"))
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				got = buf[:n]
				return nil
			})
			if len(got) > 0 {
				t.Fatalf("the client got %q back through an untrusted tunnel", got)
			}
			log := m.logA
			if tt.refuser == "b" {
				log = m.logB
			}
			waitFor(t, 5*time.Second, "the refusal in ztunnel "+tt.refuser+"'s log", func() bool {
				return strings.Contains(log.String(), tt.wantLog)
			})
		})
	}
}
