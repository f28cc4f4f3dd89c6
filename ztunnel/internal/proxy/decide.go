package proxy

import (
	"fmt"
	"net/http"
	"net/netip"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"istio.io/istio/pkg/workloadapi"
)

// Conn describes an inbound connection for authorization.
type Conn struct {
	// Source is the peer's verified identity; zero for plaintext connections.
	Source   identity.ID
	SourceIP netip.Addr
	Dest     *meshstate.Workload
	// DestIP and DestPort are where the connection was going (the HBONE :authority, or
	// the original destination of a plaintext connection).
	DestIP   netip.Addr
	DestPort uint16
}

// Authorizer decides whether an inbound connection may reach its workload. Its error, if
// any, says which policy denied it.
type Authorizer interface {
	Authorize(c Conn) error
}

// AllowAll authorizes everything (a mesh with no policy).
type AllowAll struct{}

// Authorize implements Authorizer.
func (AllowAll) Authorize(Conn) error { return nil }

// inboundDecision is what to do with one HBONE stream or plaintext connection.
type inboundDecision struct {
	Workload *meshstate.Workload
	Target   netip.AddrPort
	// Status is the HBONE response: 200 to connect, 400 bad request, 401 denied.
	Status int
	Reason string
}

// decideInbound checks an inbound connection for target (the HBONE :authority, or the
// original destination of a plaintext connection) against the node's workloads and policy.
func decideInbound(snap *meshstate.Snapshot, node string, target netip.AddrPort, source identity.ID, sourceIP netip.Addr, authz Authorizer) inboundDecision {
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	w, ok := snap.WorkloadByIP(target.Addr())
	if !ok || w.GetNode() != node {
		return inboundDecision{Status: http.StatusBadRequest, Reason: fmt.Sprintf("%s is not a workload on node %s", target.Addr(), node)}
	}
	if w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		return inboundDecision{Status: http.StatusBadRequest, Reason: fmt.Sprintf("workload %s is not in the mesh", w.Uid)}
	}
	if err := authz.Authorize(Conn{Source: source, SourceIP: sourceIP.Unmap(), Dest: w, DestIP: target.Addr(), DestPort: target.Port()}); err != nil {
		return inboundDecision{Workload: w, Status: http.StatusUnauthorized, Reason: err.Error()}
	}
	return inboundDecision{Workload: w, Target: target, Status: http.StatusOK}
}

// outboundDecision is where one captured outbound connection goes.
type outboundDecision struct {
	Route  meshstate.Route
	Source *meshstate.Workload // nil if the client is not a known workload
}

// decideOutbound routes a connection from src to its original destination dst. A
// connection that must go over HBONE needs a known source workload on this node: its
// identity is the one ztunnel presents. In in-pod mode self lists the uids the pod's
// workload may have, tried first; otherwise (or if none is on this node) src's address
// names the source.
func decideOutbound(snap *meshstate.Snapshot, node string, self []string, src, dst netip.AddrPort, pick func(int) int) (outboundDecision, error) {
	route, err := snap.Outbound(dst, pick)
	if err != nil {
		return outboundDecision{}, err
	}
	d := outboundDecision{Route: route}
	for _, uid := range self {
		if w, ok := snap.Workload(uid); ok && w.GetNode() == node {
			d.Source = w
			break
		}
	}
	if d.Source == nil {
		if w, ok := snap.WorkloadByIP(src.Addr().Unmap()); ok && w.GetNode() == node {
			d.Source = w
		}
	}
	if route.Kind == meshstate.HBONE && d.Source == nil {
		return outboundDecision{}, fmt.Errorf("source %s is not a workload on node %s, so it has no identity to tunnel to %s with", src.Addr(), node, dst)
	}
	return d, nil
}
