package l7

import (
	"errors"
	"strings"
	"testing"

	rbacpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/types"
)

func policy(t *testing.T, s string) *securityclient.AuthorizationPolicy {
	t.Helper()
	p := fromYAML[securityclient.AuthorizationPolicy](t, s)
	if p.Namespace == "" {
		p.Namespace = "app"
	}
	return &p
}

// TestRuleAttributes checks each attribute's translation alone: the permission or principal
// AND holds exactly the expected conjunct.
func TestRuleAttributes(t *testing.T) {
	tests := []struct {
		name, rule string
		principal  bool // the conjunct is in the principal (else the permission)
		want       string
	}{
		{"principals exact", `{from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}}]}}`},
		{"principals presence", `{from: [{source: {principals: ["*"]}}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": ".+"}}}}]}}`},
		{"principals prefix", `{from: [{source: {principals: ["cluster.local/ns/a/*"]}}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"prefix": "spiffe://cluster.local/ns/a/"}}}]}}`},
		{"principals suffix", `{from: [{source: {principals: ["*/sa/b"]}}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": "spiffe://.*/sa/b"}}}}]}}`},
		{"notPrincipals", `{from: [{source: {notPrincipals: [cluster.local/ns/a/sa/b]}}]}`, true,
			`{"notId": {"orIds": {"ids": [{"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}}]}}}`},
		{"namespaces", `{from: [{source: {namespaces: ["team-*"]}}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": ".*/ns/team-.*/.*"}}}}]}}`},
		{"notNamespaces", `{from: [{source: {notNamespaces: [a.b]}}]}`, true,
			`{"notId": {"orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": ".*/ns/a\\.b/.*"}}}}]}}}`},
		{"ipBlocks", `{from: [{source: {ipBlocks: [10.0.0.0/8, "::1"]}}]}`, true,
			`{"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}, {"directRemoteIp": {"addressPrefix": "::1", "prefixLen": 128}}]}}`},
		{"notIpBlocks", `{from: [{source: {notIpBlocks: [10.0.0.1]}}]}`, true,
			`{"notId": {"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "10.0.0.1", "prefixLen": 32}}]}}}`},
		{"remoteIpBlocks", `{from: [{source: {remoteIpBlocks: [1.2.3.0/24]}}]}`, true,
			`{"orIds": {"ids": [{"remoteIp": {"addressPrefix": "1.2.3.0", "prefixLen": 24}}]}}`},
		{"serviceAccounts", `{from: [{source: {serviceAccounts: [sa]}}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": "spiffe://.+/ns/app/(.+/|)sa/sa(/.+)?"}}}}]}}`},
		{"trustDomains", `{from: [{source: {trustDomains: [td.example]}}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"prefix": "spiffe://td.example/"}}}]}}`},
		{"hosts ignore case", `{to: [{operation: {hosts: ["*.example.com"]}}]}`, false,
			`{"orRules": {"rules": [{"header": {"name": ":authority", "stringMatch": {"suffix": ".example.com", "ignoreCase": true}}}]}}`},
		{"notHosts", `{to: [{operation: {notHosts: [a.example]}}]}`, false,
			`{"notRule": {"orRules": {"rules": [{"header": {"name": ":authority", "stringMatch": {"exact": "a.example", "ignoreCase": true}}}]}}}`},
		{"methods", `{to: [{operation: {methods: [GET]}}]}`, false,
			`{"orRules": {"rules": [{"header": {"name": ":method", "stringMatch": {"exact": "GET"}}}]}}`},
		{"notMethods", `{to: [{operation: {notMethods: ["*"]}}]}`, false,
			`{"notRule": {"orRules": {"rules": [{"header": {"name": ":method", "presentMatch": true}}]}}}`},
		{"paths", `{to: [{operation: {paths: [/a, "/b/*", "*.js", "*"]}}]}`, false,
			`{"orRules": {"rules": [{"urlPath": {"path": {"exact": "/a"}}}, {"urlPath": {"path": {"prefix": "/b/"}}}, {"urlPath": {"path": {"suffix": ".js"}}}, {"urlPath": {"path": {"safeRegex": {"regex": ".+"}}}}]}}`},
		{"notPaths", `{to: [{operation: {notPaths: [/a]}}]}`, false,
			`{"notRule": {"orRules": {"rules": [{"urlPath": {"path": {"exact": "/a"}}}]}}}`},
		{"ports", `{to: [{operation: {ports: ["8080"]}}]}`, false,
			`{"orRules": {"rules": [{"destinationPort": 8080}]}}`},
		{"notPorts", `{to: [{operation: {notPorts: ["1"]}}]}`, false,
			`{"notRule": {"orRules": {"rules": [{"destinationPort": 1}]}}}`},
		{"when request header", `{when: [{key: "request.headers[X-Id]", values: ["a*"]}]}`, true,
			`{"orIds": {"ids": [{"header": {"name": "X-Id", "stringMatch": {"prefix": "a"}}}]}}`},
		{"when source.ip", `{when: [{key: source.ip, notValues: [10.0.0.0/8]}]}`, true,
			`{"notId": {"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}]}}}`},
		{"when source.namespace", `{when: [{key: source.namespace, values: [a]}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": ".*/ns/a/.*"}}}}]}}`},
		{"when source.principal", `{when: [{key: source.principal, values: [cluster.local/ns/a/sa/b]}]}`, true,
			`{"orIds": {"ids": [{"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}}]}}`},
		{"when destination.port", `{when: [{key: destination.port, values: ["80"]}]}`, false,
			`{"orRules": {"rules": [{"destinationPort": 80}]}}`},
		{"when destination.ip", `{when: [{key: destination.ip, values: [10.1.2.3]}]}`, false,
			`{"orRules": {"rules": [{"destinationIp": {"addressPrefix": "10.1.2.3", "prefixLen": 32}}]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := policy(t, `{metadata: {name: p}, spec: {action: ALLOW, rules: [`+tt.rule+`]}}`)
			cp := compilePolicy(p, "cluster.local")
			if len(cp.errs) > 0 {
				t.Fatalf("errors: %v", cp.errs)
			}
			pol := cp.policies["ns[app]-policy[p]-rule[0]"]
			if err := pol.ValidateAll(); err != nil {
				t.Fatalf("invalid policy: %v", err)
			}
			if len(pol.GetPrincipals()) != 1 || len(pol.GetPermissions()) != 1 {
				t.Fatalf("want one principal and one permission: %v", pol)
			}
			if tt.principal {
				ids := pol.GetPrincipals()[0].GetAndIds().GetIds()
				if len(ids) != 1 {
					t.Fatalf("principal has %d conjuncts, want 1: %v", len(ids), ids)
				}
				protoEqual(t, ids[0], tt.want)
				protoEqual(t, pol.GetPermissions()[0], `{"andRules": {"rules": [{"any": true}]}}`)
			} else {
				rules := pol.GetPermissions()[0].GetAndRules().GetRules()
				if len(rules) != 1 {
					t.Fatalf("permission has %d conjuncts, want 1: %v", len(rules), rules)
				}
				protoEqual(t, rules[0], tt.want)
				protoEqual(t, pol.GetPrincipals()[0], `{"andIds": {"ids": [{"any": true}]}}`)
			}
		})
	}
}

func TestPolicyErrors(t *testing.T) {
	tests := []struct {
		name, policy string
		action       rbacpb.RBAC_Action
		rules        map[string]int // policy name → number of permission conjuncts; absent = dropped
		err          string
		unsupported  bool
	}{
		{"ALLOW drops a rule with a JWT attribute", `{action: ALLOW, rules: [{from: [{source: {requestPrincipals: [a/b]}}]}, {}]}`,
			rbacpb.RBAC_ALLOW, map[string]int{"ns[app]-policy[p]-rule[1]": 1}, "rule 0: requestPrincipals", true},
		{"DENY drops the attribute instead", `{action: DENY, rules: [{to: [{operation: {methods: [GET]}}], when: [{key: "request.auth.claims[g]", values: [x]}]}]}`,
			rbacpb.RBAC_DENY, map[string]int{"ns[app]-policy[p]-rule[0]": 1}, "request.auth.claims[g]", true},
		{"AUDIT drops the attribute", `{action: AUDIT, rules: [{to: [{operation: {paths: ["/a/{*}"], methods: [GET]}}]}]}`,
			rbacpb.RBAC_LOG, map[string]int{"ns[app]-policy[p]-rule[0]": 1}, "path template", true},
		{"CUSTOM denies what it would have checked", `{action: CUSTOM, provider: {name: ext}, rules: [{to: [{operation: {paths: [/x]}}]}]}`,
			rbacpb.RBAC_DENY, map[string]int{"ns[app]-policy[p]-rule[0]-deny-due-to-bad-CUSTOM-action": 1}, `action CUSTOM (provider "ext")`, true},
		{"bad CIDR in ALLOW", `{action: ALLOW, rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}`,
			rbacpb.RBAC_ALLOW, map[string]int{}, `"10.0.0.0/33" is not an IP address or CIDR`, false},
		{"bad port in DENY", `{action: DENY, rules: [{to: [{operation: {ports: [http], methods: [GET]}}]}]}`,
			rbacpb.RBAC_DENY, map[string]int{"ns[app]-policy[p]-rule[0]": 1}, `port "http" is not a port number`, false},
		{"unknown when key", `{action: ALLOW, rules: [{when: [{key: source.colour, values: [red]}]}]}`,
			rbacpb.RBAC_ALLOW, map[string]int{}, "when source.colour: unknown attribute", false},
		{"SNI is unsupported", `{action: ALLOW, rules: [{when: [{key: connection.sni, values: [a]}]}]}`,
			rbacpb.RBAC_ALLOW, map[string]int{}, "when connection.sni", true},
		{"DENY without rules matches nothing", `{action: DENY}`, rbacpb.RBAC_DENY, map[string]int{"ns[app]-policy[p]-rule[0]": 1}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := compilePolicy(policy(t, `{metadata: {name: p}, spec: `+tt.policy+`}`), "cluster.local")
			if cp.action != tt.action {
				t.Errorf("action %v, want %v", cp.action, tt.action)
			}
			var msgs []string
			for _, err := range cp.errs {
				msgs = append(msgs, err.Error())
				if tt.unsupported != errors.Is(err, ErrUnsupported) {
					t.Errorf("errors.Is(%v, ErrUnsupported) = %v", err, !tt.unsupported)
				}
			}
			if tt.err == "" && len(msgs) > 0 || tt.err != "" && (len(msgs) != 1 || !strings.Contains(msgs[0], tt.err)) {
				t.Errorf("errors %q, want one containing %q", msgs, tt.err)
			}
			if len(cp.policies) != len(tt.rules) {
				t.Errorf("policies %v, want %v", keys(cp.policies), tt.rules)
			}
			for name, n := range tt.rules {
				pol, ok := cp.policies[name]
				if !ok {
					t.Errorf("no policy %s in %v", name, keys(cp.policies))
					continue
				}
				if got := len(pol.GetPermissions()[0].GetAndRules().GetRules()); got != n && !isMatchNever(pol) {
					t.Errorf("policy %s has %d permission conjuncts, want %d", name, got, n)
				}
			}
		})
	}
}

func isMatchNever(p *rbacpb.Policy) bool {
	return p.GetPermissions()[0].GetNotRule().GetAny()
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestPerFilter checks which keys a virtual host gets and what each RBAC holds.
func TestPerFilter(t *testing.T) {
	gw := types.NamespacedName{Namespace: "app", Name: "waypoint"}
	api := Service{Namespace: "app", Name: "api", Hostname: "api.app.svc.cluster.local", Ports: []int32{80}}
	web := Service{Namespace: "app", Name: "web", Hostname: "web.app.svc.cluster.local", Ports: []int32{80}}
	toGateway := `targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]`
	toAPI := `targetRefs: [{kind: Service, name: api}]`
	tests := []struct {
		name     string
		policies []string
		svc      *Service            // nil: the Gateway's virtual host
		want     map[string][]string // key → enforced policy names; "shadow:" prefix for shadow rules
	}{
		{"nothing applies", []string{`{metadata: {name: a}, spec: {` + toAPI + `, action: DENY}}`}, &web, map[string][]string{}},
		{"gateway policy applies to every Service and to the Gateway", []string{`{metadata: {name: a}, spec: {` + toGateway + `, action: ALLOW}}`}, &web,
			map[string][]string{FilterKeyAllow: {"ns[app]-policy[a]-rule[0]"}}},
		{"service policy not on the Gateway", []string{`{metadata: {name: a}, spec: {` + toAPI + `, action: ALLOW}}`}, nil, map[string][]string{}},
		{"deprecated targetRef", []string{`{metadata: {name: a}, spec: {targetRef: {kind: Service, name: api}, action: DENY}}`}, &api,
			map[string][]string{FilterKeyDeny: {"ns[app]-policy[a]-rule[0]"}}},
		{"targetRef to another namespace is ignored", []string{`{metadata: {name: a}, spec: {targetRefs: [{kind: Service, name: api, namespace: x}], action: DENY}}`}, &api, map[string][]string{}},
		{"policy in another namespace is ignored", []string{`{metadata: {name: a, namespace: other}, spec: {` + toAPI + `, action: DENY}}`}, &api, map[string][]string{}},
		{"actions merge by key", []string{
			`{metadata: {name: a}, spec: {` + toAPI + `, action: DENY}}`,
			`{metadata: {name: b}, spec: {` + toGateway + `, action: DENY, rules: [{}, {}]}}`,
			`{metadata: {name: c}, spec: {` + toAPI + `, action: AUDIT, rules: [{}]}}`,
			`{metadata: {name: d}, spec: {` + toAPI + `, action: CUSTOM, rules: [{}]}}`,
		}, &api, map[string][]string{
			FilterKeyDeny:  {"ns[app]-policy[a]-rule[0]", "ns[app]-policy[b]-rule[0]", "ns[app]-policy[b]-rule[1]", "ns[app]-policy[d]-rule[0]-deny-due-to-bad-CUSTOM-action"},
			FilterKeyAudit: {"ns[app]-policy[c]-rule[0]"},
		}},
		{"dry-run beside enforced", []string{
			`{metadata: {name: a}, spec: {` + toAPI + `, action: ALLOW}}`,
			`{metadata: {name: b, annotations: {istio.io/dry-run: "true"}}, spec: {` + toAPI + `, action: ALLOW}}`,
		}, &api, map[string][]string{FilterKeyAllow: {"ns[app]-policy[a]-rule[0]", "shadow:ns[app]-policy[b]-rule[0]"}}},
		{"dry-run alone enforces nothing", []string{`{metadata: {name: b, annotations: {istio.io/dry-run: "true"}}, spec: {` + toAPI + `, action: ALLOW}}`}, &api,
			map[string][]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Gateway: gw, Bound: []Service{api, web}}
			for _, p := range tt.policies {
				in.AuthorizationPolicies = append(in.AuthorizationPolicies, policy(t, p))
			}
			a := newAuthorizer(in)
			per := a.forGateway()
			if tt.svc != nil {
				per = a.forService(*tt.svc)
			}
			if len(per) != len(tt.want) {
				t.Errorf("keys %v, want %v", keys(per), tt.want)
			}
			for key, names := range tt.want {
				any, ok := per[key]
				if !ok {
					t.Errorf("no key %s", key)
					continue
				}
				r := &rbachttp.RBACPerRoute{}
				if err := any.UnmarshalTo(r); err != nil {
					t.Fatal(err)
				}
				var got []string
				for n := range r.GetRbac().GetRules().GetPolicies() {
					got = append(got, n)
				}
				for n := range r.GetRbac().GetShadowRules().GetPolicies() {
					got = append(got, "shadow:"+n)
				}
				if !sameSet(got, names) {
					t.Errorf("%s policies %v, want %v", key, got, names)
				}
				want := map[string]rbacpb.RBAC_Action{FilterKeyDeny: rbacpb.RBAC_DENY, FilterKeyAllow: rbacpb.RBAC_ALLOW, FilterKeyAudit: rbacpb.RBAC_LOG}[key]
				if r.GetRbac().GetRules().GetAction() != want {
					t.Errorf("%s action %v, want %v", key, r.GetRbac().GetRules().GetAction(), want)
				}
			}
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestMigrateTrustDomain(t *testing.T) {
	c := ruleCompiler{trustDomain: "example.org"}
	for in, want := range map[string]string{
		"cluster.local/ns/a/sa/b": "example.org/ns/a/sa/b",
		"example.org/ns/a/sa/b":   "example.org/ns/a/sa/b",
		"other.org/ns/a/sa/b":     "other.org/ns/a/sa/b",
		"*/sa/b":                  "*/sa/b",
		"cluster.localx/ns/a":     "cluster.localx/ns/a",
	} {
		if got := c.migrateTrustDomain(in); got != want {
			t.Errorf("migrateTrustDomain(%q) = %q, want %q", in, got, want)
		}
	}
}
