package authz

import (
	"net/http"
	"net/netip"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

func rules(t *testing.T, action rbacv3.RBAC_Action, ps map[string]*rbacv3.Policy) *anypb.Any {
	t.Helper()
	a, err := anypb.New(&rbachttpv3.RBACPerRoute{Rbac: &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: action, Policies: ps}}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func sm(kind, v string) *matcherv3.StringMatcher {
	switch kind {
	case "prefix":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v}}
	case "regex":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: v}}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

var (
	anyPerm  = &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
	anyPrinc = &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
)

func pathPerm(kind, v string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: sm(kind, v)}}}}
}

func methodPerm(m string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{Name: ":method",
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm("exact", m)}}}}
}

func headerPerm(name, v string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{Name: name,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm("exact", v)}}}}
}

func portPerm(p uint32) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: p}}
}

func andP(ps ...*rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func notPerm(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

// principal as istiod translates `principals: [x]` for a waypoint (filter state).
func principal(s string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
		Key: PeerPrincipalKey, Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: sm("exact", "spiffe://"+s)}}}}
}

// namespace as istiod translates `namespaces: [ns]` (authenticated principal regex).
func namespace(ns string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
		PrincipalName: sm("regex", ".*/ns/"+ns+"/.*")}}}
}

func sourceIP(cidr string, bits uint32) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: &corev3.CidrRange{AddressPrefix: cidr, PrefixLen: wrapperspb.UInt32(bits)}}}
}

func pol(perms []*rbacv3.Permission, princs []*rbacv3.Principal) *rbacv3.Policy {
	return &rbacv3.Policy{Permissions: perms, Principals: princs}
}

func req(method, path, principal string, port uint16, hdr ...string) *Attributes {
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	return &Attributes{HTTP: true, Request: match.Request{Method: method, Path: path, Host: "svc", Header: h},
		Principal: principal, SourceIP: netip.MustParseAddr("10.0.0.5"), DestinationPort: port}
}

func tcp(principal string, port uint16) *Attributes {
	return &Attributes{Principal: principal, SourceIP: netip.MustParseAddr("10.0.0.5"), DestinationPort: port}
}

const (
	sleep = "spiffe://cluster.local/ns/client/sa/sleep"
	other = "spiffe://cluster.local/ns/other/sa/bad"
)

