// Package app is ztunnel's composition root: it loads the configuration's workloads into the
// state store, starts the certificate manager against the CA, binds every listener before
// serving any (so a busy port fails start-up), runs the proxies and the operator servers,
// and drains on shutdown. Nothing imports it but main.
package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"github.com/ambient-lite/ambient-lite/pkg/caclient"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/pkg/secrets"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/zds"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/admin"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/config"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/discovery"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/inpod"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/localconfig"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/proxy"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
	"golang.org/x/sync/errgroup"
	"istio.io/istio/pkg/workloadapi"
)

// Run serves until ctx ends, then drains for cfg.Drain and stops.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	store := meshstate.NewStore(cfg.TrustDomain)
	policies := discovery.NewPolicyStore(authz.Options{RootNamespace: cfg.RootNamespace})
	roots, err := mtls.ReadRoots(cfg.RootCertPath)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	// Configuration comes from a local file, or from istiod-lite over delta xDS.
	var xdsClient *xds.Client
	synced := make(chan struct{})
	if cfg.LocalXDSPath != "" {
		if err := loadLocal(store, policies, cfg.LocalXDSPath); err != nil {
			return err
		}
		close(synced)
	} else {
		conn, err := xds.Dial(xds.DialOptions{Address: cfg.XDSAddress, ServerName: cfg.CAServerName, Roots: pool, TokenPath: cfg.TokenPath})
		if err != nil {
			return err
		}
		defer conn.Close()
		var once sync.Once
		xdsClient, err = xds.NewClient(xds.ClientOptions{
			Conn: conn, Node: discovery.Node(cfg.InstanceIP, cfg.PodName, cfg.PodNamespace, cfg.NodeName),
			Handler: discovery.Handler(store, policies, func(typeURL string) {
				if typeURL == discovery.AddressType {
					once.Do(func() { close(synced) })
				}
			}),
			Logger: log.With("component", "xds"),
		})
		if err != nil {
			return err
		}
		xdsClient.Watch(discovery.AddressType)
		xdsClient.Watch(discovery.AuthorizationType)
	}
	ca, err := caclient.New(caclient.Options{
		Address: cfg.CAAddress, Roots: pool, ServerName: cfg.CAServerName, TokenPath: cfg.TokenPath,
		ClusterID: cfg.ClusterID, Log: log.With("client", "ca"),
	})
	if err != nil {
		return err
	}
	defer ca.Close()
	certs, err := secrets.New(secrets.Options{
		Signer: ca, Roots: func() []*x509.Certificate { return roots }, TTL: cfg.CertTTL,
		Impersonate: true, Log: log.With("component", "secrets"),
	})
	if err != nil {
		return err
	}
	m := metrics.New()

	// Bind everything first: a port in use must fail start-up, not a later connection.
	lc := socket.ListenConfig(0)
	bind := func(name string, addr fmt.Stringer) (net.Listener, error) {
		l, err := lc.Listen(ctx, "tcp", addr.String())
		if err != nil {
			return nil, fmt.Errorf("binding the %s listener on %s: %w", name, addr, err)
		}
		return l, nil
	}
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	// In in-pod mode the proxy ports are opened inside each pod's network namespace, not here.
	names := []string{"readiness", "stats", "admin", "outbound", "inbound", "inbound plaintext"}
	addrs := []fmt.Stringer{cfg.Readiness, cfg.Stats, cfg.Admin, cfg.Outbound, cfg.Inbound, cfg.Plaintext}
	if cfg.InPod {
		names, addrs = names[:3], addrs[:3]
	}
	for i, a := range addrs {
		l, err := bind(names[i], a)
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
	}
	readyL, statsL, adminL := listeners[0], listeners[1], listeners[2]

	authorizer := &proxy.PolicyAuthorizer{Policies: policies.Current, Log: log.With("component", "authz")}
	px, err := proxy.New(proxy.Options{
		Node: cfg.NodeName, State: store.Snapshot, Certs: certs, Roots: func() []*x509.Certificate { return roots },
		TrustDomain: cfg.TrustDomain, Metrics: m, Log: log, Authorizer: authorizer,
	})
	if err != nil {
		return err
	}

	var ready atomic.Bool
	servers := []*http.Server{
		{Handler: admin.Readiness(&ready), ReadHeaderTimeout: 5 * time.Second},
		{Handler: statsMux(m), ReadHeaderTimeout: 5 * time.Second},
		{Handler: admin.Handler(store.Snapshot), ReadHeaderTimeout: 5 * time.Second},
	}
	runCtx, stopRun := context.WithCancel(context.Background()) // outlives ctx by the drain period
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return certs.Run(gctx) })
	// Open connections a policy change now denies are closed (Rust ztunnel's PolicyWatcher).
	g.Go(func() error { return authorizer.Run(gctx, policies.Changed, store.Snapshot) })
	if xdsClient != nil {
		g.Go(func() error { return xdsClient.Run(gctx) })
	}
	for i, srv := range servers {
		l := []net.Listener{readyL, statsL, adminL}[i]
		g.Go(func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	var pods *inpod.Manager
	var zdsClient *zds.Client
	if cfg.InPod {
		if err := socket.InitNetns(); err != nil {
			return err
		}
		pods, err = inpod.New(inpod.Options{
			Start: inpod.Starter{Proxy: px, ClusterID: cfg.ClusterID, Log: log.With("component", "inpod")}.Start,
			Drain: cfg.Drain, Log: log.With("component", "inpod"),
		})
		if err != nil {
			return err
		}
		// pkg/zds names itself ("component": "zds-client").
		zdsClient, err = zds.NewClient(zds.ClientOptions{Path: cfg.ZDSPath, Handler: pods, Log: log})
		if err != nil {
			return err
		}
		g.Go(func() error { return zdsClient.Run(gctx) })
	} else {
		outL, inL, plainL := listeners[3], listeners[4], listeners[5]
		g.Go(func() error { return px.ServeOutbound(outL) })
		g.Go(func() error { return px.ServeInbound(inL) })
		g.Go(func() error { return px.ServePlaintext(plainL) })
	}

	// Not ready until the first workload snapshot is in: a connection before it would be
	// treated as going to an unknown destination. In in-pod mode, not before the node
	// agent's pod snapshot either: until then some pods have no listeners.
	select {
	case <-synced:
	case <-ctx.Done():
		stopRun()
		err := g.Wait()
		if pods != nil {
			pods.Close()
		}
		return err
	}
	if zdsClient == nil || waitZDS(ctx, gctx, zdsClient) == nil {
		// Prefetch the certificates of this node's enrolled workloads so their first
		// connection is fast.
		prefetch := prefetchIdentities(store.Snapshot(), cfg.NodeName)
		certs.Prefetch(prefetch...)
		ready.Store(true)
		attrs := []any{"node", cfg.NodeName, "prefetchedIdentities", len(prefetch), "readiness", readyL.Addr().String(), "stats", statsL.Addr().String(), "admin", adminL.Addr().String()}
		if pods != nil {
			attrs = append(attrs, "mode", "in-pod", "zds", cfg.ZDSPath, "pods", len(pods.Pods()))
		} else {
			attrs = append(attrs, "mode", "node", "outbound", listeners[3].Addr().String(), "inbound", listeners[4].Addr().String(), "plaintext", listeners[5].Addr().String())
		}
		log.Info("ztunnel ready", attrs...)
	}

	select {
	case <-ctx.Done():
	case <-gctx.Done(): // a server failed
	}
	ready.Store(false)
	log.Info("draining", "for", cfg.Drain)
	if pods != nil {
		_ = zdsClient.Close() // no more pods
		pods.Close()          // close every pod's listeners, drain their connections
	}
	px.Drain(cfg.Drain) // stop accepting, let connections finish, then cut them
	for _, srv := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	stopRun()
	return g.Wait()
}

// prefetchIdentities returns the identities whose certificates ztunnel fetches before the
// first connection needs one: those of the workloads on node that take HBONE, that is whose
// traffic is redirected to ztunnel (enrolled), each once. A workload outside the mesh (no
// redirection, a host-network pod) never has its traffic go through ztunnel, so it gets no
// certificate. As Rust ztunnel's should_prefetch_certificate (src/cert_fetcher.rs), being
// wrong costs only latency: a missing certificate is fetched on the first connection.
func prefetchIdentities(snap *meshstate.Snapshot, node string) []identity.ID {
	var out []identity.ID
	seen := map[identity.ID]bool{}
	snap.Workloads(func(w *meshstate.Workload) {
		if node == "" || w.GetNode() != node || w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE || seen[w.Identity] {
			return
		}
		seen[w.Identity] = true
		out = append(out, w.Identity)
	})
	return out
}

// waitZDS waits for the node agent's first pod snapshot, until ctx ends or a server
// failed (gctx).
func waitZDS(ctx, gctx context.Context, c *zds.Client) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(gctx, cancel)()
	return c.WaitReady(wctx)
}

func statsMux(m *metrics.Metrics) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.Handle("/stats/prometheus", m.Handler())
	return mux
}

// loadLocal applies the file's workloads and services to store and its policies to policies.
func loadLocal(store *meshstate.Store, policies *discovery.PolicyStore, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading local config: %w", err)
	}
	cfg, err := localconfig.Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := store.Apply(cfg.Addresses, nil); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := policies.Apply(cfg.Policies, nil); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
