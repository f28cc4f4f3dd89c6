package controller

// The waypoints' L7 configuration: envoy.config.route.v3.RouteConfiguration per waypoint
// (waypoint/README.md, "Contract with istiod-lite"), translated by l7.Translate from the
// Services bound to the waypoint (the workload API's binding, recorded as the Services are
// translated), every HTTPRoute and every AuthorizationPolicy, and served per stream to the
// waypoint the stream's identity is entitled to.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/l7"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/translate"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/waypoint"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

// RouteType is the type URL of the waypoints' L7 configuration (Envoy's).
const RouteType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

// Node metadata keys a waypoint sends (waypoint/internal/discovery.Node).
const (
	metaGatewayName = "GATEWAY_NAME"
	metaNamespace   = "NAMESPACE"
	metaPodName     = "NAME"
)

// waypointConfig is one waypoint's L7 configuration and who may have it. Immutable once
// published.
type waypointConfig struct {
	gateway types.NamespacedName
	// serviceAccount is the waypoint's ServiceAccount (in the Gateway's namespace), as the
	// deployer names it: only streams authenticated as it get resources.
	serviceAccount string
	resources      map[string]*xds.Resource
}

// errNotWaypoint: the stream's node does not describe a waypoint.
var errNotWaypoint = errors.New("node metadata has no GATEWAY_NAME: not a waypoint")

// entitled returns the waypoint configuration the stream may have, or why it may have none:
// the node metadata names the Gateway (GATEWAY_NAME, NAMESPACE), the stream is authenticated
// as the ServiceAccount the deployer gives that Gateway's waypoint, in its namespace, and a
// pod-bound token names the pod the metadata names.
func entitled(info *xdsserver.StreamInfo, waypoints map[string]*waypointConfig) (*waypointConfig, error) {
	meta := map[string]string{}
	if info != nil && info.Metadata != nil {
		for _, k := range []string{metaGatewayName, metaNamespace, metaPodName} {
			meta[k] = info.Metadata.GetFields()[k].GetStringValue()
		}
	}
	gw, ns := meta[metaGatewayName], meta[metaNamespace]
	if gw == "" {
		return nil, errNotWaypoint
	}
	if ns == "" {
		return nil, fmt.Errorf("waypoint %s: node metadata has no NAMESPACE", gw)
	}
	var caller caserver.Caller
	switch p := info.Principal.(type) {
	case caserver.Caller:
		caller = p
	case *caserver.Caller:
		if p != nil {
			caller = *p
		}
	}
	if caller.ServiceAccount == "" {
		return nil, fmt.Errorf("waypoint %s/%s: the stream is not authenticated as a ServiceAccount", ns, gw)
	}
	if caller.Namespace != ns {
		return nil, fmt.Errorf("waypoint %s/%s: the stream is authenticated as %s, of another namespace", ns, gw, caller)
	}
	w := waypoints[ns+"/"+gw]
	if w == nil {
		return nil, fmt.Errorf("waypoint %s/%s: no such waypoint Gateway", ns, gw)
	}
	if caller.ServiceAccount != w.serviceAccount {
		return nil, fmt.Errorf("waypoint %s/%s: the stream is authenticated as %s, not as the waypoint's ServiceAccount %s", ns, gw, caller, w.serviceAccount)
	}
	if pod := meta[metaPodName]; caller.PodName != "" && pod != "" && pod != caller.PodName {
		return nil, fmt.Errorf("waypoint %s/%s: node metadata names pod %s, the token pod %s", ns, gw, pod, caller.PodName)
	}
	return w, nil
}

// routeSource serves RouteType: each stream gets the configuration of the waypoint it is
// entitled to, and a stream entitled to none gets nothing (and loses what it had).
type routeSource struct{ c *Controller }

var _ xdsserver.Source = routeSource{}

