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
	// Target is the final destination, after Service VIP translation: the HBONE :authority.
	Target netip.AddrPort
	// Dial is the address to open a TCP connection to (Target's ztunnel on :15008 for HBONE).
	Dial netip.AddrPort
	// Workload is the destination workload, if known; Service the service reached through
	// a VIP, if any.
	Workload *Workload
	Service  *Service
	// Identities the destination may present (HBONE only).
	Identities []identity.ID
}

// Errors of Outbound.
var (
	ErrNoEndpoints = errors.New("no healthy endpoint")
	ErrNoPort      = errors.New("service has no such port")
)

// Outbound decides where a connection to dst goes. pick chooses an index in [0, n) among a
// service's healthy endpoints (round robin or random is the caller's policy).
func (s *Snapshot) Outbound(dst netip.AddrPort, pick func(n int) int) (Route, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if svc, ok := s.ServiceByVIP(dst.Addr()); ok {
		return s.viaService(svc, dst.Port(), pick)
	}
	if w, ok := s.WorkloadByIP(dst.Addr()); ok {
		return toWorkload(w, nil, dst), nil
	}
	return Route{Kind: Passthrough, Target: dst, Dial: dst}, nil
}

func (s *Snapshot) viaService(svc *Service, port uint16, pick func(int) int) (Route, error) {
	var sp *workloadapi.Port
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(port) {
			sp = p
			break
		}
	}
	if sp == nil {
		return Route{}, fmt.Errorf("service %s port %d: %w", svc.Key, port, ErrNoPort)
	}
	var healthy []*Workload
	for _, w := range s.Endpoints(svc.Key) {
		if w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY && len(w.IPs) > 0 {
			healthy = append(healthy, w)
		}
	}
	if len(healthy) == 0 {
		return Route{}, fmt.Errorf("service %s: %w", svc.Key, ErrNoEndpoints)
	}
	w := healthy[pick(len(healthy))]
	target := netip.AddrPortFrom(w.IPs[0], targetPort(w, svc, sp))
	return toWorkload(w, svc, target), nil
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
	r.Identities = []identity.ID{w.Identity}
	if svc != nil {
		for _, san := range svc.GetSubjectAltNames() {
			if id, err := identity.Parse(san); err == nil && !slices.Contains(r.Identities, id) {
				r.Identities = append(r.Identities, id)
			}
		}
	}
	return r
}

func sortByUID(ws []*Workload) {
	slices.SortFunc(ws, func(a, b *Workload) int { return strings.Compare(a.Uid, b.Uid) })
}
