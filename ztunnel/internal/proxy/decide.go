package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"time"

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

// inboundRequest is what ztunnel knows of one inbound stream or plaintext connection.
type inboundRequest struct {
	// Target is where the client wants to go: the HBONE :authority, or the original
	// destination of a plaintext connection.
	Target netip.AddrPort
	// Local is the address the connection itself reached: the pod's IP in in-pod mode, a
	// node address when captured on the node. If it is a workload's, the stream must be for
	// that workload, or for a service or workload whose waypoint it is.
	Local netip.Addr
	// Source is the peer's verified identity (zero for plaintext), SourceIP its address.
	Source   identity.ID
	SourceIP netip.Addr
}

// decideInbound checks an inbound connection against the node's workloads and policy. The
// destination is the workload at Target, except in Istio's "waypoint sandwich": a stream
// that reached a waypoint's own pod (Local) for a Service VIP or pod it is the waypoint of
// goes to that waypoint pod on the port asked for. Policy applies with the verified peer as
// the source, so traffic a waypoint forwards is authorized as the waypoint's identity.
func decideInbound(snap *meshstate.Snapshot, node string, in inboundRequest, authz Authorizer) inboundDecision {
	target := netip.AddrPortFrom(in.Target.Addr().Unmap(), in.Target.Port())
	destIP := target.Addr()
	if local := in.Local.Unmap(); local != destIP {
		if lw, ok := snap.WorkloadByIP(local); ok {
			if !snap.IsWaypointFor(destIP, lw) {
				return inboundDecision{Status: http.StatusBadRequest, Reason: fmt.Sprintf("stream for %s arrived on a connection to workload %s (%s), which is not its waypoint", target, lw.Uid, local)}
			}
			destIP = local
		}
	}
	w, ok := snap.WorkloadByIP(destIP)
	if !ok || w.GetNode() != node {
		return inboundDecision{Status: http.StatusBadRequest, Reason: fmt.Sprintf("%s is not a workload on node %s", destIP, node)}
	}
	if w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		return inboundDecision{Status: http.StatusBadRequest, Reason: fmt.Sprintf("workload %s is not in the mesh", w.Uid)}
	}
	if err := authz.Authorize(Conn{Source: in.Source, SourceIP: in.SourceIP.Unmap(), Dest: w, DestIP: destIP, DestPort: target.Port()}); err != nil {
		return inboundDecision{Workload: w, Status: http.StatusUnauthorized, Reason: err.Error()}
	}
	return inboundDecision{Workload: w, Target: netip.AddrPortFrom(destIP, target.Port()), Status: http.StatusOK}
}

// inboundSource is the source workload of an HBONE stream for metrics: the client the
// forwarded header names, else the connection's peer, and only if its identity is the
// verified one (through a waypoint, forwarded may name the original client while the
// peer, and the policy's source, is the waypoint).
func inboundSource(snap *meshstate.Snapshot, peer identity.ID, forwardedFor, remote netip.Addr) *meshstate.Workload {
	for _, ip := range []netip.Addr{forwardedFor, remote} {
		if w := snap.WorkloadByIPOrNil(ip); w != nil && w.Identity == peer {
			return w
		}
	}
	return nil
}

// outboundDecision is where one captured outbound connection goes.
type outboundDecision struct {
	Route  meshstate.Route
	Source *meshstate.Workload // nil if the client is not a known workload
}

// sourceWait bounds how long an in-pod connection waits for its pod's workload (Rust
// ztunnel's wait_for_workload, 5 s).
const sourceWait = 5 * time.Second

// decideOutbound routes a connection from src to its original destination dst (see
// routeOutbound). In in-pod mode (self set) it first waits, up to sourceWait, for the
// state to name the pod's workload: the node agent hands ztunnel a new pod's netns (ZDS)
// before the control plane's workload for it arrives (xDS), and a connection the pod makes
// as it starts would otherwise have no source identity, and be closed. As in Rust
// ztunnel, the wait is on the state store's updates (meshstate.Snapshot.Await), not a poll.
func decideOutbound(snap *meshstate.Snapshot, node string, self []string, src, dst netip.AddrPort, pick func(int) int) (outboundDecision, error) {
	if len(self) > 0 {
		snap = awaitSource(snap, node, self, src, sourceWait)
	}
	return routeOutbound(snap, node, self, src, dst, pick)
}

// awaitSource returns the first snapshot, from snap on, in which the connection from src
// has a source workload on node, or the newest one after d.
func awaitSource(snap *meshstate.Snapshot, node string, self []string, src netip.AddrPort, d time.Duration) *meshstate.Snapshot {
	return awaitFor(context.Background(), snap, d, func(s *meshstate.Snapshot) bool { return sourceWorkload(s, node, self, src) != nil })
}

// awaitLocal is the inbound side of the same wait: the node agent hands ztunnel a pod's
// netns, and the pod starts receiving, before the control plane's workload for it (or its
// enrollment, HBONE) arrives. It returns the first snapshot, from snap on, in which ip is a
// workload in the mesh on node, or the newest one after d or when ctx ends. Only in-pod
// listeners wait: what they capture is for their enrolled pod.
func awaitLocal(ctx context.Context, snap *meshstate.Snapshot, node string, ip netip.Addr, d time.Duration) *meshstate.Snapshot {
	return awaitFor(ctx, snap, d, func(s *meshstate.Snapshot) bool {
		w, ok := s.WorkloadByIP(ip)
		return ok && w.GetNode() == node && w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE
	})
}

// awaitFor returns snap if ok holds for it, else the first snapshot replacing it for which
// ok holds, or the newest one after d or when ctx ends.
func awaitFor(ctx context.Context, snap *meshstate.Snapshot, d time.Duration, ok func(*meshstate.Snapshot) bool) *meshstate.Snapshot {
	if ok(snap) {
		return snap
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	snap, _ = snap.Await(ctx, ok)
	return snap
}

// sourceWorkload is the workload on node a connection from src comes from: in in-pod mode
// the first of self's uids the state holds on node; otherwise, or if none is, the workload
// with src's address.
func sourceWorkload(snap *meshstate.Snapshot, node string, self []string, src netip.AddrPort) *meshstate.Workload {
	for _, uid := range self {
		if w, ok := snap.Workload(uid); ok && w.GetNode() == node {
			return w
		}
	}
	if w, ok := snap.WorkloadByIP(src.Addr().Unmap()); ok && w.GetNode() == node {
		return w
	}
	return nil
}

// routeOutbound routes a connection from src to its original destination dst, through
// the destination's waypoint if it has one (meshstate.Snapshot.Outbound). A connection that
// must go over HBONE needs a known source workload on this node: its identity is the one
// ztunnel presents. In in-pod mode self lists the uids the pod's workload may have, tried
// first; otherwise (or if none is on this node) src's address names the source.
func routeOutbound(snap *meshstate.Snapshot, node string, self []string, src, dst netip.AddrPort, pick func(int) int) (outboundDecision, error) {
	d := outboundDecision{Source: sourceWorkload(snap, node, self, src)}
	route, err := snap.Outbound(d.Source, dst, pick)
	if err != nil {
		return outboundDecision{}, err
	}
	d.Route = route
	if route.Kind == meshstate.HBONE && d.Source == nil {
		return outboundDecision{}, fmt.Errorf("source %s is not a workload on node %s, so it has no identity to tunnel to %s with", src.Addr(), node, dst)
	}
	return d, nil
}
