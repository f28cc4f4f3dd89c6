package waypoint

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1ac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
)

// ProtocolHBONE is the protocol of a waypoint's listener (Istio's protocol.HBONE).
const ProtocolHBONE gatewayv1.ProtocolType = "HBONE"

// Observed is the cluster state a waypoint Gateway's status depends on.
type Observed struct {
	// Service is the waypoint's Service; nil if it does not exist (yet).
	Service *corev1.Service
	// EndpointSlices are the Service's EndpointSlices.
	EndpointSlices []*discoveryv1.EndpointSlice
}

// Hostname is the Service's DNS name, which istiod reports as the Gateway's address.
func Hostname(gw *gatewayv1.Gateway, clusterDomain string) string {
	return DeploymentName(gw) + "." + gw.Namespace + ".svc." + clusterDomain
}

// GatewayStatus is the status istiod reports for a waypoint Gateway (pilot/pkg/config/kube/gateway
// reportGatewayStatus and ResolveGatewayInstances), as an apply configuration of the fields
// istiod-lite owns:
//
//   - Accepted: True (Accepted).
//   - Programmed: True (Programmed) once the Service has a ready endpoint on a listener's port;
//     before, False with AddressNotAssigned (no endpoints yet) or AddressNotUsable (no Service,
//     or a port the Service lacks).
//   - ResolvedRefs: True (ResolvedRefs).
//   - addresses: the Service's cluster IPs (IPAddress) and its hostname (Hostname), reported
//     only once Programmed and never removed after; consumers (the ambient index) treat a
//     Gateway without addresses as a waypoint not yet usable.
//   - listeners: one status per listener; a listener other than port 15008 with protocol HBONE
//     is not Accepted (UnsupportedProtocol). attachedRoutes keeps its current value (routes are
//     counted elsewhere).
//
// Conditions keep their lastTransitionTime while their status does not change; now stamps the
// others.
func GatewayStatus(gw *gatewayv1.Gateway, obs Observed, clusterDomain string, now time.Time) *gatewayv1ac.GatewayApplyConfiguration {
	host := Hostname(gw, clusterDomain)
	internal, internalIPs, warnings, allUsable := resolve(host, gw, obs)

	programmed := condition{reason: string(gatewayv1.GatewayReasonProgrammed), message: "Resource programmed"}
	if len(internal) > 0 {
		programmed.message = "Resource programmed, assigned to service(s) " + humanJoin(internal)
	}
	if len(warnings) > 0 {
		programmed.status = metav1.ConditionFalse
		programmed.reason = string(gatewayv1.GatewayReasonAddressNotUsable)
		if allUsable {
			programmed.reason = string(gatewayv1.GatewayReasonAddressNotAssigned)
		}
		if len(internal) > 0 {
			programmed.message = fmt.Sprintf("Assigned to service(s) %s, but failed to assign to all requested addresses: %s",
				humanJoin(internal), strings.Join(warnings, "; "))
		} else {
			programmed.message = "Failed to assign to any requested addresses: " + strings.Join(warnings, "; ")
		}
	}
	conds := map[string]condition{
		string(gatewayv1.GatewayConditionAccepted):     {reason: string(gatewayv1.GatewayReasonAccepted), message: "Resource accepted"},
		string(gatewayv1.GatewayConditionProgrammed):   programmed,
		string(gatewayv1.GatewayConditionResolvedRefs): {reason: string(gatewayv1.GatewayReasonResolvedRefs), message: "All references resolved"},
	}

	status := gatewayv1ac.GatewayStatus().WithConditions(conditions(gw.Generation, gw.Status.Conditions, conds, now)...)
	// Do not report an address until ready; once ready, never remove it.
	if len(internal) > 0 {
		for _, ip := range internalIPs {
			status.WithAddresses(gatewayv1ac.GatewayStatusAddress().WithType(gatewayv1.IPAddressType).WithValue(ip))
		}
		status.WithAddresses(gatewayv1ac.GatewayStatusAddress().WithType(gatewayv1.HostnameAddressType).WithValue(host))
	} else {
		for _, a := range gw.Status.Addresses {
			addr := gatewayv1ac.GatewayStatusAddress().WithValue(a.Value)
			if a.Type != nil {
				addr.WithType(*a.Type)
			}
			status.WithAddresses(addr)
		}
	}
	for _, l := range gw.Spec.Listeners {
		status.WithListeners(listenerStatus(gw, l, now))
	}
	return gatewayv1ac.Gateway(gw.Name, gw.Namespace).WithStatus(status)
}

