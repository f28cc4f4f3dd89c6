package proxy_test

import (
	"encoding/json"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// logLines returns the JSON log lines with message msg.
func (e *env) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(e.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestDryRun: a dry-run (shadow_rules) DENY policy matching every request of a client
// neither denies nor changes anything; its would-be decision is logged as Envoy's shadow
// engine logs it and written to the access log under Istio's dry-run prefix.
func TestDryRun(t *testing.T) {
	e := setup(t)
	const policy = "ns[ns1]-policy[dry-deny-sleep]-rule[0]"
	rc := reviewsRoutes(t)
	vh := rc.GetVirtualHosts()[0]
	deny := &rbachttpv3.RBACPerRoute{}
	if err := vh.TypedPerFilterConfig["istio.authz.deny"].UnmarshalTo(deny); err != nil {
		t.Fatal(err)
	}
	deny.Rbac.ShadowRulesStatPrefix = "istio_dry_run_deny_"
	deny.Rbac.ShadowRules = &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{
		policy: {Permissions: anyPermission(), Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Authenticated_{
			Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: exact("spiffe://cluster.local/ns/client/sa/sleep")}}}}},
	}}
	a, err := anypb.New(deny)
	if err != nil {
		t.Fatal(err)
	}
	vh.TypedPerFilterConfig["istio.authz.deny"] = a
	e.setRoutes(rc)

	sleep := e.client(id(t, "client", "sleep"), reviews)
	if resp, body := get(t, sleep, "/direct"); resp.StatusCode != 418 || body != "teapot" {
		t.Fatalf("dry-run DENY matched and changed the response: %d %q, want 418 teapot", resp.StatusCode, body)
	}
	other := e.client(id(t, "client", "other"), reviews)
	if resp, _ := get(t, other, "/direct"); resp.StatusCode != 418 {
		t.Fatalf("other client: %d, want 418", resp.StatusCode)
	}
	if resp, _ := get(t, sleep, "/admin"); resp.StatusCode != 403 {
		t.Fatalf("the enforced DENY beside the dry-run one: %d, want 403", resp.StatusCode)
	}

	denied, allowed := e.logLines("shadow denied"), e.logLines("shadow allowed")
	if len(denied) != 2 || len(allowed) != 1 {
		t.Fatalf("%d shadow denied and %d shadow allowed lines, want 2 and 1:\n%s", len(denied), len(allowed), e.logs)
	}
	if denied[0]["policy"] != policy || denied[0]["prefix"] != "istio_dry_run_deny_" || allowed[0]["policy"] != "none" {
		t.Errorf("shadow lines: %v; %v", denied[0], allowed[0])
	}

	var byPath = map[string][]map[string]any{}
	for _, l := range e.logLines("request") {
		byPath[l["path"].(string)] = append(byPath[l["path"].(string)], l)
	}
	direct := byPath["/direct"]
	if len(direct) != 2 {
		t.Fatalf("%d access log lines for /direct, want 2", len(direct))
	}
	for _, l := range direct {
		want := map[string]any{"istio_dry_run_deny_shadow_engine_result": "allowed"}
		if l["source_principal"] == "spiffe://cluster.local/ns/client/sa/sleep" {
			want = map[string]any{"istio_dry_run_deny_shadow_engine_result": "denied", "istio_dry_run_deny_shadow_effective_policy_id": policy}
		} else if _, ok := l["istio_dry_run_deny_shadow_effective_policy_id"]; ok {
			t.Errorf("access log names a policy though none matched: %v", l)
		}
		for k, v := range want {
			if l[k] != v {
				t.Errorf("access log %s = %v, want %v (line %v)", k, l[k], v, l)
			}
		}
		if l["status"] != 418.0 {
			t.Errorf("access log status %v, want 418", l["status"])
		}
	}
}
