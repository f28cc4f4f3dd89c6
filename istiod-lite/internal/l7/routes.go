package l7

// The RouteConfiguration of a Service bound to the waypoint: a virtual host per port with the
// routes of every HTTPRoute attached to it, in Gateway API precedence order.

import (
	"fmt"
	"google.golang.org/protobuf/types/known/durationpb"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// DefaultRouteName names the route of a port without HTTPRoutes.
const DefaultRouteName = "default"

// router translates the HTTPRoutes of one waypoint and collects their issues.
type router struct {
	in     Input
	issues map[types.NamespacedName]map[string]issue
}

func newRouter(in Input) *router {
	return &router{in: in, issues: map[types.NamespacedName]map[string]issue{}}
}

// serviceConfig builds the RouteConfiguration of svc; perFilter goes on every virtual host.
func (rt *router) serviceConfig(svc Service, perFilter map[string]*anypb.Any) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: ServiceResourceName(svc)}
	for _, port := range svc.Ports {
		var entries []entry
		for _, r := range rt.in.HTTPRoutes {
			if !rt.attached(r, svc, port) {
				continue
			}
			es, issues := routeEntries(rt.in, r, port)
			entries = append(entries, es...)
			rt.record(r, issues)
		}
		sortEntries(entries)
		vh := &routev3.VirtualHost{
			Name:                 svc.Hostname + ":" + strconv.Itoa(int(port)),
			Domains:              domains(svc, port),
			TypedPerFilterConfig: perFilter,
		}
		for _, e := range entries {
			vh.Routes = append(vh.Routes, e.route)
		}
		if len(vh.Routes) == 0 {
			vh.Routes = []*routev3.Route{defaultRoute(ClusterName(svc.Hostname, port))}
		}
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	return rc
}

// attached reports whether r applies to svc on port: a parentRef names the Service (kind
// Service of the core group; namespace defaults to the route's), without port or with this
// one, and r is in the Service's namespace or the waypoint's (istiod's waypoint takes no
// consumer routes from other namespaces).
func (rt *router) attached(r *gatewayv1.HTTPRoute, svc Service, port int32) bool {
	if r.Namespace != svc.Namespace && r.Namespace != rt.in.Gateway.Namespace {
		return false
	}
	for _, p := range r.Spec.ParentRefs {
		key, ok := serviceParent(p, r.Namespace)
		if !ok || key != svc.key() {
			continue
		}
		if p.Port == nil || int32(*p.Port) == port {
			return true
		}
	}
	return false
}

// serviceParent returns the Service a parentRef names, if it names one.
func serviceParent(p gatewayv1.ParentReference, routeNS string) (types.NamespacedName, bool) {
	if p.Kind == nil || *p.Kind != "Service" {
		return types.NamespacedName{}, false
	}
	if p.Group != nil && *p.Group != "" && *p.Group != "core" {
		return types.NamespacedName{}, false
	}
	ns := routeNS
	if p.Namespace != nil {
		ns = string(*p.Namespace)
	}
	return types.NamespacedName{Namespace: ns, Name: string(p.Name)}, true
}

func (rt *router) record(r *gatewayv1.HTTPRoute, issues []issue) {
	key := types.NamespacedName{Namespace: r.Namespace, Name: r.Name}
	for _, i := range issues {
		if rt.issues[key] == nil {
			rt.issues[key] = map[string]issue{}
		}
		rt.issues[key][i.Error()] = i
	}
}

func (rt *router) errors() []ObjectError {
	var out []ObjectError
	for key, issues := range rt.issues {
		for _, i := range issues {
			out = append(out, ObjectError{Kind: KindHTTPRoute, NamespacedName: key, Err: i})
		}
	}
	return out
}

// domains are the Service's hostname with and without the port, then, for a cluster-local
// hostname, its short forms <name>.<namespace>.svc, <name>.<namespace> and <name>, each
// with and without the port.
func domains(svc Service, port int32) []string {
	p := ":" + strconv.Itoa(int(port))
	out := []string{svc.Hostname, svc.Hostname + p}
	prefix := fmt.Sprintf("%s.%s.svc.", svc.Name, svc.Namespace)
	if !strings.HasPrefix(svc.Hostname, prefix) {
		return out
	}
	for _, short := range []string{svc.Name + "." + svc.Namespace + ".svc", svc.Name + "." + svc.Namespace, svc.Name} {
		out = append(out, short, short+p)
	}
	return out
}

func defaultRoute(cluster string) *routev3.Route {
	return &routev3.Route{
		Name:  DefaultRouteName,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          durationpb.New(0), // no timeout, as istiod's default route
		}},
	}
}

// gatewayConfig builds gateway/<ns>/<name>: one virtual host "*" with one route to the
// original destination, carrying the Gateway-targeted policies.
func gatewayConfig(gw types.NamespacedName, perFilter map[string]*anypb.Any) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: GatewayResourceName(gw),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:                 "*",
			Domains:              []string{"*"},
			Routes:               []*routev3.Route{defaultRoute(OriginalDstCluster)},
			TypedPerFilterConfig: perFilter,
		}},
	}
}
