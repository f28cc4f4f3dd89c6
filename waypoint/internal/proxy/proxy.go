// Package proxy is the waypoint's data plane: it serves each HBONE CONNECT (the
// :authority is the destination the client dialled, a Service VIP and port or a pod IP
// and port), finds the route configuration that applies, and either serves HTTP/1.1 and
// h2c on the stream — RBAC, routing, the route's action, then HTTP to the chosen endpoint
// over HBONE — or passes TCP through after the L4 part of the policy.
//
// The decisions are pure functions (decide, resolve; l7config, router and authz); this
// package does the I/O around them. It does not talk to the control plane or the CA: the
// state, route tables and certificates come in through Options.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/metrics"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/sniff"
)

// DefaultSniffTimeout is how long a stream of unknown protocol may stay silent before it
// is treated as TCP (server-first protocols send nothing).
const DefaultSniffTimeout = 500 * time.Millisecond

// Options configures a Proxy.
type Options struct {
	// Identity is the waypoint's own; it is presented upstream. Required.
	Identity identity.ID
	// GatewayKey names the route configuration for traffic addressed to a workload,
	// "gateway/<namespace>/<gateway name>". Required.
	GatewayKey string
	// State returns the current mesh state. Required.
	State func() *meshstate.Snapshot
	// Routes returns the current route tables. Required.
	Routes func() l7config.Tables
	// ClientCert presents Identity's certificate upstream, Roots verify upstreams. Required.
	ClientCert mtls.ClientCertificate
	Roots      mtls.Roots
	// DialHBONE opens the TCP connection under a new upstream HBONE connection. If nil, a
	// plain net.Dialer. Tests map addresses with it.
	DialHBONE func(ctx context.Context, key hbone.PoolKey, addr netip.AddrPort) (net.Conn, error)
	// DialPlain opens a connection to a workload outside the mesh. If nil, a net.Dialer.
	DialPlain func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	// SniffTimeout: if zero, DefaultSniffTimeout.
	SniffTimeout time.Duration
	// Rand returns a uniform number in [0, n) for weighted and endpoint choice. If nil,
	// math/rand/v2.
	Rand func(n uint32) uint32
	// Metrics and AccessLog may be nil (nothing recorded).
	Metrics   *metrics.Metrics
	AccessLog *accesslog.Logger
	// Log receives diagnostics (debug per refused stream). If nil, slog.Default().
	Log *slog.Logger
}

// Proxy serves HBONE streams addressed through the waypoint. Create it with New, hand
// HandleConnect to a pkg/hbone Server, and stop it with Shutdown or Close.
type Proxy struct {
	opts   Options
	log    *slog.Logger
	dialer *hbone.Dialer
	hosts  hostIndex
	ups    upstreams
	ln     *chanListener
	srv    *http.Server

	ctx    context.Context // cancelled by Close: background work (mirrors, sniffing)
	cancel context.CancelFunc
	wg     sync.WaitGroup
	served chan struct{} // closed when the HTTP server's Serve returned
}

// New validates opts and starts the proxy's HTTP server (on no network listener: streams
// are handed to it by HandleConnect).
func New(opts Options) (*Proxy, error) {
	switch {
	case opts.Identity.IsZero():
		return nil, errors.New("proxy: Identity is required")
	case opts.GatewayKey == "":
		return nil, errors.New("proxy: GatewayKey is required")
	case opts.State == nil || opts.Routes == nil:
		return nil, errors.New("proxy: State and Routes are required")
	case opts.ClientCert == nil || opts.Roots == nil:
		return nil, errors.New("proxy: ClientCert and Roots are required")
	}
	if opts.SniffTimeout == 0 {
		opts.SniffTimeout = DefaultSniffTimeout
	}
	if opts.Rand == nil {
		opts.Rand = rand.Uint32N
	}
	if opts.DialPlain == nil {
		opts.DialPlain = func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			return new(net.Dialer).DialContext(ctx, "tcp", addr.String())
		}
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	d, err := hbone.NewDialer(hbone.DialerOptions{DialContext: opts.DialHBONE, Logger: log.With("component", "hbone-dialer")})
	if err != nil {
		return nil, err
	}
	p := &Proxy{opts: opts, log: log, dialer: d, ln: newChanListener(), served: make(chan struct{})}
	p.ups.p = p
	p.ctx, p.cancel = context.WithCancel(context.Background())
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP),
		Protocols:         &protos,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       time.Hour,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*streamConn); ok {
				return context.WithValue(ctx, streamKey{}, sc.st)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(p.ln)
	}()
	return p, nil
}

