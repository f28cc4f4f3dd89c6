package meshstate

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"istio.io/istio/pkg/workloadapi"
)

// HBONEPort is where every mesh workload's ztunnel accepts HBONE.
const HBONEPort = 15008

// RouteKind says how an outbound connection leaves ztunnel.
type RouteKind int

const (
	// Passthrough: the destination is not a known workload or service; connect to it as is.
	Passthrough RouteKind = iota
	// HBONE: tunnel to the destination workload's ztunnel.
	HBONE
	// Plaintext: a known workload outside the mesh; connect directly.
	Plaintext
)

func (k RouteKind) String() string {
	return [...]string{"passthrough", "hbone", "plaintext"}[k]
}

// Route is the decision for one outbound connection.
type Route struct {
	Kind RouteKind
	// Target is the HBONE :authority, or for a direct connection its final address: the
	// destination after Service VIP translation, or, through a waypoint, the original
	// destination as dialled (the Service VIP and port, or the pod IP and port).
	Target netip.AddrPort
	// Dial is the address to open a TCP connection to: Target's ztunnel on :15008 for
	// HBONE, the waypoint's HBONE port through a waypoint, Target itself otherwise.
	Dial netip.AddrPort
	// Workload is the workload the connection reaches, if known: the destination, or its
	// waypoint (Istio ztunnel's actual_destination_workload, reported as the destination
	// workload in metrics). Service is the service reached through a VIP, if any: through a
	// waypoint still the service dialled, never the waypoint's own.
	Workload *Workload
	Service  *Service
	// Identities the next hop may present (HBONE only): the destination's (and its
	// service's SANs), or through a waypoint the waypoint workload's (and the waypoint
	// service's SANs).
	Identities []identity.ID
	// ViaWaypoint is set when the connection goes to the destination's waypoint (Workload)
	// rather than to the destination.
	ViaWaypoint bool
}

// Errors of Outbound and Direct.
var (
	ErrNoEndpoints = errors.New("no healthy endpoint")
	ErrNoPort      = errors.New("service has no such port")
	// ErrNoWaypoint: the destination names a waypoint that the state cannot resolve to a
	// healthy waypoint workload. The connection fails, as in Istio's ztunnel: it never
	// bypasses the waypoint, which may enforce policy.
	ErrNoWaypoint = errors.New("waypoint unavailable")
)

// Outbound decides where a connection from src (nil if the source is not a known workload)
// to dst goes, as Istio's ztunnel does (build_request):
//   - dst is a Service VIP and the Service has a waypoint: to the waypoint;
//   - dst is a workload IP and the workload has a waypoint: to the waypoint (a Service
//     VIP never applies its endpoints' workload waypoints);
//   - otherwise Direct.
//
// A source that is itself one of the waypoint's workloads is never sent back to it. Which
// services and workloads have a waypoint (istio.io/use-waypoint, waypoint-for) is the
// control plane's decision, carried in their waypoint field; Outbound only honours it.
func (s *Snapshot) Outbound(src *Workload, dst netip.AddrPort, pick func(n int) int) (Route, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	gw, svc, what := s.waypointOf(dst.Addr())
	if gw == nil || s.inWaypoint(gw, src) {
		return s.Direct(dst, pick)
	}
	return s.viaWaypoint(gw, dst, svc, pick, what)
}

// Direct decides where a connection to dst goes without waypoint redirection: a pod IP
// goes to its workload, a Service VIP to one of its healthy endpoints (pick chooses an
// index in [0, n): round robin or random is the caller's policy) with the target port
// mapped, anything else passes through. A waypoint uses it to reach the final destination.
func (s *Snapshot) Direct(dst netip.AddrPort, pick func(n int) int) (Route, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if svc, ok := s.ServiceByVIP(dst.Addr()); ok {
		return s.DirectToService(svc, dst.Port(), pick)
	}
	if w, ok := s.WorkloadByIP(dst.Addr()); ok {
		return toWorkload(w, nil, dst), nil
	}
	return Route{Kind: Passthrough, Target: dst, Dial: dst}, nil
}

