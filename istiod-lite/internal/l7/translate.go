package l7

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const (
	defaultTrustDomain  = "cluster.local"
	defaultDomainSuffix = "cluster.local"
	// gatewayResourcePrefix starts the name of the Gateway's own RouteConfiguration.
	gatewayResourcePrefix = "gateway/"
	// OriginalDstCluster is the cluster of the Gateway's resource: the destination the client
	// dialled (workload-addressed traffic).
	OriginalDstCluster = "original-dst"
)

// Service is a Kubernetes Service as the translation needs it.
type Service struct {
	Namespace string
	Name      string
	// Hostname is the workload API hostname, <name>.<namespace>.svc.<domain suffix>.
	Hostname string
	// Ports are the Service ports; each gets a virtual host.
	Ports []int32
	// Waypoint is the waypoint the Service uses (istio.io/use-waypoint on it or its
	// namespace); zero if none. Only HTTPRouteStatus reads it.
	Waypoint types.NamespacedName
}

func (s Service) key() types.NamespacedName {
	return types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
}

// Input is everything one waypoint's L7 configuration depends on.
type Input struct {
	// Gateway is the waypoint (a Gateway of class istio-waypoint).
	Gateway types.NamespacedName
	// Bound are the Services whose workload API waypoint is Gateway.
	Bound []Service
	// Services are every Service of the cluster, for backendRefs and mirrors. Bound Services
	// are found even if missing here. If nil, only Bound Services resolve.
	Services map[types.NamespacedName]Service
	// HTTPRoutes are all HTTPRoutes; those with a Service parentRef to a Bound Service, in
	// the Service's namespace or the waypoint's, apply (as in istiod's waypoint).
	HTTPRoutes []*gatewayv1.HTTPRoute
	// AuthorizationPolicies are all AuthorizationPolicies; those whose targetRefs name a
	// Bound Service or the Gateway apply.
	AuthorizationPolicies []*securityclient.AuthorizationPolicy
	// TrustDomain is the mesh trust domain; principals of trust domain cluster.local in
	// policies are rewritten to it, as istiod does. If empty, cluster.local.
	TrustDomain string
	// DomainSuffix is the cluster DNS suffix of backendRef hostnames. If empty, cluster.local.
	DomainSuffix string
}

func (in Input) trustDomain() string {
	if in.TrustDomain == "" {
		return defaultTrustDomain
	}
	return in.TrustDomain
}

func (in Input) domainSuffix() string {
	if in.DomainSuffix == "" {
		return defaultDomainSuffix
	}
	return in.DomainSuffix
}

// lookup finds a Service by namespace and name among Services, then Bound.
func (in Input) lookup(key types.NamespacedName) (Service, bool) {
	if s, ok := in.Services[key]; ok {
		return s, true
	}
	for _, s := range in.Bound {
		if s.key() == key {
			return s, true
		}
	}
	return Service{}, false
}

// Kinds named by ObjectError.
const (
	KindHTTPRoute           = "HTTPRoute"
	KindAuthorizationPolicy = "AuthorizationPolicy"
)

// ObjectError is a problem with one input object. The object was still translated, as
// documented where the error is made (a route rule answers 500, a policy rule fails closed).
type ObjectError struct {
	Kind string
	types.NamespacedName
	Err error
}

func (e ObjectError) Error() string {
	return fmt.Sprintf("%s %s: %v", e.Kind, e.NamespacedName, e.Err)
}

func (e ObjectError) Unwrap() error { return e.Err }

// Output is a waypoint's L7 configuration.
type Output struct {
	// Resources are the RouteConfigurations by name: <namespace>/<hostname> for each Bound
	// Service, and gateway/<namespace>/<name> for the Gateway.
	Resources map[string]*routev3.RouteConfiguration
	// Errors are the problems of the objects that apply to this waypoint, sorted by kind,
	// namespace, name and message.
	Errors []ObjectError
}

// GatewayResourceName is the name of the Gateway's own RouteConfiguration.
func GatewayResourceName(gw types.NamespacedName) string {
	return gatewayResourcePrefix + gw.Namespace + "/" + gw.Name
}

// ServiceResourceName is the name of a Service's RouteConfiguration, its workload API key.
func ServiceResourceName(s Service) string {
	return s.Namespace + "/" + s.Hostname
}

// Translate builds the RouteConfigurations of one waypoint.
func Translate(in Input) Output {
	out := Output{Resources: map[string]*routev3.RouteConfiguration{}}
	authz := newAuthorizer(in)
	routes := newRouter(in)
	for _, svc := range in.Bound {
		out.Resources[ServiceResourceName(svc)] = routes.serviceConfig(svc, authz.forService(svc))
	}
	out.Resources[GatewayResourceName(in.Gateway)] = gatewayConfig(in.Gateway, authz.forGateway())
	out.Errors = append(routes.errors(), authz.errors()...)
	slices.SortFunc(out.Errors, func(a, b ObjectError) int {
		return cmp.Or(
			strings.Compare(a.Kind, b.Kind),
			strings.Compare(a.Namespace, b.Namespace),
			strings.Compare(a.Name, b.Name),
			strings.Compare(a.Err.Error(), b.Err.Error()),
		)
	})
	return out
}
