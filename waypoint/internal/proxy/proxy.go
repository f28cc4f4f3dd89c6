// Package proxy is the waypoint's data plane: it serves each HBONE CONNECT (the
// :authority is the destination the client dialled, a Service VIP and port or a pod IP
// and port), finds the route configuration that applies, and either serves HTTP/1.1 and
// h2c on the stream — RBAC, routing, the route's action, then HTTP to the chosen endpoint
// over HBONE — or passes TCP through after the L4 part of the policy.
//
// HTTP/1.1 takes a lean path, one goroutine per stream and no hand-offs of its own: the
// hbone server hands the stream itself to the proxy (hbone.Local), which reads requests
// with its own keep-alive loop (h1server.go) and answers through a buffered writer that
// sends a typical response in one write (h1writer.go); upstream, its own synchronous
// client (h1client.go) sends the request head and a small body in one write on a pooled
// keep-alive connection (h1pool.go). h2c streams and HTTP/2 upstreams use x/net's HTTP/2.
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

	"golang.org/x/net/http2"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/metrics"
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
	opts    Options
	log     *slog.Logger
	dialer  *hbone.Dialer
	hosts   hostIndex
	ups     upstreams // HTTP/2 upstreams
	h1      h1pool    // HTTP/1.1 upstream connections
	streams streamSet
	h2srv   *http2.Server // h2c streams
	h1base  *http.Server  // h2srv's base configuration and graceful-shutdown hook

	ctx    context.Context // cancelled by Close: background work (mirrors, sniffing, TCP)
	cancel context.CancelFunc
	wg     sync.WaitGroup // background goroutines
}

// New validates opts and returns the proxy.
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
	d, err := hbone.NewDialer(hbone.DialerOptions{DialContext: opts.DialHBONE, Logger: log.With("part", "hbone-dialer")})
	if err != nil {
		return nil, err
	}
	p := &Proxy{opts: opts, log: log, dialer: d, h2srv: &http2.Server{}}
	p.ups.p = p
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.h1base = &http.Server{
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if err := http2.ConfigureServer(p.h1base, p.h2srv); err != nil {
		d.Close()
		return nil, fmt.Errorf("proxy: configuring h2c: %w", err)
	}
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
	if p.streams.draining.Load() {
		return nil, hbone.Reject(http.StatusServiceUnavailable, errors.New("waypoint draining"))
	}
	return hbone.Local(func(c net.Conn) { p.serveStream(ctx, c, st) }), nil
}

// Shutdown stops taking streams, lets requests in flight finish and closes idle
// connections, until ctx ends; then it closes everything.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.streams.drain()
	_ = p.h1base.Shutdown(ctx) // GOAWAY on h2c streams
	err := p.streams.waitHTTP(ctx)
	p.close()
	return err
}

// Close closes every stream and upstream connection at once. It is idempotent.
func (p *Proxy) Close() error {
	return p.close()
}

func (p *Proxy) close() error {
	p.streams.closeAll()
	p.cancel()
	p.streams.wg.Wait()
	p.wg.Wait()
	p.h1.closeIdle(true)
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
