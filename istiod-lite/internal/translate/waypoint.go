package translate

// Waypoint binding: which waypoint, if any, the workload API's `waypoint` field (a
// GatewayAddress) of a Service or Workload names, as istiod's ambient index does
// (pilot/pkg/serviceregistry/ambient/waypoints.go, services.go and workloads.go):
//
//   - A Gateway is a waypoint once its status lists an address (istiod's gateway controller
//     reports one when the waypoint Deployment is ready, and never removes it). Like istiod we
//     do not look at the class: a Gateway of another class with a status address is a waypoint
//     too if something names it. The GatewayAddress is the status's first Hostname address, as
//     a NamespacedHostname in the Gateway's namespace, else its first IPAddress as a
//     NetworkAddress on the mesh network; hbone_mtls_port is always 15008.
//   - istio.io/waypoint-for on the Gateway, else on its GatewayClass, else "service", says
//     what it takes: service, workload, all (anything else, none included, takes nothing).
//   - An object's own istio.io/use-waypoint (namespace istio.io/use-waypoint-namespace, else
//     its own) wins; "none" opts out. Without one, its Namespace's labels decide the same way.
//     A waypoint that does not exist (or has no status address yet) binds nothing, and the
//     field is absent. The namespace must be allowed by the allowedRoutes of the waypoint's
//     HBONE listener (port 15008; Same namespace when there is none).
//   - A Service labelled gateway.istio.io/managed as a waypoint's or east-west gateway's
//     never has a waypoint; a pod labelled gateway.networking.k8s.io/gateway-name with the name
//     of a waypoint of its namespace is that waypoint's instance: it has no waypoint (a
//     waypoint never points at itself) and gets the inbound binding of the
//     ambient.istio.io/waypoint-inbound-binding annotation as its application_tunnel.
//
// Not done: canary waypoints (istio.io/use-waypoint-canary, weighted_waypoints) and the
// implicit allow-from-waypoint policies (istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY, off by
// default).

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Labels and annotations of waypoint binding (Istio's names).
const (
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	LabelWaypointFor          = "istio.io/waypoint-for"
	LabelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	labelIngressUseWaypoint   = "istio.io/ingress-use-waypoint"
	labelGatewayManaged       = "gateway.istio.io/managed"
	managedByMeshController   = "istio.io-mesh-controller"
	managedByEastWest         = "istio.io-eastwest-controller"
	annotationInboundBinding  = "ambient.istio.io/waypoint-inbound-binding"
	useWaypointNone           = "none"
	// waypointHBONEPort is the port ztunnel dials a waypoint on; istiod hardcodes it.
	waypointHBONEPort = 15008
	// listenerProxyProtocol is the protocol of a waypoint's PROXY-protocol "sandwich" listener.
	listenerProxyProtocol = "istio.io/PROXY"
)

// Traffic types of istio.io/waypoint-for.
const (
	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
	WaypointForNone     = "none"
)

// Errors a binding wraps when an object asks for a waypoint and gets none. istiod reports
// them in the object's status; the field is then absent.
var (
	// ErrWaypointNotReady: no Gateway of that name, or its status has no address yet.
	ErrWaypointNotReady = errors.New("waypoint is not ready: no such Gateway, or its status lists no address yet")
	// ErrWaypointAttachmentDenied: the waypoint's HBONE listener does not allow the namespace.
	ErrWaypointAttachmentDenied = errors.New("waypoint does not allow attachment from this namespace (allowedRoutes of its HBONE listener)")
	// ErrWaypointTrafficType: the waypoint's istio.io/waypoint-for excludes this kind of traffic.
	ErrWaypointTrafficType = errors.New("waypoint does not take this traffic")
)

// Waypoint is a Gateway usable as a waypoint (istiod's ambient Waypoint).
type Waypoint struct {
	// Namespace and Name are the Gateway's.
	Namespace, Name string
	// Address is what Services and Workloads bound to it carry in their waypoint field.
	Address *workloadapi.GatewayAddress
	// TrafficType is the effective istio.io/waypoint-for (WaypointFor*, or any other value,
	// which takes nothing).
	TrafficType string
	// Binding is the application tunnel its own instances get from the
	// ambient.istio.io/waypoint-inbound-binding annotation; nil without one.
	Binding *workloadapi.ApplicationTunnel
	// from and selector are the allowedRoutes.namespaces of the listener objects bind through.
	from     gatewayv1.FromNamespaces
	selector labels.Selector
}

// Key is "namespace/name", the key of Waypoints.
func (w *Waypoint) Key() string { return w.Namespace + "/" + w.Name }

// GetAddress is nil-safe: a nil waypoint has no address.
func (w *Waypoint) GetAddress() *workloadapi.GatewayAddress {
	if w == nil {
		return nil
	}
	return w.Address
}

// Equal reports whether both would bind the same objects to the same address.
func (w *Waypoint) Equal(o *Waypoint) bool {
	if w == nil || o == nil {
		return w == o
	}
	sel := func(s labels.Selector) string {
		if s == nil {
			return "<nil>"
		}
		return s.String()
	}
	return w.Namespace == o.Namespace && w.Name == o.Name && w.TrafficType == o.TrafficType &&
		w.from == o.from && sel(w.selector) == sel(o.selector) &&
		proto.Equal(w.Address, o.Address) && proto.Equal(w.Binding, o.Binding)
}

// allows reports whether objects of the namespace may bind to w.
func (w *Waypoint) allows(namespace string, nsLabels map[string]string) bool {
	switch w.from {
	case gatewayv1.NamespacesFromAll:
		return true
	case gatewayv1.NamespacesFromSelector:
		return w.selector != nil && w.selector.Matches(labels.Set(nsLabels))
	default: // Same, and anything unknown
		return w.Namespace == namespace
	}
}

// Waypoints are the usable waypoints by Key.
type Waypoints map[string]*Waypoint

// GatewayWaypoint translates a Gateway (and its GatewayClass, nil if unknown) into a
// Waypoint, or nil while its status lists no address. problems name what was malformed and
// ignored as istiod ignores it: a status address that does not parse, an invalid
// waypoint-inbound-binding annotation, an unknown istio.io/waypoint-for value, a listener
// namespace selector that does not parse (it then admits no namespace).
func GatewayWaypoint(gw *gatewayv1.Gateway, class *gatewayv1.GatewayClass, opts Options) (*Waypoint, []string) {
	if gw == nil || len(gw.Status.Addresses) == 0 {
		return nil, nil
	}
	var problems []string
	addr, bad := gatewayAddress(gw, opts.Network)
	problems = append(problems, bad...)
	if addr == nil {
		// istiod keeps a Waypoint without address; nothing can use it, so we drop it.
		return nil, append(problems, "status lists no usable address")
	}
	trafficType := WaypointForService
	if class != nil {
		if tt, ok := class.Labels[LabelWaypointFor]; ok {
			trafficType = tt
		}
	}
	if tt, ok := gw.Labels[LabelWaypointFor]; ok {
		trafficType = tt
	}
	switch trafficType {
	case WaypointForService, WaypointForWorkload, WaypointForAll, WaypointForNone:
	default:
		problems = append(problems, fmt.Sprintf("label %s=%q is not service, workload, all or none: it takes no traffic", LabelWaypointFor, trafficType))
	}
	binding, port, err := inboundBinding(gw, class)
	if err != nil {
		problems = append(problems, err.Error())
	}
	w := &Waypoint{Namespace: gw.Namespace, Name: gw.Name, Address: addr, TrafficType: trafficType, Binding: binding}
	l, found := boundListener(gw, binding, port)
	w.from = gatewayv1.NamespacesFromSame
	if found && l.AllowedRoutes != nil && l.AllowedRoutes.Namespaces != nil {
		rn := l.AllowedRoutes.Namespaces
		if rn.From != nil {
			w.from = *rn.From
		}
		if w.from == gatewayv1.NamespacesFromSelector {
			sel, err := metav1.LabelSelectorAsSelector(rn.Selector)
			if err != nil {
				problems = append(problems, fmt.Sprintf("listener %s: allowedRoutes.namespaces.selector: %v (no namespace is admitted)", l.Name, err))
				sel = labels.Nothing()
			}
			w.selector = sel
		}
	}
	return w, problems
}

// gatewayAddress prefers the status's first Hostname address, then its first IP address.
func gatewayAddress(gw *gatewayv1.Gateway, network string) (*workloadapi.GatewayAddress, []string) {
	for _, a := range gw.Status.Addresses {
		if a.Type != nil && *a.Type == gatewayv1.HostnameAddressType {
			return &workloadapi.GatewayAddress{
				Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
					Namespace: gw.Namespace, Hostname: a.Value,
				}},
				HboneMtlsPort: waypointHBONEPort,
			}, nil
		}
	}
	var problems []string
	for _, a := range gw.Status.Addresses {
		if a.Type == nil || *a.Type != gatewayv1.IPAddressType {
			continue
		}
		ip, err := netip.ParseAddr(a.Value)
		if err != nil {
			problems = append(problems, fmt.Sprintf("status address %q is not an IP address", a.Value))
			continue
		}
		return &workloadapi.GatewayAddress{
			Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{
				Network: network, Address: ip.AsSlice(),
			}},
			HboneMtlsPort: waypointHBONEPort,
		}, problems
	}
	return nil, problems
}