// listenerStatus is istiod's buildListener status for a waypoint listener.
func listenerStatus(gw *gatewayv1.Gateway, l gatewayv1.Listener, now time.Time) *gatewayv1ac.ListenerStatusApplyConfiguration {
	accepted := condition{reason: string(gatewayv1.ListenerReasonAccepted), message: "No errors found"}
	if l.Port != PortHBONE || l.Protocol != ProtocolHBONE {
		accepted = condition{status: metav1.ConditionFalse, reason: string(gatewayv1.ListenerReasonUnsupportedProtocol),
			message: `Expected a single listener on port 15008 with protocol "HBONE"`}
	}
	conds := map[string]condition{
		string(gatewayv1.ListenerConditionAccepted):     accepted,
		string(gatewayv1.ListenerConditionProgrammed):   {reason: string(gatewayv1.ListenerReasonProgrammed), message: "No errors found"},
		string(gatewayv1.ListenerConditionConflicted):   {status: metav1.ConditionFalse, reason: string(gatewayv1.ListenerReasonNoConflicts), message: "No errors found"},
		string(gatewayv1.ListenerConditionResolvedRefs): {reason: string(gatewayv1.ListenerReasonResolvedRefs), message: "No errors found"},
	}
	var existing []metav1.Condition
	var attached int32
	for _, s := range gw.Status.Listeners {
		if s.Name == l.Name {
			existing, attached = s.Conditions, s.AttachedRoutes
		}
	}
	// No supportedKinds: istiod lists none for HBONE (routes attach to the waypoint's Services).
	return gatewayv1ac.ListenerStatus().WithName(l.Name).WithAttachedRoutes(attached).
		WithConditions(conditions(gw.Generation, existing, conds, now)...)
}

// resolve is istiod's ResolveGatewayInstances for the waypoint's one Service: the host:port
// pairs with a ready endpoint, the Service's cluster IPs once one exists, and warnings saying
// why the others have none. allUsable is false when waiting cannot fix it.
func resolve(host string, gw *gatewayv1.Gateway, obs Observed) (internal, internalIPs, warnings []string, allUsable bool) {
	svc := obs.Service
	if svc == nil {
		return nil, nil, []string{fmt.Sprintf("hostname %q not found", host)}, false
	}
	allUsable = true
	ports := map[int32]bool{}
	for _, l := range gw.Spec.Listeners {
		ports[int32(l.Port)] = true
	}
	anyReady := false
	for _, s := range obs.EndpointSlices {
		for _, e := range s.Endpoints {
			anyReady = anyReady || ready(e)
		}
	}
	for _, port := range sortedKeys(ports) {
		sp := servicePort(svc, port)
		if sp != nil && readyOnPort(obs.EndpointSlices, sp.Name) {
			internal = append(internal, net.JoinHostPort(host, strconv.Itoa(int(port))))
			continue
		}
		switch {
		case !anyReady:
			warnings = append(warnings, fmt.Sprintf("no instances found for hostname %q", host))
		case sp == nil:
			warnings = append(warnings, fmt.Sprintf("port %d not found for hostname %q", port, host))
			allUsable = false
		}
		// A port the managed Service has, without endpoints yet: only endpoint sync lags.
	}
	if len(internal) > 0 {
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 {
			ips = []string{svc.Spec.ClusterIP}
		}
		for _, ip := range ips {
			if _, err := netip.ParseAddr(ip); err == nil {
				internalIPs = append(internalIPs, ip)
			}
		}
		sort.Strings(internalIPs)
	}
	sort.Strings(warnings)
	warnings = slices.Compact(warnings)
	return internal, internalIPs, warnings, allUsable
}

func servicePort(svc *corev1.Service, port int32) *corev1.ServicePort {
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Port == port {
			return &svc.Spec.Ports[i]
		}
	}
	return nil
}

// readyOnPort reports whether a slice has a ready endpoint serving the Service port named name
// (EndpointSlice ports carry the Service port's name).
func readyOnPort(eps []*discoveryv1.EndpointSlice, name string) bool {
	for _, s := range eps {
		hasPort := false
		for _, p := range s.Ports {
			hasPort = hasPort || (p.Name != nil && *p.Name == name) || (p.Name == nil && name == "")
		}
		if !hasPort {
			continue
		}
		for _, e := range s.Endpoints {
			if ready(e) {
				return true
			}
		}
	}
	return false
}