// stream is what the HTTP handler knows of the HBONE stream a request came on.
type stream struct {
	plan   plan
	peer   identity.ID
	source netip.AddrPort // the original client, from the forwarded header; else the peer's address
	src    *meshstate.Workload
}

type streamKey struct{}

// HandleConnect is the pkg/hbone Handler: it refuses CONNECTs it cannot serve (503 when
// the configuration is missing, 401 when TCP policy denies), and otherwise returns the
// connection the server pipes the stream to.
func (p *Proxy) HandleConnect(ctx context.Context, req *hbone.Request) (net.Conn, error) {
	snap := p.opts.State()
	pl, err := decide(snap, p.opts.Routes(), p.opts.GatewayKey, req.Target)
	if err != nil {
		var de *errDecide
		if errors.As(err, &de) {
			return nil, hbone.Reject(de.code, err)
		}
		return nil, err
	}
	st := &stream{plan: pl, peer: req.Peer, source: req.RemoteAddr}
	if f, ferr := hbone.ParseForwarded(req.Header.Get(hbone.HeaderForwarded)); ferr == nil && f.For.IsValid() {
		st.source = f.For
	}
	st.src = snap.WorkloadByIPOrNil(st.source.Addr())
	if pl.Proto == protoTCP {
		up, err := p.openTCP(ctx, snap, st)
		if err != nil {
			return nil, err
		}
		return up, nil
	}
	a, b := net.Pipe()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.serveStream(b, st)
	}()
	return a, nil
}

// serveStream sniffs the protocol if need be, then hands the stream to the HTTP server or
// passes it through as TCP.
func (p *Proxy) serveStream(c net.Conn, st *stream) {
	proto := st.plan.Proto
	if proto == protoSniff {
		sp, sc, err := sniff.Conn(c, p.opts.SniffTimeout)
		if err != nil {
			c.Close()
			return
		}
		c = sc
		proto = protoHTTP
		if sp == sniff.TCP {
			proto = protoTCP
		}
	}
	if proto == protoTCP {
		p.passTCP(c, st)
		return
	}
	if !p.ln.push(&streamConn{Conn: c, st: st}) {
		c.Close()
	}
}

// Shutdown stops taking streams, lets requests in flight finish and closes idle
// connections, until ctx ends; then it closes everything.
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.srv.Shutdown(ctx)
	if err != nil {
		p.srv.Close()
	}
	<-p.served
	p.cancel()
	p.wg.Wait()
	p.ups.closeIdle()
	p.dialer.Close()
	return err
}

// Close closes every stream and upstream connection at once. It is idempotent.
func (p *Proxy) Close() error {
	p.srv.Close()
	<-p.served
	p.cancel()
	p.wg.Wait()
	p.ups.closeIdle()
	return p.dialer.Close()
}

// dialRoute opens a connection to a resolved endpoint: an HBONE stream through its
// ztunnel with the waypoint's identity, or a plain connection to a workload outside the
// mesh.
func (p *Proxy) dialRoute(ctx context.Context, r meshstate.Route) (net.Conn, error) {
	switch r.Kind {
	case meshstate.HBONE:
		cfg, err := mtls.ClientConfig(p.opts.ClientCert, p.opts.Roots, r.Identities...)
		if err != nil {
			return nil, fmt.Errorf("dialing %s via hbone: %w", r.Target, err)
		}
		s, err := p.dialer.Dial(ctx, hbone.DialRequest{
			Key:     hbone.PoolKey{Source: p.opts.Identity, Destinations: hbone.IdentitySet(r.Identities...), DestinationIP: r.Dial.Addr()},
			Address: r.Dial, Target: r.Target, TLS: cfg,
		})
		if err != nil {
			return nil, err
		}
		return s, nil
	case meshstate.Plaintext:
		c, err := p.opts.DialPlain(ctx, r.Target)
		if err != nil {
			return nil, fmt.Errorf("dialing %s: %w", r.Target, err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("%s is not a mesh destination: %w", r.Target, errNoEndpoint)
}

func (p *Proxy) pick(n int) int { return int(p.opts.Rand(uint32(n))) }

// chanListener is the HTTP server's listener: HandleConnect pushes streams into it.
type chanListener struct {
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "hbone" }
func (pipeAddr) String() string  { return "hbone" }

// streamConn is a stream handed to the HTTP server, with what the handler needs of it.
type streamConn struct {
	net.Conn
	st *stream
}