func TestEvaluate(t *testing.T) {
	denyAdmin := map[string]*rbacv3.Policy{"deny-admin": pol([]*rbacv3.Permission{pathPerm("prefix", "/admin")}, []*rbacv3.Principal{anyPrinc})}
	allowSleepGet := map[string]*rbacv3.Policy{"allow-sleep-get": pol([]*rbacv3.Permission{methodPerm("GET")}, []*rbacv3.Principal{principal("cluster.local/ns/client/sa/sleep")})}
	allowClientNS := map[string]*rbacv3.Policy{"allow-client-ns": pol([]*rbacv3.Permission{anyPerm}, []*rbacv3.Principal{namespace("client")})}
	allowPort := map[string]*rbacv3.Policy{"allow-9080": pol([]*rbacv3.Permission{portPerm(9080)}, []*rbacv3.Principal{anyPrinc})}
	denyPostOn9080 := map[string]*rbacv3.Policy{"deny-post": pol([]*rbacv3.Permission{andP(portPerm(9080), methodPerm("POST"))}, []*rbacv3.Principal{anyPrinc})}
	allowHeader := map[string]*rbacv3.Policy{"allow-header": pol([]*rbacv3.Permission{headerPerm("x-token", "ok")}, []*rbacv3.Principal{anyPrinc})}
	allowNotPath := map[string]*rbacv3.Policy{"allow-not-private": pol([]*rbacv3.Permission{notPerm(pathPerm("prefix", "/private"))}, []*rbacv3.Principal{anyPrinc})}
	denyIP := map[string]*rbacv3.Policy{"deny-ip": pol([]*rbacv3.Permission{anyPerm}, []*rbacv3.Principal{sourceIP("10.0.0.0", 24)})}
	audit := map[string]*rbacv3.Policy{"audit-all": pol([]*rbacv3.Permission{anyPerm}, []*rbacv3.Principal{anyPrinc})}

	tests := []struct {
		name             string
		deny, allow, aud map[string]*rbacv3.Policy
		attrs            *Attributes
		allowed          bool
		policy           string
		audited          []string
	}{
		{name: "no policy allows", attrs: req("GET", "/", other, 9080), allowed: true},
		{name: "deny on path", deny: denyAdmin, attrs: req("GET", "/admin/x?y=1", sleep, 9080), policy: "deny-admin"},
		{name: "deny does not match other path", deny: denyAdmin, attrs: req("GET", "/api", sleep, 9080), allowed: true},
		{name: "deny wins over allow", deny: denyAdmin, allow: allowClientNS, attrs: req("GET", "/admin", sleep, 9080), policy: "deny-admin"},
		{name: "allow by principal and method", allow: allowSleepGet, attrs: req("GET", "/", sleep, 9080), allowed: true, policy: "allow-sleep-get"},
		{name: "allow: wrong method", allow: allowSleepGet, attrs: req("POST", "/", sleep, 9080)},
		{name: "allow: wrong principal", allow: allowSleepGet, attrs: req("GET", "/", other, 9080)},
		{name: "allow: no principal", allow: allowSleepGet, attrs: req("GET", "/", "", 9080)},
		{name: "allow by namespace", allow: allowClientNS, attrs: req("GET", "/", sleep, 9080), allowed: true, policy: "allow-client-ns"},
		{name: "allow by namespace: other ns", allow: allowClientNS, attrs: req("GET", "/", other, 9080)},
		{name: "allow by port", allow: allowPort, attrs: req("GET", "/", other, 9080), allowed: true, policy: "allow-9080"},
		{name: "allow by port: other port", allow: allowPort, attrs: req("GET", "/", other, 9081)},
		{name: "allow by header", allow: allowHeader, attrs: req("GET", "/", other, 1, "X-Token", "ok"), allowed: true, policy: "allow-header"},
		{name: "allow by header: absent", allow: allowHeader, attrs: req("GET", "/", other, 1)},
		{name: "not_rule", allow: allowNotPath, attrs: req("GET", "/public", other, 1), allowed: true, policy: "allow-not-private"},
		{name: "not_rule excluded", allow: allowNotPath, attrs: req("GET", "/private/x", other, 1)},
		{name: "deny by source ip", deny: denyIP, attrs: req("GET", "/", sleep, 1), policy: "deny-ip"},
		{name: "and rules: both", deny: denyPostOn9080, attrs: req("POST", "/", sleep, 9080), policy: "deny-post"},
		{name: "and rules: one", deny: denyPostOn9080, attrs: req("POST", "/", sleep, 9081), allowed: true},
		{name: "audit only reports", aud: audit, attrs: req("GET", "/", other, 1), allowed: true, audited: []string{"audit-all"}},
		{name: "audit with deny", aud: audit, deny: denyAdmin, attrs: req("GET", "/admin", other, 1), policy: "deny-admin", audited: []string{"audit-all"}},
		{name: "empty allow rules deny all", allow: map[string]*rbacv3.Policy{}, attrs: req("GET", "/", sleep, 1)},
		// Over TCP: an ALLOW that needs HTTP never matches; a DENY ignores its HTTP parts.
		{name: "tcp: http allow never matches", allow: allowSleepGet, attrs: tcp(sleep, 9080)},
		{name: "tcp: l4 allow matches", allow: allowPort, attrs: tcp(other, 9080), allowed: true, policy: "allow-9080"},
		{name: "tcp: l4 allow by namespace", allow: allowClientNS, attrs: tcp(sleep, 1), allowed: true, policy: "allow-client-ns"},
		{name: "tcp: http deny denies broadly", deny: denyAdmin, attrs: tcp(sleep, 1), policy: "deny-admin"},
		{name: "tcp: deny keeps its l4 part", deny: denyPostOn9080, attrs: tcp(sleep, 9081), allowed: true},
		{name: "tcp: deny l4 part matches", deny: denyPostOn9080, attrs: tcp(sleep, 9080), policy: "deny-post"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := map[string]*anypb.Any{}
			if tt.deny != nil {
				cfg[KeyDeny] = rules(t, rbacv3.RBAC_DENY, tt.deny)
			}
			if tt.allow != nil {
				cfg[KeyAllow] = rules(t, rbacv3.RBAC_ALLOW, tt.allow)
			}
			if tt.aud != nil {
				cfg[KeyAudit] = rules(t, rbacv3.RBAC_LOG, tt.aud)
			}
			e, err := Compile(cfg)
			if err != nil {
				t.Fatal(err)
			}
			d := e.Evaluate(tt.attrs)
			if d.Allowed != tt.allowed || d.Policy != tt.policy || !slices.Equal(d.Audit, tt.audited) {
				t.Errorf("got %+v, want allowed %v policy %q audit %v", d, tt.allowed, tt.policy, tt.audited)
			}
		})
	}
}

func TestCompileRejects(t *testing.T) {
	tests := []struct {
		name string
		key  string
		rbac *rbacv3.RBAC
	}{
		{"wrong action", KeyDeny, &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}},
		{"cel condition", KeyAllow, &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{anyPerm},
			Principals: []*rbacv3.Principal{anyPrinc}, Condition: &expr.Expr{}}}}},
		{"unknown filter state", KeyAllow, &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{anyPerm},
			Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{Key: "x",
				Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: sm("exact", "y")}}}}}}}}},
		{"bad regex", KeyAllow, &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{pathPerm("regex", "(")},
			Principals: []*rbacv3.Principal{anyPrinc}}}}},
		{"bad cidr", KeyAllow, &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{anyPerm},
			Principals: []*rbacv3.Principal{sourceIP("not-an-ip", 8)}}}}},
		{"empty permission", KeyAllow, &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {Permissions: []*rbacv3.Permission{{}},
			Principals: []*rbacv3.Principal{anyPrinc}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := anypb.New(&rbachttpv3.RBACPerRoute{Rbac: &rbachttpv3.RBAC{Rules: tt.rbac}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Compile(map[string]*anypb.Any{tt.key: a}); err == nil {
				t.Error("compiled, want an error")
			} else {
				t.Log(err)
			}
		})
	}
}

func TestCompileNothing(t *testing.T) {
	e, err := Compile(map[string]*anypb.Any{"envoy.filters.http.other": {}})
	if err != nil || e != nil {
		t.Fatalf("got %v, %v; want nil engine", e, err)
	}
	if !e.Evaluate(tcp("", 1)).Allowed {
		t.Error("nil engine denied")
	}
}