func ready(e discoveryv1.Endpoint) bool {
	return e.Conditions.Ready == nil || *e.Conditions.Ready
}

// ClassStatus is the status istiod reports for a GatewayClass of its controller.
func ClassStatus(gc *gatewayv1.GatewayClass, now time.Time) *gatewayv1ac.GatewayClassApplyConfiguration {
	conds := map[string]condition{
		string(gatewayv1.GatewayClassConditionStatusAccepted): {
			reason: string(gatewayv1.GatewayClassReasonAccepted), message: "Handled by Istio controller",
		},
	}
	return gatewayv1ac.GatewayClass(gc.Name).WithStatus(gatewayv1ac.GatewayClassStatus().
		WithConditions(conditions(gc.Generation, gc.Status.Conditions, conds, now)...))
}

// condition is a condition to report; status "" means True.
type condition struct {
	status          metav1.ConditionStatus
	reason, message string
}

// conditions turns want into apply configurations in type order, keeping an existing
// condition's lastTransitionTime when its status is unchanged (Istio's UpdateConditionIfChanged).
func conditions(generation int64, existing []metav1.Condition, want map[string]condition, now time.Time) []*metav1ac.ConditionApplyConfiguration {
	var out []*metav1ac.ConditionApplyConfiguration
	for _, typ := range sortedKeys(want) {
		c := want[typ]
		if c.status == "" {
			c.status = metav1.ConditionTrue
		}
		transition := metav1.NewTime(now.UTC().Truncate(time.Second))
		for _, e := range existing {
			if e.Type == typ && e.Status == c.status {
				transition = e.LastTransitionTime
			}
		}
		out = append(out, metav1ac.Condition().WithType(typ).WithStatus(c.status).
			WithObservedGeneration(generation).WithLastTransitionTime(transition).
			WithReason(c.reason).WithMessage(c.message))
	}
	return out
}

func sortedKeys[K ~string | ~int32, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// humanJoin is Istio's HumanReadableJoin.
func humanJoin(ss []string) string {
	switch len(ss) {
	case 0:
		return ""
	case 1:
		return ss[0]
	case 2:
		return ss[0] + " and " + ss[1]
	default:
		return strings.Join(ss[:len(ss)-1], ", ") + ", and " + ss[len(ss)-1]
	}
}

// StatusCurrent reports whether applying want would change nothing in have: its conditions are
// present and identical, its addresses equal, and its listeners the same, in order.
// Conditions others set are not compared: server-side apply leaves them alone.
func StatusCurrent(have gatewayv1.GatewayStatus, want *gatewayv1ac.GatewayStatusApplyConfiguration) bool {
	var w gatewayv1.GatewayStatus
	if !convert(want, &w) || !conditionsCurrent(have.Conditions, w.Conditions) ||
		len(have.Listeners) != len(w.Listeners) || !equality.Semantic.DeepEqual(nonEmpty(have.Addresses), nonEmpty(w.Addresses)) {
		return false
	}
	for i, l := range w.Listeners {
		h := have.Listeners[i]
		if h.Name != l.Name || h.AttachedRoutes != l.AttachedRoutes || len(h.SupportedKinds) != len(l.SupportedKinds) ||
			!conditionsCurrent(h.Conditions, l.Conditions) {
			return false
		}
	}
	return true
}

// ClassStatusCurrent is StatusCurrent for a GatewayClass.
func ClassStatusCurrent(have gatewayv1.GatewayClassStatus, want *gatewayv1ac.GatewayClassStatusApplyConfiguration) bool {
	var w gatewayv1.GatewayClassStatus
	return convert(want, &w) && conditionsCurrent(have.Conditions, w.Conditions)
}

func conditionsCurrent(have, want []metav1.Condition) bool {
	for _, c := range want {
		i := slices.IndexFunc(have, func(h metav1.Condition) bool { return h.Type == c.Type })
		if i < 0 || !equality.Semantic.DeepEqual(have[i], c) {
			return false
		}
	}
	return true
}

func nonEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// convert copies an apply configuration into its API type through JSON, as the apiserver reads it.
func convert(from, to any) bool {
	b, err := json.Marshal(from)
	return err == nil && json.Unmarshal(b, to) == nil
}
