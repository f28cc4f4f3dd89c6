package l7

// The status istiod writes on an HTTPRoute for its Service parents (mesh routes), from
// pilot/pkg/config/kube/gateway/conditions.go.

import (
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ControllerName is the controller istiod names in the status of mesh routes (its default
// PILOT_GATEWAY_API_CONTROLLER_NAME).
const ControllerName gatewayv1.GatewayController = "istio.io/gateway-controller"

// Istio's ResolvedWaypoints condition, reported on Service parents when ambient is enabled.
const (
	ConditionResolvedWaypoints gatewayv1.RouteConditionType   = "ResolvedWaypoints"
	ReasonResolvedWaypoints    gatewayv1.RouteConditionReason = "ResolvedWaypoints"
	msgWaypointsResolved                                      = "All waypoints resolved"
	msgMissingUseWaypoint                                     = "istio.io/use-waypoint label missing from parent and parent namespace; in ambient mode, route will not be respected"
	msgParentNotFound                                         = "parent not found"
)

// HTTPRouteStatus computes the parent statuses of r for its Service parentRefs (others belong
// to other controllers), in parentRef order, repeated references once. services are every
// Service of the cluster (for parents, backendRefs and mirrors); domainSuffix is that of
// backend hostnames ("" is cluster.local).
//
// Accepted is False with NoMatchingParent for a Service that does not exist, or with
// UnsupportedValue for a match, filter or timeout that cannot be used (a Gateway API reason
// istiod does not give); ResolvedRefs is False with the reason of the first unresolved
// backend (BackendNotFound, InvalidKind) or unsupported filter (InvalidFilter), the messages
// joined; ResolvedWaypoints is always True, its message saying whether the Service has a
// waypoint. Conditions carry the route's generation and no transition time: merge them with
// meta.SetStatusCondition, which sets it.
func HTTPRouteStatus(r *gatewayv1.HTTPRoute, services map[types.NamespacedName]Service, domainSuffix string) []gatewayv1.RouteParentStatus {
	in := Input{Services: services, DomainSuffix: domainSuffix}
	var out []gatewayv1.RouteParentStatus
	seen := map[string]bool{}
	for _, p := range r.Spec.ParentRefs {
		key, ok := serviceParent(p, r.Namespace)
		if !ok {
			continue
		}
		var port int32
		if p.Port != nil {
			port = int32(*p.Port)
		}
		id := key.String() + "|" + string(ptrOr(p.SectionName)) + "|" + strconv.Itoa(int(port))
		if seen[id] {
			continue
		}
		seen[id] = true
		_, issues := routeEntries(in, r, port)
		svc, found := in.lookup(key)
		cond := func(t gatewayv1.RouteConditionType, reason gatewayv1.RouteConditionReason, msg string) metav1.Condition {
			return metav1.Condition{Type: string(t), Status: metav1.ConditionTrue, Reason: string(reason), Message: msg, ObservedGeneration: r.Generation}
		}
		accepted := cond(gatewayv1.RouteConditionAccepted, gatewayv1.RouteReasonAccepted, "Route was valid")
		resolved := cond(gatewayv1.RouteConditionResolvedRefs, gatewayv1.RouteReasonResolvedRefs, "All references resolved")
		waypoint := cond(ConditionResolvedWaypoints, ReasonResolvedWaypoints, msgWaypointsResolved)
		failWith(&accepted, issues, gatewayv1.RouteConditionAccepted)
		failWith(&resolved, issues, gatewayv1.RouteConditionResolvedRefs)
		switch {
		case !found:
			accepted.Status, accepted.Reason = metav1.ConditionFalse, string(gatewayv1.RouteReasonNoMatchingParent)
			accepted.Message = "parent service: \"" + key.Name + "\" not found"
			waypoint.Message = msgParentNotFound
		case svc.Waypoint == (types.NamespacedName{}):
			waypoint.Message = msgMissingUseWaypoint
		}
		out = append(out, gatewayv1.RouteParentStatus{
			ParentRef:      p,
			ControllerName: ControllerName,
			Conditions:     []metav1.Condition{accepted, resolved, waypoint},
		})
	}
	return out
}

// failWith sets c False with the reason of the first issue of its type and every message.
func failWith(c *metav1.Condition, issues []issue, t gatewayv1.RouteConditionType) {
	var msgs []string
	seen := map[string]bool{}
	for _, i := range issues {
		if i.cond != t || seen[i.msg] {
			continue
		}
		seen[i.msg] = true
		if len(msgs) == 0 {
			c.Status, c.Reason = metav1.ConditionFalse, string(i.reason)
		}
		msgs = append(msgs, i.msg)
	}
	if len(msgs) > 0 {
		c.Message = strings.Join(msgs, "; ")
	}
}

func ptrOr[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
