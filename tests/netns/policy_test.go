package netns

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// policyConfig is meshConfig with the server pod listing the selector policy deny-sleep,
// and the given policies appended.
func policyConfig(policies string) string {
	cfg := strings.Replace(meshConfig, "  node: node-b\n", "  node: node-b\n  authorizationPolicies: [default/deny-sleep]\n", 1)
	return cfg + "policies:\n" + policies
}

// TestPoliciesEnforced: ztunnel B enforces L4 policy at the destination: a selector DENY on
// the client's principal refuses the HBONE stream; a namespace STRICT policy (Istio's
// compiled PeerAuthentication: DENY notPrincipals presence) refuses plaintext on :15006 but
// keeps its port-level PERMISSIVE exception.
func TestPoliciesEnforced(t *testing.T) {
	tests := []struct {
		name       string
		policies   string
		plaintext  bool // bypass ztunnel A, so node B sees plaintext
		port       string
		wantRefuse bool
	}{
		{"no policy: HBONE allowed", "", false, "8080", false},
		{"selector DENY on the client's principal", `
- name: deny-sleep
  namespace: default
  scope: WORKLOAD_SELECTOR
  action: DENY
  groups: [{rules: [{matches: [{principals: [{exact: cluster.local/ns/default/sa/sleep}]}]}]}]
`, false, "8080", true},
		{"selector DENY on another principal", `
- name: deny-sleep
  namespace: default
  scope: WORKLOAD_SELECTOR
  action: DENY
  groups: [{rules: [{matches: [{principals: [{exact: cluster.local/ns/default/sa/other}]}]}]}]
`, false, "8080", false},
		{"PERMISSIVE: plaintext allowed", "", true, "8080", false},
		{"STRICT: plaintext refused", `
- name: converted_peer_authentication_default
  namespace: default
  scope: NAMESPACE
  action: DENY
  groups: [{rules: [{matches: [{notPrincipals: [{presence: {}}]}]}, {matches: [{notDestinationPorts: [9090]}]}]}]
`, true, "8080", true},
		{"STRICT with port 9090 PERMISSIVE: plaintext to 9090 allowed", `
- name: converted_peer_authentication_default
  namespace: default
  scope: NAMESPACE
  action: DENY
  groups: [{rules: [{matches: [{notPrincipals: [{presence: {}}]}]}, {matches: [{notDestinationPorts: [9090]}]}]}]
`, true, "9090", false},
		{"STRICT still allows mutual TLS", `
- name: converted_peer_authentication_default
  namespace: default
  scope: NAMESPACE
  action: DENY
  groups: [{rules: [{matches: [{notPrincipals: [{presence: {}}]}]}, {matches: [{notDestinationPorts: [9090]}]}]}]
`, false, "8080", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := testca.Start(t)
			cfg := policyConfig(tt.policies)
			if tt.policies == "" {
				cfg = meshConfig
			}
			m := newMeshWith(t, node{ca: ca, config: cfg}, node{ca: ca, config: cfg})
			echoServer(t, m.tp, m.server, "10.10.2.2:"+tt.port)
			if tt.plaintext {
				nft(t, m.tp, m.nodeA, `insert rule ip mesh prerouting iifname "vclient" tcp dport { 8080, 9090 } accept`)
			}
			var got []byte
			err := m.tp.Do(m.client, func() error {
				c, err := net.DialTimeout("tcp", "10.10.2.2:"+tt.port, 5*time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write([]byte("ping")); err != nil {
					return err
				}
				_ = c.(*net.TCPConn).CloseWrite()
				buf := make([]byte, 4)
				n, _ := c.Read(buf)
				got = buf[:n]
				return nil
			})
			refused := err != nil || string(got) != "ping"
			if refused != tt.wantRefuse {
				t.Fatalf("refused = %v (echo %q, err %v), want %v", refused, got, err, tt.wantRefuse)
			}
			if tt.wantRefuse {
				waitFor(t, 5*time.Second, "the policy refusal in ztunnel B's log", func() bool {
					return strings.Contains(m.logB.String(), "denied by authorization policy default/")
				})
			}
		})
	}
}
