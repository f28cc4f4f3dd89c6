package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestAuthorizationPolicyL4 checks ztunnel enforces L4 AuthorizationPolicy on the echo pods
// by the client's SPIFFE identity: DENY for it refuses it, an ALLOW for another identity
// refuses it, an ALLOW for it lets it through.
func TestAuthorizationPolicyL4(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	e.mustEcho(t, ns, 1, "http://echo/")
	policy := func(name, action, principal string) string {
		return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s}
spec:
  selector:
    matchLabels: {app: echo}
  action: %s
  rules:
  - from:
    - source:
        principals: [%q]
`, name, action, principal)
	}
	client := "cluster.local/ns/" + ns + "/sa/client"
	steps := []struct {
		what    string
		apply   string
		remove  string
		allowed bool
	}{
		{"DENY for the client", policy("deny-client", "DENY", client), "", false},
		{"the DENY removed", "", "deny-client", true},
		{"ALLOW for another identity only", policy("allow-other", "ALLOW", "cluster.local/ns/"+ns+"/sa/echo"), "", false},
		{"ALLOW for the client too", policy("allow-client", "ALLOW", client), "", true},
	}
	for _, s := range steps {
		if s.apply != "" {
			if _, err := e.k.Apply(ctx(t), ns, s.apply); err != nil {
				t.Fatal(err)
			}
		}
		if s.remove != "" {
			e.kubectl(t, "-n", ns, "delete", "authorizationpolicy", s.remove)
		}
		took := e.expectReach(t, ns, "http://echo/", s.allowed)
		t.Logf("%s: allowed=%v, in effect after %s", s.what, s.allowed, took.Round(100*time.Millisecond))
	}
}

// TestPeerAuthenticationStrict checks that an enrolled workload accepts plaintext from a
// client outside the mesh under the default (PERMISSIVE) and refuses it under a namespace's
// PeerAuthentication STRICT, while clients in the mesh still reach it.
func TestPeerAuthenticationStrict(t *testing.T) {
	e := mustEnv(t)
	meshed := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	outside := e.deploy(t, app{NoEcho: true, ClientNode: "node1"})
	url := "http://echo." + meshed + "/"
	e.mustEcho(t, outside, 1, url)
	e.mustEcho(t, meshed, 1, url)
	if _, err := e.k.Apply(ctx(t), meshed, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
`); err != nil {
		t.Fatal(err)
	}
	took := e.expectReach(t, outside, url, false)
	t.Logf("STRICT refuses the plaintext client %s after the apply", took.Round(100*time.Millisecond))
	e.mustEcho(t, meshed, 3, url)
	e.kubectl(t, "-n", meshed, "delete", "peerauthentication", "default")
	took = e.expectReach(t, outside, url, true)
	t.Logf("without it, plaintext is accepted again %s after the delete", took.Round(100*time.Millisecond))
}

// expectReach waits (up to 30 s, for the policy to reach ztunnel) until ns's client reaches
// url (allowed) or is refused, then checks it stays so for three more requests, and returns
// how long the wait was.
func (e *env) expectReach(t *testing.T, ns, url string, allowed bool) time.Duration {
	t.Helper()
	try := func() error {
		r, err := e.echo(t, ns, 1, url)
		ok := err == nil && r.Codes["200"] == 1
		if ok != allowed {
			return fmt.Errorf("request from %s to %s: allowed=%v (codes %v, err %v), want allowed=%v", ns, url, ok, r.Codes, err, allowed)
		}
		return nil
	}
	took := eventually(t, 30*time.Second, "the policy in effect", try)
	for range 3 {
		if err := try(); err != nil {
			t.Errorf("after it took effect: %v", err)
		}
	}
	return took
}
