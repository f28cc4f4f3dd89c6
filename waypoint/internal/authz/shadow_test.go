package authz

import (
	"reflect"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// withShadow packs a filter's configuration as istiod-lite does: enforced rules (nil for
// none) and dry-run policies in shadow_rules with Istio's stat prefix.
func withShadow(t *testing.T, action rbacv3.RBAC_Action, enforce, shadow map[string]*rbacv3.Policy) *anypb.Any {
	t.Helper()
	cfg := &rbachttpv3.RBAC{ShadowRules: &rbacv3.RBAC{Action: action, Policies: shadow}}
	if enforce != nil {
		cfg.Rules = &rbacv3.RBAC{Action: action, Policies: enforce}
	}
	cfg.ShadowRulesStatPrefix = map[rbacv3.RBAC_Action]string{rbacv3.RBAC_ALLOW: "istio_dry_run_allow_", rbacv3.RBAC_DENY: "istio_dry_run_deny_"}[action]
	a, err := anypb.New(&rbachttpv3.RBACPerRoute{Rbac: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestShadow(t *testing.T) {
	denyAdmin := map[string]*rbacv3.Policy{"ns[ns1]-policy[deny-admin]-rule[0]": pol([]*rbacv3.Permission{pathPerm("prefix", "/admin")}, []*rbacv3.Principal{anyPrinc})}
	dryDenyGet := map[string]*rbacv3.Policy{"ns[ns1]-policy[dry-deny-get]-rule[0]": pol([]*rbacv3.Permission{methodPerm("GET")}, []*rbacv3.Principal{anyPrinc})}
	allowAll := map[string]*rbacv3.Policy{"ns[ns1]-policy[allow-all]-rule[0]": pol([]*rbacv3.Permission{anyPerm}, []*rbacv3.Principal{anyPrinc})}
	dryAllowSleep := map[string]*rbacv3.Policy{"ns[ns1]-policy[dry-allow-sleep]-rule[0]": pol([]*rbacv3.Permission{anyPerm},
		[]*rbacv3.Principal{principal("cluster.local/ns/client/sa/sleep")})}
	shadowDeny := func(policy string) Shadow {
		return Shadow{Prefix: "istio_dry_run_deny_", Allowed: policy == "", Policy: policy}
	}
	shadowAllow := func(policy string) Shadow {
		return Shadow{Prefix: "istio_dry_run_allow_", Allowed: policy != "", Policy: policy}
	}

	tests := []struct {
		name    string
		filters map[string]*anypb.Any
		attrs   *Attributes
		allowed bool
		policy  string
		shadow  []Shadow
	}{
		{name: "dry-run DENY matches: shadow denied, request allowed",
			filters: map[string]*anypb.Any{KeyDeny: withShadow(t, rbacv3.RBAC_DENY, denyAdmin, dryDenyGet)},
			attrs:   req("GET", "/api", other, 9080), allowed: true,
			shadow: []Shadow{shadowDeny("ns[ns1]-policy[dry-deny-get]-rule[0]")}},
		{name: "dry-run DENY does not match: shadow allowed",
			filters: map[string]*anypb.Any{KeyDeny: withShadow(t, rbacv3.RBAC_DENY, denyAdmin, dryDenyGet)},
			attrs:   req("POST", "/api", other, 9080), allowed: true,
			shadow: []Shadow{shadowDeny("")}},
		{name: "enforced DENY still denies; the shadow engine ran first",
			filters: map[string]*anypb.Any{KeyDeny: withShadow(t, rbacv3.RBAC_DENY, denyAdmin, dryDenyGet),
				KeyAllow: withShadow(t, rbacv3.RBAC_ALLOW, allowAll, dryAllowSleep)},
			attrs: req("GET", "/admin", sleep, 9080), policy: "ns[ns1]-policy[deny-admin]-rule[0]",
			shadow: []Shadow{shadowDeny("ns[ns1]-policy[dry-deny-get]-rule[0]")}},
		{name: "dry-run ALLOW does not match: shadow denied, request allowed by the enforced ALLOW",
			filters: map[string]*anypb.Any{KeyAllow: withShadow(t, rbacv3.RBAC_ALLOW, allowAll, dryAllowSleep)},
			attrs:   req("GET", "/", other, 9080), allowed: true, policy: "ns[ns1]-policy[allow-all]-rule[0]",
			shadow: []Shadow{shadowAllow("")}},
		{name: "dry-run ALLOW matches: shadow allowed",
			filters: map[string]*anypb.Any{KeyAllow: withShadow(t, rbacv3.RBAC_ALLOW, allowAll, dryAllowSleep)},
			attrs:   req("GET", "/", sleep, 9080), allowed: true, policy: "ns[ns1]-policy[allow-all]-rule[0]",
			shadow: []Shadow{shadowAllow("ns[ns1]-policy[dry-allow-sleep]-rule[0]")}},
		{name: "dry-run ALLOW alone enforces nothing (Envoy: no rules, no enforcement)",
			filters: map[string]*anypb.Any{KeyAllow: withShadow(t, rbacv3.RBAC_ALLOW, nil, dryAllowSleep)},
			attrs:   req("GET", "/", other, 9080), allowed: true,
			shadow: []Shadow{shadowAllow("")}},
		{name: "both filters report, DENY's first",
			filters: map[string]*anypb.Any{KeyDeny: withShadow(t, rbacv3.RBAC_DENY, denyAdmin, dryDenyGet),
				KeyAllow: withShadow(t, rbacv3.RBAC_ALLOW, allowAll, dryAllowSleep)},
			attrs: req("GET", "/", sleep, 9080), allowed: true, policy: "ns[ns1]-policy[allow-all]-rule[0]",
			shadow: []Shadow{shadowDeny("ns[ns1]-policy[dry-deny-get]-rule[0]"), shadowAllow("ns[ns1]-policy[dry-allow-sleep]-rule[0]")}},
		{name: "over TCP a dry-run ALLOW needing HTTP does not match",
			filters: map[string]*anypb.Any{KeyAllow: withShadow(t, rbacv3.RBAC_ALLOW, allowAll,
				map[string]*rbacv3.Policy{"get-only": pol([]*rbacv3.Permission{methodPerm("GET")}, []*rbacv3.Principal{anyPrinc})})},
			attrs: tcp(sleep, 9080), allowed: true, policy: "ns[ns1]-policy[allow-all]-rule[0]",
			shadow: []Shadow{shadowAllow("")}},
		{name: "no shadow rules, no shadow result",
			filters: map[string]*anypb.Any{KeyDeny: rules(t, rbacv3.RBAC_DENY, denyAdmin)},
			attrs:   req("GET", "/", sleep, 9080), allowed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Compile(tt.filters)
			if err != nil {
				t.Fatal(err)
			}
			d := e.Evaluate(tt.attrs)
			if d.Allowed != tt.allowed || d.Policy != tt.policy {
				t.Errorf("decision allowed=%v policy=%q, want allowed=%v policy=%q", d.Allowed, d.Policy, tt.allowed, tt.policy)
			}
			if !reflect.DeepEqual(d.Shadow, tt.shadow) {
				t.Errorf("shadow %+v, want %+v", d.Shadow, tt.shadow)
			}
		})
	}
}

func TestShadowRejects(t *testing.T) {
	bad := map[string]*rbacv3.Policy{"p": pol([]*rbacv3.Permission{pathPerm("regex", "(")}, []*rbacv3.Principal{anyPrinc})}
	for name, filters := range map[string]map[string]*anypb.Any{
		"shadow action differs from the filter's": {KeyDeny: withShadow(t, rbacv3.RBAC_ALLOW, nil, map[string]*rbacv3.Policy{})},
		"bad shadow regex":                        {KeyAllow: withShadow(t, rbacv3.RBAC_ALLOW, nil, bad)},
		"shadow rules under audit":                {KeyAudit: withShadow(t, rbacv3.RBAC_LOG, nil, map[string]*rbacv3.Policy{})},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Compile(filters); err == nil {
				t.Error("compiled, want an error")
			}
		})
	}
	if got := (Shadow{Allowed: true}).Result() + "," + (Shadow{}).Result(); got != "allowed,denied" {
		t.Errorf("Result: %s", got)
	}
}
