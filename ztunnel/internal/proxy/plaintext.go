package proxy

import (
	"context"
	"net"
	"net/http"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
)

// ServePlaintext serves the inbound plaintext listener (:15006): connections that reached a
// local workload without HBONE. The Authorizer sees them with no source identity, so a STRICT
// PeerAuthentication refuses them; PERMISSIVE lets them through to the workload.
func (p *Proxy) ServePlaintext(l net.Listener) error { return p.node.servePlaintext(l) }

func (s *scope) servePlaintext(l net.Listener) error {
	port := l.Addr().(*net.TCPAddr).AddrPort().Port()
	return s.serve(l, func(c net.Conn) { s.handlePlaintext(c, port) })
}

func (s *scope) handlePlaintext(c net.Conn, listenerPort uint16) {
	p := s.p
	dst, err := socket.CapturedDestination(c, listenerPort)
	if err != nil {
		s.log.Warn("inbound plaintext: original destination", "err", err)
		return
	}
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	snap := p.opts.State()
	if s.self != nil { // in a pod: its workload may not be known yet (awaitLocal)
		snap = awaitLocal(context.Background(), snap, p.opts.Node, dst.Addr().Unmap(), sourceWait)
	}
	d := decideInbound(snap, p.opts.Node, inboundRequest{Target: dst, Local: dst.Addr(), SourceIP: src.Addr()}, p.opts.Authorizer)
	if d.Status != http.StatusOK {
		s.log.Debug("inbound plaintext refused", "src", src, "dst", dst, "reason", d.Reason)
		return
	}
	ctx, cancel := s.dialTimeout()
	up, err := s.dial(ctx, d.Target)
	cancel()
	if err != nil {
		s.log.Debug("inbound plaintext: connecting to workload", "dst", d.Target, "err", err)
		return
	}
	forget := watchConn(p.opts.Authorizer, Conn{SourceIP: src.Addr().Unmap(), Dest: d.Workload, DestIP: d.Target.Addr(), DestPort: d.Target.Port()}, c)
	defer forget()
	rec := p.opts.Metrics.Open(connLabels(metrics.ReporterDestination, p.opts.State().WorkloadByIPOrNil(src.Addr()), identity.ID{}, d.Workload, nil, false))
	defer rec.Close()
	_, _, _ = Pipe(c, up, rec.Received, rec.Sent)
}
