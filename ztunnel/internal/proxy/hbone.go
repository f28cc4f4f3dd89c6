package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
)

// hboneSide holds the pooled HBONE client and the HBONE server.
type hboneSide struct {
	dialer *hbone.Dialer
	server *hbone.Server
}

func newHBONESide(s *scope) (*hboneSide, error) {
	dialer, err := hbone.NewDialer(hbone.DialerOptions{
		DialContext: func(ctx context.Context, _ hbone.PoolKey, addr netip.AddrPort) (net.Conn, error) {
			return s.dial(ctx, addr)
		},
		ConnectTimeout: s.p.opts.ConnectTimeout,
		Logger:         s.log.With("side", "hbone-client"),
	})
	if err != nil {
		return nil, err
	}
	serverTLS, err := mtls.ServerConfig(s.p.td, s.serverCertificate, s.p.opts.Roots)
	if err != nil {
		return nil, err
	}
	server, err := hbone.NewServer(hbone.ServerOptions{
		TLS: serverTLS, Handler: s.handleHBONE, Logger: s.log.With("side", "hbone-server"),
	})
	if err != nil {
		return nil, err
	}
	return &hboneSide{dialer: dialer, server: server}, nil
}

// shutdown stops accepting HBONE connections and waits up to d for open streams.
func (h *hboneSide) shutdown(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_ = h.server.Shutdown(ctx)
}

func (h *hboneSide) close() {
	_ = h.server.Close()
	_ = h.dialer.Close()
}

// ServeInbound serves HBONE (:15008) for the workloads on this node.
func (p *Proxy) ServeInbound(l net.Listener) error { return p.node.serveInbound(l) }