// inboundBinding parses ambient.istio.io/waypoint-inbound-binding ("<protocol>" or
// "<protocol>/<port>", protocol NONE or PROXY) from the Gateway, else its class. Like istiod,
// a bad format or protocol means no binding, and a bad port means port 0.
func inboundBinding(gw *gatewayv1.Gateway, class *gatewayv1.GatewayClass) (*workloadapi.ApplicationTunnel, uint32, error) {
	v, ok := gw.Annotations[annotationInboundBinding]
	if !ok && class != nil {
		v, ok = class.Annotations[annotationInboundBinding]
	}
	if !ok {
		return nil, 0, nil
	}
	parts := strings.Split(v, "/")
	if len(parts) > 2 {
		return nil, 0, fmt.Errorf("annotation %s=%q is not <protocol> or <protocol>/<port>: ignored", annotationInboundBinding, v)
	}
	var protocol workloadapi.ApplicationTunnel_Protocol
	switch parts[0] {
	case "NONE":
		protocol = workloadapi.ApplicationTunnel_NONE
	case "PROXY":
		protocol = workloadapi.ApplicationTunnel_PROXY
	default:
		return nil, 0, fmt.Errorf("annotation %s=%q: protocol %q is not NONE or PROXY: ignored", annotationInboundBinding, v, parts[0])
	}
	var (
		port uint32
		err  error
	)
	if len(parts) == 2 {
		p, perr := strconv.ParseUint(parts[1], 10, 32)
		if perr != nil {
			err = fmt.Errorf("annotation %s=%q: port %q is not a number: port 0 is used", annotationInboundBinding, v, parts[1])
		}
		port = uint32(p)
	}
	return &workloadapi.ApplicationTunnel{Protocol: protocol, Port: port}, port, err
}

