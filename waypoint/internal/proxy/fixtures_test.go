package proxy_test

import (
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func service(name, vip string, port uint32, proto workloadapi.AppProtocol) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{
		Name: name, Namespace: "ns1", Hostname: name + ".ns1.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{{Address: ip(vip)}},
		Ports:     []*workloadapi.Port{{ServicePort: port, TargetPort: port + 1000, AppProtocol: proto}},
	}}}
}

func workload(name, ns, sa, addr string, svcs map[string]uint32) *workloadapi.Address {
	ps := map[string]*workloadapi.PortList{}
	for s, port := range svcs {
		ps["ns1/"+s+".ns1.svc.cluster.local"] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: port, TargetPort: port + 1000}}}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: "cluster1//Pod/" + ns + "/" + name, Name: name, Namespace: ns, ServiceAccount: sa, WorkloadName: name,
		Addresses: [][]byte{ip(addr)}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Status: workloadapi.WorkloadStatus_HEALTHY, Services: ps,
	}}}
}

func cluster(name string, port uint32) string {
	return "outbound|" + itoa(port) + "||" + name + ".ns1.svc.cluster.local"
}

func itoa(n uint32) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}

func prefix(p string) *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
}

func toCluster(c string) *routev3.Route_Route {
	return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}}
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func rbacAny(t *testing.T, action rbacv3.RBAC_Action, policies map[string]*rbacv3.Policy) *anypb.Any {
	a, err := anypb.New(&rbachttpv3.RBACPerRoute{Rbac: &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: action, Policies: policies}}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func anyPrincipal() []*rbacv3.Principal {
	return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}
}

func anyPermission() []*rbacv3.Permission {
	return []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}
}

// reviewsRoutes is the route configuration of reviews:9080 for the end-to-end test.
func reviewsRoutes(t *testing.T) *routev3.RouteConfiguration {
	v1, v2, mirror := cluster("reviews-v1", 9080), cluster("reviews-v2", 9080), cluster("mirror", 9080)
	deny := rbacAny(t, rbacv3.RBAC_DENY, map[string]*rbacv3.Policy{
		"ns[ns1]-policy[deny-admin]-rule[0]": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{
				Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/admin"}}}}}}},
			Principals: anyPrincipal(),
		},
	})
	allow := rbacAny(t, rbacv3.RBAC_ALLOW, map[string]*rbacv3.Policy{
		"ns[ns1]-policy[allow-client]-rule[0]": {
			Permissions: anyPermission(),
			Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
				Key: "io.istio.peer_principal",
				Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*/ns/client/.*"}}}},
			}}}},
		},
	})
	routes := []*routev3.Route{
		{Name: "redirect", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/redirect"}},
			Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "example.com",
				PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/moved"}, ResponseCode: routev3.RedirectAction_FOUND}}},
		{Name: "v2-by-header", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api"},
			Headers: []*routev3.HeaderMatcher{{Name: "x-version", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("v2")}}}},
			Action:                 toCluster(v2),
			RequestHeadersToAdd:    []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-routed", Value: "v2"}}},
			ResponseHeadersToAdd:   []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-route", Value: "v2-by-header"}}},
			RequestHeadersToRemove: []string{"x-secret"}},
		{Name: "rewrite", Match: prefix("/old/"), Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: v1}, PrefixRewrite: "/new/",
			HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "rewritten.example"}}}},
		{Name: "mirror", Match: prefix("/mirror"), Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier:      &routev3.RouteAction_Cluster{Cluster: v1},
			RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: mirror}}}}},
		{Name: "slow", Match: prefix("/slow"), Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: v1}, Timeout: durationpb.New(200e6)}}},
		{Name: "direct", Match: prefix("/direct"), Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 418, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "teapot"}}}}},
		{Name: "unresolved", Match: prefix("/gone"), Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier:            &routev3.RouteAction_Cluster{Cluster: "outbound|80||backend.invalid"},
			ClusterNotFoundResponseCode: routev3.RouteAction_INTERNAL_SERVER_ERROR}}},
		{Name: "split", Match: prefix("/"), Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
				Clusters: []*routev3.WeightedCluster_ClusterWeight{
					{Name: v1, Weight: wrapperspb.UInt32(80)}, {Name: v2, Weight: wrapperspb.UInt32(20)}}}}}}},
	}
	return &routev3.RouteConfiguration{Name: "ns1/reviews.ns1.svc.cluster.local", VirtualHosts: []*routev3.VirtualHost{{
		Name:                 "reviews.ns1.svc.cluster.local:9080",
		Domains:              []string{"reviews.ns1.svc.cluster.local", "reviews.ns1.svc.cluster.local:9080", "reviews"},
		Routes:               routes,
		TypedPerFilterConfig: map[string]*anypb.Any{"istio.authz.deny": deny, "istio.authz.allow": allow},
	}}}
}

// defaultRoutes is the configuration of a Service without HTTPRoute: prefix / to itself.
func defaultRoutes(name string, port uint32) *routev3.RouteConfiguration {
	host := name + ".ns1.svc.cluster.local"
	return &routev3.RouteConfiguration{Name: "ns1/" + host, VirtualHosts: []*routev3.VirtualHost{{
		Name: host + ":" + itoa(port), Domains: []string{host},
		Routes: []*routev3.Route{{Match: prefix("/"), Action: toCluster(cluster(name, port))}},
	}}}
}
