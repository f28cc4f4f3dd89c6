package translate

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// policyScenario is a mesh with a STRICT mesh-wide PeerAuthentication and policies of every
// kind the translation handles, fed end to end into pkg/authz by TestPoliciesEnforced.
const policyScenario = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-untrusted, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [untrusted]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: app}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {serviceAccounts: [frontend/web]}}]
    to: [{operation: {ports: ["8080"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: metrics, namespace: app}
spec:
  selector: {matchLabels: {app: metrics}}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: legacy-no-delete, namespace: app}
spec:
  selector: {matchLabels: {app: legacy}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reports, namespace: app}
spec:
  selector: {matchLabels: {app: reports}}
  rules:
  - to: [{operation: {methods: [GET]}}]
  - from: [{source: {namespaces: [app]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop, namespace: shop}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/frontend/*"]}
    - source: {ipBlocks: [10.1.0.0/16]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: shop}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: app, labels: {app: api}}
---
apiVersion: v1
kind: Pod
metadata: {name: metrics, namespace: app, labels: {app: metrics}}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: app, labels: {app: legacy}}
---
apiVersion: v1
kind: Pod
metadata: {name: reports, namespace: app, labels: {app: reports}}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart}}
`

// TestPoliciesEnforced compiles policyScenario with Policies and WorkloadPolicies, loads the
// result into pkg/authz as ztunnel would, and checks that connections are decided as the CRDs
// say.
func TestPoliciesEnforced(t *testing.T) {
	objs, err := decodePolicyObjects([]byte(policyScenario))
	if err != nil {
		t.Fatal(err)
	}
	opts := PolicyOptions{}
	auths, _ := Policies(objs.aps, objs.pas, opts)
	store, err := authz.New(auths, authz.Options{})
	if err != nil {
		t.Fatalf("authz.New rejected the translation: %v", err)
	}
	workloadKeys := map[string][]string{}
	for _, pod := range objs.pods {
		workloadKeys[pod.Namespace+"/"+pod.Name] = WorkloadPolicies(pod.Namespace, pod.Labels, objs.aps, objs.pas, opts)
	}

	id := func(ns, sa string) identity.ID {
		t.Helper()
		i, err := identity.New("cluster.local", ns, sa)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	var plaintext identity.ID
	tests := []struct {
		name  string
		src   identity.ID
		srcIP string
		dst   string // namespace/pod
		port  uint16
		want  bool
	}{
		{"selector allow: frontend/web to api:8080", id("frontend", "web"), "10.2.0.1", "app/api", 8080, true},
		{"selector allow: other service account denied", id("frontend", "other"), "10.2.0.1", "app/api", 8080, false},
		{"selector allow: other port denied", id("frontend", "web"), "10.2.0.1", "app/api", 9000, false},
		{"mesh STRICT: plaintext to api denied", plaintext, "10.2.0.1", "app/api", 8080, false},
		{"port PERMISSIVE: plaintext to metrics:9090 allowed", plaintext, "10.2.0.1", "app/metrics", 9090, true},
		{"port PERMISSIVE: plaintext to metrics:8080 denied (inherited STRICT)", plaintext, "10.2.0.1", "app/metrics", 8080, false},
		{"no ALLOW policy: mTLS to metrics:8080 allowed", id("frontend", "web"), "10.2.0.1", "app/metrics", 8080, true},
		{"global DENY: untrusted namespace denied even on a PERMISSIVE port", id("untrusted", "x"), "10.2.0.1", "app/metrics", 9090, false},
		{"L7 DENY rule fails closed: all traffic to legacy denied", id("app", "client"), "10.2.0.1", "app/legacy", 80, false},
		{"L7 ALLOW rule dropped: L4 rule still allows namespace app", id("app", "client"), "10.2.0.1", "app/reports", 80, true},
		{"L7 ALLOW rule dropped: GET from frontend not allowed", id("frontend", "web"), "10.2.0.1", "app/reports", 80, false},
		{"namespace allow: principal prefix", id("frontend", "web"), "10.2.0.1", "shop/cart", 80, true},
		{"namespace allow: other principal denied", id("other", "x"), "10.2.0.1", "shop/cart", 80, false},
		{"namespace PERMISSIVE: plaintext from allowed ipBlock", plaintext, "10.1.2.3", "shop/cart", 80, true},
		{"namespace PERMISSIVE: plaintext from elsewhere denied by ALLOW", plaintext, "192.0.2.1", "shop/cart", 80, false},
		{"AUDIT policy skipped: changes nothing", id("frontend", "web"), "10.2.0.1", "shop/cart", 443, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, ok := workloadKeys[tt.dst]
			if !ok {
				t.Fatalf("no pod %s in the scenario", tt.dst)
			}
			ns, _, _ := strings.Cut(tt.dst, "/")
			d := store.Evaluate(authz.Connection{
				SourceIdentity:       tt.src,
				SourceIP:             netip.MustParseAddr(tt.srcIP),
				DestinationIP:        netip.MustParseAddr("10.3.0.1"),
				DestinationPort:      tt.port,
				DestinationNamespace: ns,
				DestinationPolicies:  keys,
			})
			if d.Allowed != tt.want {
				t.Errorf("Evaluate() = %+v, want allowed %v (workload policies %v)", d, tt.want, keys)
			}
		})
	}
}