// boundListener finds the listener objects bind through: the one the inbound binding names
// (by port, else the PROXY listener), else the HBONE listener on 15008.
func boundListener(gw *gatewayv1.Gateway, binding *workloadapi.ApplicationTunnel, port uint32) (gatewayv1.Listener, bool) {
	if binding != nil {
		for _, l := range gw.Spec.Listeners {
			if port != 0 && l.Port == gatewayv1.PortNumber(port) ||
				port == 0 && binding.Protocol == workloadapi.ApplicationTunnel_PROXY && l.Protocol == listenerProxyProtocol {
				return l, true
			}
		}
	}
	for _, l := range gw.Spec.Listeners {
		if l.Protocol == "HBONE" && l.Port == waypointHBONEPort {
			return l, true
		}
	}
	return gatewayv1.Listener{}, false
}

// useWaypoint reads istio.io/use-waypoint from lbls: the waypoint key it names (namespace
// from istio.io/use-waypoint-namespace, else defaultNamespace), or none for "none".
func useWaypoint(lbls map[string]string, defaultNamespace string) (key string, none bool) {
	name, ok := lbls[LabelUseWaypoint]
	if !ok {
		return "", false
	}
	if name == useWaypointNone {
		return "", true
	}
	ns := defaultNamespace
	if override, ok := lbls[LabelUseWaypointNamespace]; ok {
		ns = override
	}
	return ns + "/" + name, false
}