// DirectToService routes to one of svc's healthy endpoints for service port port, as Direct
// does for a VIP (for callers that know the service by name, not by VIP).
func (s *Snapshot) DirectToService(svc *Service, port uint16, pick func(n int) int) (Route, error) {
	w, target, err := s.pickEndpoint(svc, port, pick)
	if err != nil {
		return Route{}, err
	}
	return toWorkload(w, svc, target), nil
}

// IsWaypointFor reports whether w is one of the workloads of the waypoint that the service
// or workload at dst names: a connection to dst that arrives at w is then legitimate
// (the "waypoint sandwich" of Istio's ztunnel inbound).
func (s *Snapshot) IsWaypointFor(dst netip.Addr, w *Workload) bool {
	gw, _, _ := s.waypointOf(dst.Unmap())
	return gw != nil && s.inWaypoint(gw, w)
}

// waypointOf returns the waypoint of the service at ip (VIPs first, as Direct looks them
// up), or of the workload at ip; svc is the service when ip is a VIP, and what names the
// owner for errors.
func (s *Snapshot) waypointOf(ip netip.Addr) (gw *workloadapi.GatewayAddress, svc *Service, what string) {
	if svc, ok := s.ServiceByVIP(ip); ok {
		return svc.GetWaypoint(), svc, "service " + svc.Key
	}
	if w, ok := s.WorkloadByIP(ip); ok {
		return w.GetWaypoint(), nil, "workload " + w.Uid
	}
	return nil, nil, ""
}

// lookupWaypoint finds what gw names: a waypoint Service (its endpoints are the waypoint's
// workloads) or a single waypoint workload. An address is looked up as a VIP first, then
// as a workload IP; a hostname as a service key, then as a workload's hostname.
func (s *Snapshot) lookupWaypoint(gw *workloadapi.GatewayAddress) (*Service, *Workload, bool) {
	if a := gw.GetAddress(); a != nil {
		ip, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			return nil, nil, false
		}
		if svc, ok := s.ServiceByVIP(ip); ok {
			return svc, nil, true
		}
		if w, ok := s.WorkloadByIP(ip); ok {
			return nil, w, true
		}
		return nil, nil, false
	}
	if h := gw.GetHostname(); h != nil {
		if svc, ok := s.Service(h.GetNamespace() + "/" + h.GetHostname()); ok {
			return svc, nil, true
		}
		var found *Workload
		for _, w := range s.workloads {
			if w.GetHostname() == h.GetHostname() && w.GetNamespace() == h.GetNamespace() && (found == nil || w.Uid < found.Uid) {
				found = w
			}
		}
		return nil, found, found != nil
	}
	return nil, nil, false
}

// inWaypoint reports whether w is one of the workloads gw names.
func (s *Snapshot) inWaypoint(gw *workloadapi.GatewayAddress, w *Workload) bool {
	if w == nil {
		return false
	}
	svc, ww, ok := s.lookupWaypoint(gw)
	switch {
	case !ok:
		return false
	case ww != nil:
		return ww.Uid == w.Uid
	}
	return slices.ContainsFunc(s.Endpoints(svc.Key), func(ep *Workload) bool { return ep.Uid == w.Uid })
}

