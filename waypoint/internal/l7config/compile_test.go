package l7config

import (
	"net/http"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

const v1, v2 = "outbound|9080||v1.ns.svc.cluster.local", "outbound|9080||v2.ns.svc.cluster.local"

func fwd(c string) *routev3.Route_Route {
	return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}}
}

func rc(routes ...*routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: "ns/svc", VirtualHosts: []*routev3.VirtualHost{{Name: "svc.ns.svc.cluster.local:9080", Routes: routes}}}
}

func hdr(name, v string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}}
}

func TestRouteMatching(t *testing.T) {
	routes := []*routev3.Route{
		{Name: "exact", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/exact"}}, Action: fwd(v1)},
		{Name: "get-api", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api"},
			Headers: []*routev3.HeaderMatcher{hdr(":method", "GET")}}, Action: fwd(v1)},
		{Name: "v2-header", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{hdr("x-version", "v2")}}, Action: fwd(v2)},
		{Name: "regex", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/items/[0-9]+"}}}, Action: fwd(v1)},
		{Name: "query", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/q"},
			QueryParameters: []*routev3.QueryParameterMatcher{{Name: "debug", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{
				StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "1"}}}}}}, Action: fwd(v1)},
		{Name: "sep-prefix", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/sep"}}, Action: fwd(v1)},
		{Name: "case-insensitive", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/CI"}, CaseSensitive: wrapperspb.Bool(false)}, Action: fwd(v1)},
		// precedence as given: this catch-all is after the specific ones, and a later
		// more specific route never wins over it
		{Name: "catch-all", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: fwd(v1)},
		{Name: "shadowed", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/shadowed"}}, Action: fwd(v2)},
	}
	tbl, err := Compile(rc(routes...))
	if err != nil {
		t.Fatal(err)
	}
	vh := tbl.VirtualHost(9080)
	if vh == nil || tbl.VirtualHost(9081) != nil {
		t.Fatal("virtual host by port")
	}
	tests := []struct {
		method, path string
		header       []string
		want         string
	}{
		{"GET", "/exact", nil, "exact"},
		{"GET", "/exact/more", nil, "catch-all"},
		{"GET", "/exact?x=1", nil, "exact"},
		{"GET", "/api/x", nil, "get-api"},
		{"POST", "/api/x", nil, "catch-all"},
		{"POST", "/api/x", []string{"X-Version", "v2"}, "v2-header"},
		{"GET", "/api/x", []string{"X-Version", "v2"}, "get-api"},
		{"GET", "/items/42", nil, "regex"},
		{"GET", "/items/42x", nil, "catch-all"},
		{"GET", "/q?debug=1", nil, "query"},
		{"GET", "/q?debug=2", nil, "catch-all"},
		{"GET", "/q", nil, "catch-all"},
		{"GET", "/sep", nil, "sep-prefix"},
		{"GET", "/sep/x", nil, "sep-prefix"},
		{"GET", "/separate", nil, "catch-all"},
		{"GET", "/ci/x", nil, "case-insensitive"},
		{"GET", "/shadowed", nil, "catch-all"},
	}
	for _, tt := range tests {
		h := http.Header{}
		for i := 0; i+1 < len(tt.header); i += 2 {
			h.Set(tt.header[i], tt.header[i+1])
		}
		r := vh.Route(&match.Request{Method: tt.method, Path: tt.path, Host: "svc", Header: h})
		if r == nil || r.Name != tt.want {
			t.Errorf("%s %s %v: got %v, want %s", tt.method, tt.path, tt.header, r, tt.want)
		}
	}
}

func TestCompileActions(t *testing.T) {
	tbl, err := Compile(rc(&routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
				{Name: v1, Weight: wrapperspb.UInt32(80)}, {Name: v2, Weight: wrapperspb.UInt32(20)}}}},
			Timeout:               durationpb.New(2e9),
			RetryPolicy:           &routev3.RetryPolicy{PerTryTimeout: durationpb.New(1e9)},
			RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: v2}},
			RegexRewrite:          &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/v1/(.*)$"}, Substitution: `/v2/\1`},
		}}}))
	if err != nil {
		t.Fatal(err)
	}
	f := tbl.VirtualHost(9080).Routes[0].Forward
	if f.TotalWeight != 100 || len(f.Clusters) != 2 || f.Clusters[0].Cluster.Hostname != "v1.ns.svc.cluster.local" || f.Clusters[1].Weight != 20 {
		t.Errorf("clusters %+v total %d", f.Clusters, f.TotalWeight)
	}
	if f.Timeout.Seconds() != 2 || f.PerTryTimeout.Seconds() != 1 || len(f.Mirrors) != 1 || f.Mirrors[0].Percent != 100 {
		t.Errorf("timeouts %s %s mirrors %+v", f.Timeout, f.PerTryTimeout, f.Mirrors)
	}
	if got := f.RegexRewrite.ReplaceAllString("/v1/a/b", f.RegexSubst); got != "/v2/a/b" {
		t.Errorf("regex rewrite: %s", got)
	}
}