// targetWaypoint is istiod's fetchWaypointForTarget: the object's own label, else its
// namespace's.
func targetWaypoint(meta metav1.ObjectMeta, ns *corev1.Namespace, wps Waypoints) (*Waypoint, error) {
	var nsLabels map[string]string
	if ns != nil {
		nsLabels = ns.Labels
	}
	key, none := useWaypoint(meta.Labels, meta.Namespace)
	if none {
		return nil, nil
	}
	if key == "" && ns != nil {
		key, _ = useWaypoint(ns.Labels, meta.Namespace)
	}
	if key == "" {
		return nil, nil
	}
	w := wps[key]
	if w == nil {
		return nil, fmt.Errorf("waypoint %s: %w", key, ErrWaypointNotReady)
	}
	if !w.allows(meta.Namespace, nsLabels) {
		return nil, fmt.Errorf("waypoint %s: %w", key, ErrWaypointAttachmentDenied)
	}
	return w, nil
}

// ServiceWaypoint returns the waypoint the Service is bound to (ns is its Namespace, nil if
// unknown), or nil; the error says why a waypoint it asks for is not used.
func ServiceWaypoint(svc *corev1.Service, ns *corev1.Namespace, wps Waypoints) (*Waypoint, error) {
	switch svc.Labels[labelGatewayManaged] {
	case managedByMeshController, managedByEastWest:
		return nil, nil // a waypoint or east-west gateway has none
	}
	w, err := targetWaypoint(svc.ObjectMeta, ns, wps)
	if w == nil {
		return nil, err
	}
	if w.TrafficType != WaypointForService && w.TrafficType != WaypointForAll {
		return nil, fmt.Errorf("waypoint %s for a Service: %w (%s=%q)", w.Key(), ErrWaypointTrafficType, LabelWaypointFor, w.TrafficType)
	}
	return w, nil
}

// BindServiceWaypoint sets the waypoint and ingress_use_waypoint fields of s, the
// translation of svc, and returns why a waypoint svc asks for is not used (nil if none is
// asked for or it is bound). ingress_use_waypoint is the istio.io/ingress-use-waypoint label
// of the Service, else of its Namespace, when a waypoint is bound.
func BindServiceWaypoint(s *workloadapi.Service, svc *corev1.Service, ns *corev1.Namespace, wps Waypoints) error {
	w, err := ServiceWaypoint(svc, ns, wps)
	s.Waypoint = w.GetAddress()
	s.IngressUseWaypoint = false
	if w != nil {
		v, ok := svc.Labels[labelIngressUseWaypoint]
		if !ok && ns != nil {
			v, ok = ns.Labels[labelIngressUseWaypoint]
		}
		if ok {
			b, perr := strconv.ParseBool(v)
			s.IngressUseWaypoint = perr == nil && b
			if perr != nil {
				return fmt.Errorf("label %s=%q is not a boolean: false is used", labelIngressUseWaypoint, v)
			}
		}
	}
	return err
}

// WorkloadWaypoint is istiod's computeWaypoint for a pod (ns its Namespace, nil if unknown):
// an instance of a waypoint of its namespace gets no waypoint and the waypoint's inbound
// binding; another pod gets the waypoint it or its namespace names if that takes workload
// traffic. The error says why a waypoint the pod asks for is not used; a pod that inherits a
// service-only waypoint from its namespace is not an error.
func WorkloadWaypoint(pod *corev1.Pod, ns *corev1.Namespace, wps Waypoints) (*Waypoint, *workloadapi.ApplicationTunnel, error) {
	if name := pod.Labels[LabelGatewayName]; name != "" {
		if self := wps[pod.Namespace+"/"+name]; self != nil {
			return nil, cloneTunnel(self.Binding), nil
		}
	}
	w, err := targetWaypoint(pod.ObjectMeta, ns, wps)
	if w == nil {
		return nil, nil, err
	}
	if w.TrafficType == WaypointForWorkload || w.TrafficType == WaypointForAll {
		return w, nil, nil
	}
	if _, own := pod.Labels[LabelUseWaypoint]; !own {
		return nil, nil, nil
	}
	return nil, nil, fmt.Errorf("waypoint %s for a workload: %w (%s=%q)", w.Key(), ErrWaypointTrafficType, LabelWaypointFor, w.TrafficType)
}

func cloneTunnel(t *workloadapi.ApplicationTunnel) *workloadapi.ApplicationTunnel {
	if t == nil {
		return nil
	}
	return &workloadapi.ApplicationTunnel{Protocol: t.Protocol, Port: t.Port}
}