// viaWaypoint routes dst (owned by what, through svc if a VIP) to the waypoint gw names:
// a healthy endpoint of the waypoint Service on its HBONE port (target port mapped), or
// the waypoint workload itself on that port. The :authority stays dst.
func (s *Snapshot) viaWaypoint(gw *workloadapi.GatewayAddress, dst netip.AddrPort, svc *Service, pick func(int) int, what string) (Route, error) {
	port := uint16(gw.GetHboneMtlsPort())
	if port == 0 {
		port = HBONEPort
	}
	wsvc, w, ok := s.lookupWaypoint(gw)
	if !ok {
		return Route{}, fmt.Errorf("%s has waypoint %s: %w: no such service or workload", what, gatewayString(gw), ErrNoWaypoint)
	}
	var dial netip.AddrPort
	if wsvc != nil {
		var err error
		if w, dial, err = s.pickEndpoint(wsvc, port, pick); err != nil {
			return Route{}, fmt.Errorf("%s has waypoint %s: %w: %w", what, gatewayString(gw), ErrNoWaypoint, err)
		}
	} else {
		ip, ok := netip.AddrFromSlice(gw.GetAddress().GetAddress())
		if !ok { // named by hostname: its first address
			if len(w.IPs) == 0 {
				return Route{}, fmt.Errorf("%s has waypoint %s: %w: workload %s has no address", what, gatewayString(gw), ErrNoWaypoint, w.Uid)
			}
			ip = w.IPs[0]
		}
		dial = netip.AddrPortFrom(ip.Unmap(), port)
	}
	r := Route{Kind: HBONE, Target: dst, Dial: dial, Workload: w, Service: svc, ViaWaypoint: true, Identities: []identity.ID{w.Identity}}
	r.Identities = appendSANs(r.Identities, wsvc)
	return r, nil
}

// gatewayString names a waypoint reference for errors and logs.
func gatewayString(gw *workloadapi.GatewayAddress) string {
	if h := gw.GetHostname(); h != nil {
		return h.GetNamespace() + "/" + h.GetHostname()
	}
	if ip, ok := netip.AddrFromSlice(gw.GetAddress().GetAddress()); ok {
		if n := gw.GetAddress().GetNetwork(); n != "" {
			return n + "/" + ip.Unmap().String()
		}
		return ip.Unmap().String()
	}
	return "(empty)"
}

// pickEndpoint chooses one of svc's healthy endpoints for service port port and returns
// it with the address to reach it on (its first IP, the target port).
func (s *Snapshot) pickEndpoint(svc *Service, port uint16, pick func(int) int) (*Workload, netip.AddrPort, error) {
	var sp *workloadapi.Port
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(port) {
			sp = p
			break
		}
	}
	if sp == nil {
		return nil, netip.AddrPort{}, fmt.Errorf("service %s port %d: %w", svc.Key, port, ErrNoPort)
	}
	var healthy []*Workload
	for _, w := range s.Endpoints(svc.Key) {
		if w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY && len(w.IPs) > 0 {
			healthy = append(healthy, w)
		}
	}
	if len(healthy) == 0 {
		return nil, netip.AddrPort{}, fmt.Errorf("service %s: %w", svc.Key, ErrNoEndpoints)
	}
	w := healthy[pick(len(healthy))]
	return w, netip.AddrPortFrom(w.IPs[0], targetPort(w, svc, sp)), nil
}

// targetPort is the workload's own mapping for the service port if it has one (named
// ports), else the service's target port, else the service port itself.
func targetPort(w *Workload, svc *Service, sp *workloadapi.Port) uint16 {
	if pl, ok := w.GetServices()[svc.Key]; ok {
		for _, p := range pl.GetPorts() {
			if p.GetServicePort() == sp.GetServicePort() && p.GetTargetPort() != 0 {
				return uint16(p.GetTargetPort())
			}
		}
	}
	if sp.GetTargetPort() != 0 {
		return uint16(sp.GetTargetPort())
	}
	return uint16(sp.GetServicePort())
}

func toWorkload(w *Workload, svc *Service, target netip.AddrPort) Route {
	r := Route{Target: target, Dial: target, Workload: w, Service: svc, Kind: Plaintext}
	if w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		return r
	}
	r.Kind = HBONE
	r.Dial = netip.AddrPortFrom(target.Addr(), HBONEPort)
	r.Identities = appendSANs([]identity.ID{w.Identity}, svc)
	return r
}

// appendSANs adds svc's subject alt names (if svc is not nil) that are valid identities
// and not yet in ids.
func appendSANs(ids []identity.ID, svc *Service) []identity.ID {
	if svc == nil {
		return ids
	}
	for _, san := range svc.GetSubjectAltNames() {
		if id, err := identity.Parse(san); err == nil && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

func sortByUID(ws []*Workload) {
	slices.SortFunc(ws, func(a, b *Workload) int { return strings.Compare(a.Uid, b.Uid) })
}