func (s *scope) serveInbound(l net.Listener) error {
	if !s.track(l) { // stop closes it, ending Serve without touching open connections
		_ = l.Close()
		return nil
	}
	err := s.hbone.server.Serve(context.Background(), l)
	if errors.Is(err, hbone.ErrClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// serverCertificate presents the identity of the workload the client is connecting to:
// the connection's original destination (its local address when captured in the pod). In
// a pod's scope it first waits, up to sourceWait, for the state to hold that workload (a
// peer may connect as soon as the pod is enrolled; see awaitLocal).
func (s *scope) serverCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	p := s.p
	dst, err := socket.OriginalDestination(hello.Conn)
	if err != nil {
		return nil, fmt.Errorf("choosing server certificate: %w", err)
	}
	snap := p.opts.State()
	if s.self != nil {
		snap = awaitLocal(hello.Context(), snap, p.opts.Node, dst.Addr().Unmap(), sourceWait)
	}
	w, ok := snap.WorkloadByIP(dst.Addr())
	if !ok || w.GetNode() != p.opts.Node {
		return nil, fmt.Errorf("choosing server certificate: %s is not a workload on node %s", dst.Addr(), p.opts.Node)
	}
	return p.opts.Certs.GetCertificateFunc(w.Identity)(hello)
}

// handleHBONE authorizes one CONNECT and connects it to the local workload.
func (s *scope) handleHBONE(ctx context.Context, req *hbone.Request) (net.Conn, error) {
	p := s.p
	snap := p.opts.State()
	d := decideInbound(snap, p.opts.Node, inboundRequest{
		Target: req.Target, Local: req.LocalAddr.Addr(), Source: req.Peer, SourceIP: req.RemoteAddr.Addr(),
	}, p.opts.Authorizer)
	if d.Status != http.StatusOK {
		s.log.Debug("hbone stream refused", "peer", req.Peer, "target", req.Target, "status", d.Status, "reason", d.Reason)
		return nil, hbone.Reject(d.Status, errors.New(d.Reason))
	}
	dctx, cancel := context.WithTimeout(ctx, p.opts.ConnectTimeout)
	up, err := s.dial(dctx, d.Target)
	cancel()
	if err != nil {
		return nil, hbone.Reject(http.StatusServiceUnavailable, fmt.Errorf("connecting to %s: %w", d.Target, err))
	}
	src := inboundSource(snap, req.Peer, clientIP(req), req.RemoteAddr.Addr())
	rec := p.opts.Metrics.Open(connLabels(metrics.ReporterDestination, src, req.Peer, d.Workload, nil, true))
	// A policy change that denies the stream later closes it (PolicyAuthorizer.Run).
	forget := watchConn(p.opts.Authorizer, Conn{Source: req.Peer, SourceIP: req.RemoteAddr.Addr().Unmap(), Dest: d.Workload,
		DestIP: d.Target.Addr(), DestPort: d.Target.Port()}, up)
	return &countedConn{Conn: up, rec: rec, sw: hbone.NewSocketWriter(up), forget: forget}, nil
}

// clientIP is the original client's address: the forwarded header when present, else the
// connection's peer.
func clientIP(req *hbone.Request) netip.Addr {
	if f, err := hbone.ParseForwarded(req.Header.Get("Forwarded")); err == nil && f.For.IsValid() {
		return f.For.Addr()
	}
	return req.RemoteAddr.Addr()
}

// ServeOutbound serves the outbound capture listener (:15001).
func (p *Proxy) ServeOutbound(l net.Listener) error { return p.node.serveOutbound(l) }

func (s *scope) serveOutbound(l net.Listener) error {
	self := l.Addr().(*net.TCPAddr).AddrPort()
	self = netip.AddrPortFrom(self.Addr().Unmap(), self.Port())
	return s.serve(l, func(c net.Conn) { s.handleOutbound(c, self) })
}

func (s *scope) handleOutbound(c net.Conn, self netip.AddrPort) {
	p := s.p
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst, err := socket.CapturedDestination(c, self.Port())
	if err != nil {
		s.log.Warn("outbound: original destination", "src", src, "err", err)
		return
	}
	if dst.Port() == self.Port() && (dst.Addr() == self.Addr() || self.Addr().IsUnspecified()) {
		s.log.Warn("outbound: refusing a direct connection to the capture port (it would loop)", "src", src)
		return
	}
	snap := p.opts.State()
	d, err := decideOutbound(snap, p.opts.Node, s.self, src, dst, pick)
	if err != nil {
		s.log.Debug("outbound refused", "src", src, "dst", dst, "err", err)
		return
	}
	r := d.Route
	var up net.Conn
	ctx, cancel := s.dialTimeout()
	defer cancel()
	if r.Kind == meshstate.HBONE {
		up, err = s.dialHBONE(ctx, d.Source, src, r)
	} else {
		up, err = s.dial(ctx, r.Target)
	}
	if err != nil {
		s.log.Debug("outbound connect failed", "src", src, "dst", dst, "route", r.Kind.String(), "target", r.Target, "err", err)
		return
	}
	cancel()
	var srcID identity.ID
	if d.Source != nil {
		srcID = d.Source.Identity
	}
	rec := p.opts.Metrics.Open(connLabels(metrics.ReporterSource, d.Source, srcID, r.Workload, r.Service, r.Kind == meshstate.HBONE))
	defer rec.Close()
	_, _, _ = Pipe(c, up, rec.Received, rec.Sent)
}

func (s *scope) dialHBONE(ctx context.Context, srcW *meshstate.Workload, srcAddr netip.AddrPort, r meshstate.Route) (net.Conn, error) {
	p := s.p
	src := srcW.Identity
	cfg, err := mtls.ClientConfig(p.opts.Certs.GetClientCertificateFunc(src), p.opts.Roots, r.Identities...)
	if err != nil {
		return nil, err
	}
	st, err := s.hbone.dialer.Dial(ctx, hbone.DialRequest{
		Key: hbone.PoolKey{
			Source: src, Destinations: hbone.IdentitySet(r.Identities...),
			SourceIP: srcAddr.Addr(), DestinationIP: r.Dial.Addr(),
		},
		Address: r.Dial, Target: r.Target, TLS: cfg, Baggage: baggage(srcW), Header: forwarded(srcAddr, r.Service),
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s via hbone at %s: %w", r.Target, r.Dial, err)
	}
	return st, nil
}

// forwarded is the forwarded header of an outbound stream, as Istio's ztunnel sends it:
// the client, and the service it dialled if any (so a waypoint, or the destination's
// metrics, know the service even when the :authority is a pod address). An IPv4 client
// accepted on a dual-stack listener is named as IPv4.
func forwarded(client netip.AddrPort, svc *meshstate.Service) http.Header {
	f := hbone.Forwarded{For: netip.AddrPortFrom(client.Addr().Unmap(), client.Port())}
	if svc != nil {
		f.Host = svc.GetHostname()
	}
	if v := f.String(); v != "" {
		return http.Header{hbone.HeaderForwarded: {v}}
	}
	return nil
}

// countedConn is an upstream connection of an HBONE stream that records its bytes: what is
// read from the workload goes back to the client (sent), what is written came from it.
type countedConn struct {
	net.Conn
	rec *metrics.Conn
	sw  *hbone.SocketWriter // up's socket, for the stream's direct path
	// forget unregisters the stream from the policy watcher.
	forget func()
}

var _ hbone.TryWriter = (*countedConn)(nil)

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.rec.Sent(int64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.rec.Received(int64(n))
	return n, err
}

// TryWrite writes what the workload's socket takes of b now (see hbone.TryWriter).
func (c *countedConn) TryWrite(b []byte) int {
	n := c.sw.TryWrite(b)
	c.rec.Received(int64(n))
	return n
}

func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *countedConn) Close() error {
	c.forget()
	c.rec.Close()
	return c.Conn.Close()
}
