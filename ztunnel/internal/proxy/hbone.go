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
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/state"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// hboneSide holds the pooled HBONE client and the HBONE server.
type hboneSide struct {
	dialer *hbone.Dialer
	server *hbone.Server
}

func newHBONESide(p *Proxy, td spiffeid.TrustDomain) (*hboneSide, error) {
	dialer, err := hbone.NewDialer(hbone.DialerOptions{
		DialContext: func(ctx context.Context, _ hbone.PoolKey, addr netip.AddrPort) (net.Conn, error) {
			return p.opts.Upstream.Dial(ctx, addr)
		},
		ConnectTimeout: p.opts.ConnectTimeout,
		Logger:         p.log.With("side", "hbone-client"),
	})
	if err != nil {
		return nil, err
	}
	serverTLS, err := mtls.ServerConfig(td, p.serverCertificate, p.opts.Roots)
	if err != nil {
		return nil, err
	}
	server, err := hbone.NewServer(hbone.ServerOptions{
		TLS: serverTLS, Handler: p.handleHBONE, Logger: p.log.With("side", "hbone-server"),
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
func (p *Proxy) ServeInbound(l net.Listener) error {
	err := p.hbone.server.Serve(context.Background(), l)
	if errors.Is(err, hbone.ErrClosed) {
		return nil
	}
	return err
}

// serverCertificate presents the identity of the workload the client is connecting to:
// the connection's original destination (its local address when captured in the pod).
func (p *Proxy) serverCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	dst, err := socket.OriginalDestination(hello.Conn)
	if err != nil {
		return nil, fmt.Errorf("choosing server certificate: %w", err)
	}
	w, ok := p.opts.State().WorkloadByIP(dst.Addr())
	if !ok || w.GetNode() != p.opts.Node {
		return nil, fmt.Errorf("choosing server certificate: %s is not a workload on node %s", dst.Addr(), p.opts.Node)
	}
	return p.opts.Certs.GetCertificateFunc(w.Identity)(hello)
}

// handleHBONE authorizes one CONNECT and connects it to the local workload.
func (p *Proxy) handleHBONE(ctx context.Context, req *hbone.Request) (net.Conn, error) {
	snap := p.opts.State()
	// The stream must be for the workload the connection was addressed to, unless the
	// connection reached ztunnel on a node address (captured on the node, not in the pod).
	if local, ok := snap.WorkloadByIP(req.LocalAddr.Addr()); ok && req.LocalAddr.Addr().Unmap() != req.Target.Addr().Unmap() {
		return nil, hbone.Reject(http.StatusBadRequest, fmt.Errorf("stream for %s arrived on a connection to workload %s (%s)", req.Target, local.Uid, req.LocalAddr))
	}
	d := decideInbound(snap, p.opts.Node, req.Target, req.Peer, req.RemoteAddr.Addr(), p.opts.Authorizer)
	if d.Status != http.StatusOK {
		p.log.Debug("hbone stream refused", "peer", req.Peer, "target", req.Target, "status", d.Status, "reason", d.Reason)
		return nil, hbone.Reject(d.Status, errors.New(d.Reason))
	}
	dctx, cancel := context.WithTimeout(ctx, p.opts.ConnectTimeout)
	up, err := p.opts.Upstream.Dial(dctx, d.Target)
	cancel()
	if err != nil {
		return nil, hbone.Reject(http.StatusServiceUnavailable, fmt.Errorf("connecting to %s: %w", d.Target, err))
	}
	src := snap.WorkloadByIPOrNil(clientIP(req))
	rec := p.opts.Metrics.Open(connLabels(metrics.ReporterDestination, src, req.Peer, d.Workload, nil, true))
	return &countedConn{Conn: up, rec: rec}, nil
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
func (p *Proxy) ServeOutbound(l net.Listener) error {
	self := l.Addr().(*net.TCPAddr).AddrPort()
	return p.serve(l, func(c net.Conn) { p.handleOutbound(c, self) })
}

func (p *Proxy) handleOutbound(c net.Conn, self netip.AddrPort) {
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst, err := socket.OriginalDestination(c)
	if err != nil {
		p.log.Warn("outbound: original destination", "src", src, "err", err)
		return
	}
	if dst.Port() == self.Port() && (dst.Addr() == self.Addr() || self.Addr().IsUnspecified()) {
		p.log.Warn("outbound: refusing a direct connection to the capture port (it would loop)", "src", src)
		return
	}
	snap := p.opts.State()
	d, err := decideOutbound(snap, p.opts.Node, src, dst, pick)
	if err != nil {
		p.log.Debug("outbound refused", "src", src, "dst", dst, "err", err)
		return
	}
	r := d.Route
	var up net.Conn
	ctx, cancel := p.dialTimeout()
	defer cancel()
	if r.Kind == state.HBONE {
		up, err = p.dialHBONE(ctx, d.Source, src, r)
	} else {
		up, err = p.opts.Upstream.Dial(ctx, r.Target)
	}
	if err != nil {
		p.log.Debug("outbound connect failed", "src", src, "dst", dst, "route", r.Kind.String(), "target", r.Target, "err", err)
		return
	}
	cancel()
	var srcID identity.ID
	if d.Source != nil {
		srcID = d.Source.Identity
	}
	rec := p.opts.Metrics.Open(connLabels(metrics.ReporterSource, d.Source, srcID, r.Workload, r.Service, r.Kind == state.HBONE))
	defer rec.Close()
	_, _, _ = Pipe(c, up, rec.Received, rec.Sent)
}

func (p *Proxy) dialHBONE(ctx context.Context, srcW *state.Workload, srcAddr netip.AddrPort, r state.Route) (net.Conn, error) {
	src := srcW.Identity
	cfg, err := mtls.ClientConfig(p.opts.Certs.GetClientCertificateFunc(src), p.opts.Roots, r.Identities...)
	if err != nil {
		return nil, err
	}
	s, err := p.hbone.dialer.Dial(ctx, hbone.DialRequest{
		Key: hbone.PoolKey{
			Source: src, Destinations: hbone.IdentitySet(r.Identities...),
			SourceIP: srcAddr.Addr(), DestinationIP: r.Dial.Addr(),
		},
		Address: r.Dial, Target: r.Target, TLS: cfg, Source: srcAddr, Baggage: baggage(srcW),
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s via hbone at %s: %w", r.Target, r.Dial, err)
	}
	return s, nil
}

// countedConn is an upstream connection of an HBONE stream that records its bytes: what is
// read from the workload goes back to the client (sent), what is written came from it.
type countedConn struct {
	net.Conn
	rec *metrics.Conn
}

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

func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *countedConn) Close() error {
	c.rec.Close()
	return c.Conn.Close()
}