// Generate implements xdsserver.Source.
func (s routeSource) Generate(ctx context.Context, req *xdsserver.Request) (*xdsserver.Delta, error) {
	select {
	case <-s.c.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	w, err := entitled(req.Stream, s.c.snap.Load().routes)
	if err != nil {
		// Logged loudly once per stream (its first answer) and quietly on each push.
		log := s.c.log.Debug
		if req.Changed == nil {
			log = s.c.log.Warn
		}
		var node string
		var id uint64
		if req.Stream != nil {
			node, id = req.Stream.NodeID, req.Stream.ID
		}
		log("route configuration withheld from xDS stream", "node", node, "stream", id, "reason", err.Error())
		return xdsserver.Diff(nil, req), nil
	}
	return xdsserver.Diff(w.resources, req), nil
}

// l7Service is the Service as the L7 translation sees it: a backend, and bound to w (nil:
// to no waypoint).
func l7Service(svc *corev1.Service, hostname string, w *translate.Waypoint) l7.Service {
	s := l7.Service{Namespace: svc.Namespace, Name: svc.Name, Hostname: hostname}
	for _, p := range svc.Spec.Ports {
		s.Ports = append(s.Ports, p.Port)
	}
	if w != nil {
		s.Waypoint = types.NamespacedName{Namespace: w.Namespace, Name: w.Name}
	}
	return s
}

func l7ServiceEqual(a, b l7.Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Hostname == b.Hostname &&
		a.Waypoint == b.Waypoint && slices.Equal(a.Ports, b.Ports)
}

// setL7Service records (s non-nil) or forgets the Service key for the L7 translation,
// copy-on-write: the map is published in snapshots.
func (x *index) setL7Service(key string, s *l7.Service) {
	ns, name := splitKey(key)
	k := types.NamespacedName{Namespace: ns, Name: name}
	old, had := x.l7services[k]
	if s == nil && !had || s != nil && had && l7ServiceEqual(old, *s) {
		return
	}
	if !x.l7cloned {
		x.l7services, x.l7cloned = maps.Clone(x.l7services), true
	}
	if s == nil {
		delete(x.l7services, k)
	} else {
		x.l7services[k] = *s
	}
	x.l7changed = true
}

// applyL7 retranslates every waypoint's L7 configuration (waypoints are few, and it runs
// only when an HTTPRoute, a policy, a Gateway or a Service as the translation sees it
// changed) and returns the resource names that changed: those whose version changed, and
// every name of a waypoint that appeared, went or changed its ServiceAccount (its streams'
// entitlement changed). problems are the translation's object errors by "waypoint object".
func (x *index) applyL7(c *Controller, aps []*securityclient.AuthorizationPolicy, skip func(object, reason string)) (names []string, problems map[string]string) {
	gws, err := c.gateways.List(labels.Everything())
	if err != nil {
		skip("Gateway lister", err.Error())
	}
	var routes []*gatewayv1.HTTPRoute
	if c.httpRoutes != nil {
		routes, err = c.httpRoutes.List(labels.Everything())
		if err != nil {
			skip("HTTPRoute lister", err.Error())
		}
		sortObjects(routes)
	}
	bound := map[types.NamespacedName][]l7.Service{}
	for _, s := range x.l7services {
		if s.Waypoint != (types.NamespacedName{}) {
			bound[s.Waypoint] = append(bound[s.Waypoint], s)
		}
	}
	next := map[string]*waypointConfig{}
	problems = map[string]string{}
	for _, gw := range gws {
		key := types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}
		if string(gw.Spec.GatewayClassName) != waypoint.ClassName && x.waypoints[key.String()] == nil {
			continue // not a waypoint
		}
		svcs := bound[key]
		slices.SortFunc(svcs, func(a, b l7.Service) int {
			return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
		})
		out := l7.Translate(l7.Input{
			Gateway: key, Bound: svcs, Services: x.l7services, HTTPRoutes: routes, AuthorizationPolicies: aps,
			TrustDomain: c.opts.Translate.TrustDomain, DomainSuffix: c.opts.Translate.DomainSuffix,
		})
		w := &waypointConfig{gateway: key, serviceAccount: waypoint.ServiceAccountName(gw), resources: map[string]*xds.Resource{}}
		for name, rc := range out.Resources {
			r, err := resource(RouteType, name, rc)
			if err != nil {
				skip("RouteConfiguration "+name, err.Error())
				continue
			}
			w.resources[name] = r
		}
		for _, e := range out.Errors {
			object := "waypoint " + key.String() + " " + e.Kind + " " + e.NamespacedName.String()
			if problems[object] != "" {
				problems[object] += "; "
			}
			problems[object] += e.Err.Error()
		}
		next[key.String()] = w
	}
	seen := map[string]struct{}{}
	add := func(ns []string) {
		for _, n := range ns {
			if _, dup := seen[n]; !dup {
				seen[n] = struct{}{}
				names = append(names, n)
			}
		}
	}
	for key := range mergeKeys(x.l7, next) {
		o, n := x.l7[key], next[key]
		if o == nil || n == nil || o.serviceAccount != n.serviceAccount {
			if o != nil {
				add(slices.Collect(maps.Keys(o.resources)))
			}
			if n != nil {
				add(slices.Collect(maps.Keys(n.resources)))
			}
			continue
		}
		add(changedNames(o.resources, n.resources))
	}
	x.l7 = next
	slices.Sort(names)
	return names, problems
}

func mergeKeys[V any](a, b map[string]V) map[string]struct{} {
	out := map[string]struct{}{}
	for k := range a {
		out[k] = struct{}{}
	}
	for k := range b {
		out[k] = struct{}{}
	}
	return out
}

// L7Services returns the Services as the L7 translation sees them in the current snapshot
// (backends, with the waypoint each is bound to), or nil before the first one. Read only.
func (c *Controller) L7Services() map[types.NamespacedName]l7.Service {
	s := c.snap.Load()
	if s == nil {
		return nil
	}
	return s.services
}