// TestNACK: every configuration the waypoint cannot use is an error naming the problem.
func TestNACK(t *testing.T) {
	prefix := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	tests := []struct {
		name  string
		route *routev3.Route
		want  string
	}{
		{"bad regex", &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(["}}}, Action: fwd(v1)}, "bad regex"},
		{"bad header regex", &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: &matcherv3.RegexMatcher{Regex: "*"}}}}}, Action: fwd(v1)}, "bad regex"},
		{"unknown match", &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}}, Action: fwd(v1)}, "unsupported path specifier"},
		{"unknown match field", &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}}, Action: fwd(v1)}, "unsupported match field"},
		{"no action", &routev3.Route{Match: prefix}, "no action"},
		{"unknown action", &routev3.Route{Match: prefix, Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}}}, "unsupported action"},
		{"unknown cluster form", &routev3.Route{Match: prefix, Action: fwd("reviews")}, "want outbound"},
		{"subset cluster", &routev3.Route{Match: prefix, Action: fwd("outbound|9080|v1|reviews.ns.svc.cluster.local")}, "subsets"},
		{"cluster header", &routev3.Route{Match: prefix, Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_ClusterHeader{ClusterHeader: "x"}}}}, "unsupported cluster specifier"},
		{"zero weights", &routev3.Route{Match: prefix, Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: v1, Weight: wrapperspb.UInt32(0)}}}}}}}, "total weight"},
		{"file body", &routev3.Route{Match: prefix, Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
			Body: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/passwd"}}}}}, "inline only"},
		{"bad status", &routev3.Route{Match: prefix, Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 99}}}, "status"},
		{"bad mirror", &routev3.Route{Match: prefix, Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: v1},
			RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "x"}}}}}, "mirror 0"},
		{"pseudo header add", &routev3.Route{Match: prefix, Action: fwd(v1), RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: ":path", Value: "/"}}}}, "cannot add header"},
		{"bad rbac", &routev3.Route{Match: prefix, Action: fwd(v1)}, "authorization"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := rc(tt.route)
			if tt.name == "bad rbac" {
				cfg.VirtualHosts[0].TypedPerFilterConfig = map[string]*anypb.Any{"istio.authz.deny": {TypeUrl: "type.googleapis.com/x", Value: []byte{0xff}}}
			}
			s := NewStore()
			err := s.Apply(map[string]*routev3.RouteConfiguration{"ns/svc": cfg}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "route configuration ns/svc") {
				t.Fatalf("got %v, want an error naming ns/svc and %q", err, tt.want)
			}
			if len(s.Current()) != 0 {
				t.Error("a rejected configuration was installed")
			}
		})
	}
}

// TestStoreKeepsLastGood: a bad response changes nothing; a good one replaces and removes.
func TestStoreKeepsLastGood(t *testing.T) {
	s := NewStore()
	good := rc(&routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: fwd(v1)})
	if err := s.Apply(map[string]*routev3.RouteConfiguration{"ns/a": good, "ns/b": good}, nil); err != nil {
		t.Fatal(err)
	}
	bad := rc(&routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: fwd("nope")})
	before := s.Current()
	if err := s.Apply(map[string]*routev3.RouteConfiguration{"ns/a": bad, "ns/c": good}, []string{"ns/b"}); err == nil {
		t.Fatal("bad configuration accepted")
	}
	if cur := s.Current(); len(cur) != 2 || cur["ns/a"] != before["ns/a"] || cur["ns/b"] == nil {
		t.Fatalf("state changed after a NACK: %v", cur)
	}
	if err := s.Apply(map[string]*routev3.RouteConfiguration{"ns/c": good}, []string{"ns/b"}); err != nil {
		t.Fatal(err)
	}
	if cur := s.Current(); len(cur) != 2 || cur["ns/b"] != nil || cur["ns/c"] == nil {
		t.Fatalf("got %v", cur)
	}
}

func TestGatewayVirtualHost(t *testing.T) {
	tbl, err := Compile(&routev3.RouteConfiguration{Name: "gateway/ns/waypoint", VirtualHosts: []*routev3.VirtualHost{{
		Name: "*", Domains: []string{"*"}, Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: fwd(OriginalDst)}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	vh := tbl.VirtualHost(1234)
	if vh == nil || !vh.Routes[0].Forward.Clusters[0].Cluster.OriginalDst {
		t.Fatalf("gateway virtual host: %+v", vh)
	}
}
