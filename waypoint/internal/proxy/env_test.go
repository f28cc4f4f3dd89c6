package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/metrics"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/proxy"
)

const td = "cluster.local"

// seen is one request a backend received.
type seen struct {
	Backend, Method, Path, Host string
	Header                      http.Header
}

// env is a loopback mesh: backends behind fake ztunnels (pkg/hbone Servers), a waypoint
// (the proxy behind an hbone Server) and HBONE clients.
type env struct {
	t        testing.TB
	ca       *mtlstest.CA
	store    *meshstate.Store
	routes   *l7config.Store
	wpID     identity.ID
	wpAddr   string
	metrics  *metrics.Metrics
	ztunnels map[netip.AddrPort]string // fake pod HBONE address -> loopback listener
	logs     *testenv.Buffer           // the proxy's diagnostic and access logs, JSON lines
	proxy    *proxy.Proxy

	mu   sync.Mutex
	seen []seen
}

func (e *env) record(s seen) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seen = append(e.seen, s)
}

func (e *env) requests(backend string) []seen {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []seen
	for _, s := range e.seen {
		if backend == "" || s.Backend == backend {
			out = append(out, s)
		}
	}
	return out
}

func id(t testing.TB, ns, sa string) identity.ID {
	i, err := identity.New(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func serve(t testing.TB, srv *hbone.Server) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// newEnv starts the waypoint for services given as Address resources.
func newEnv(t testing.TB, addrs []*workloadapi.Address) *env {
	e := &env{t: t, ca: mtlstest.NewCA(t, "mesh"), store: meshstate.NewStore(td), routes: l7config.NewStore(),
		wpID: id(t, "ns1", "waypoint"), ztunnels: map[netip.AddrPort]string{}, metrics: metrics.New()}
	if err := e.store.Apply(addrs, nil); err != nil {
		t.Fatal(err)
	}
	wpCert := e.ca.Issue(t, e.wpID)
	srvCert, cliCert := mtlstest.Static(wpCert)
	e.logs = &testenv.Buffer{}
	var out io.Writer = e.logs
	if testing.Verbose() {
		out = io.MultiWriter(e.logs, tWriter{t})
	}
	log := slog.New(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := proxy.New(proxy.Options{
		Identity: e.wpID, GatewayKey: "gateway/ns1/waypoint",
		State: e.store.Snapshot, Routes: e.routes.Current,
		ClientCert: cliCert, Roots: e.ca.Roots,
		DialHBONE: func(ctx context.Context, _ hbone.PoolKey, addr netip.AddrPort) (net.Conn, error) {
			e.mu.Lock()
			real, ok := e.ztunnels[addr]
			e.mu.Unlock()
			if !ok {
				return nil, fmt.Errorf("no ztunnel at %s", addr)
			}
			return new(net.Dialer).DialContext(ctx, "tcp", real)
		},
		Metrics: e.metrics, AccessLog: accesslog.New(out), Log: log,
		SniffTimeout: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	e.proxy = p
	cfg, err := mtls.ServerConfig(spiffeid.RequireTrustDomainFromString(td), srvCert, e.ca.Roots)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hbone.NewServer(hbone.ServerOptions{TLS: cfg, Handler: p.HandleConnect, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	e.wpAddr = serve(t, srv)
	return e
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// backend starts an HTTP server named name for the workload at podIP, behind a fake
// ztunnel presenting ident.
func (e *env) backend(name string, podIP string, ident identity.ID, h http.HandlerFunc) {
	t := e.t
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.record(seen{Backend: name, Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Header: r.Header.Clone()})
		w.Header().Set("X-Backend", name)
		if h != nil {
			h(w, r)
			return
		}
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}))
	t.Cleanup(hs.Close)
	e.ztunnel(podIP, ident, hs.Listener.Addr().String())
}

// ztunnel starts a fake ztunnel for podIP that connects every stream to upstream; it
// refuses a stream for another pod or from a peer other than the waypoint.
func (e *env) ztunnel(podIP string, ident identity.ID, upstream string) {
	t := e.t
	srvCert, _ := mtlstest.Static(e.ca.Issue(t, ident))
	cfg, err := mtls.ServerConfig(spiffeid.RequireTrustDomainFromString(td), srvCert, e.ca.Roots)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hbone.NewServer(hbone.ServerOptions{TLS: cfg, Handler: func(ctx context.Context, req *hbone.Request) (net.Conn, error) {
		if req.Target.Addr() != netip.MustParseAddr(podIP) {
			return nil, hbone.Reject(http.StatusBadRequest, fmt.Errorf("target %s is not %s", req.Target, podIP))
		}
		if req.Peer != e.wpID {
			return nil, hbone.Reject(http.StatusUnauthorized, fmt.Errorf("peer %s is not the waypoint", req.Peer))
		}
		return new(net.Dialer).DialContext(ctx, "tcp", upstream)
	}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	e.mu.Lock()
	e.ztunnels[netip.AddrPortFrom(netip.MustParseAddr(podIP), meshstate.HBONEPort)] = addr
	e.mu.Unlock()
}

// setRoutes installs route configurations or fails.
func (e *env) setRoutes(rcs ...*routev3.RouteConfiguration) {
	m := map[string]*routev3.RouteConfiguration{}
	for _, rc := range rcs {
		m[rc.GetName()] = rc
	}
	if err := e.routes.Apply(m, nil); err != nil {
		e.t.Fatal(err)
	}
}

// client returns an HTTP client whose connections are HBONE streams to target through the
// waypoint, presenting ident.
func (e *env) client(ident identity.ID, target string) *http.Client {
	t := e.t
	d, err := hbone.NewDialer(hbone.DialerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	_, cli := mtlstest.Static(e.ca.Issue(t, ident))
	cfg, err := mtls.ClientConfig(cli, e.ca.Roots, e.wpID)
	if err != nil {
		t.Fatal(err)
	}
	wp := netip.MustParseAddrPort(e.wpAddr)
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.Dial(ctx, hbone.DialRequest{
			Key:     hbone.PoolKey{Source: ident, Destinations: hbone.IdentitySet(e.wpID), DestinationIP: wp.Addr()},
			Address: wp, Target: netip.MustParseAddrPort(target), TLS: cfg,
			Source: netip.MustParseAddrPort("10.0.0.5:40000"),
		})
	}
	tr := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// rawStream opens one HBONE stream to target through the waypoint.
func (e *env) rawStream(ident identity.ID, target string) (net.Conn, error) {
	d, err := hbone.NewDialer(hbone.DialerOptions{})
	if err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { d.Close() })
	_, cli := mtlstest.Static(e.ca.Issue(e.t, ident))
	cfg, err := mtls.ClientConfig(cli, e.ca.Roots, e.wpID)
	if err != nil {
		return nil, err
	}
	wp := netip.MustParseAddrPort(e.wpAddr)
	return d.Dial(context.Background(), hbone.DialRequest{
		Key: hbone.PoolKey{Source: ident, Destinations: hbone.IdentitySet(e.wpID), DestinationIP: wp.Addr()}, Address: wp,
		Target: netip.MustParseAddrPort(target), TLS: cfg,
	})
}
