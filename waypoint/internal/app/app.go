// Package app is the waypoint's composition root: it reads the mesh roots, starts the
// certificate manager (the waypoint's own identity, from the Istio CA) and the delta xDS
// client (workloads and route configurations), binds every listener before serving any,
// runs the HBONE server in front of the proxy and the operator servers (:15020 metrics,
// :15021 readiness), and drains on shutdown. Nothing imports it but main.
package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ambient-lite/ambient-lite/pkg/caclient"
	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/pkg/secrets"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/config"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/discovery"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/metrics"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/proxy"
)

// Run serves until ctx ends, then drains for cfg.Drain and stops. accessLog receives
// the access log lines (nil: none).
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, accessLog io.Writer) error {
	roots, err := mtls.ReadRoots(cfg.RootCertPath)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	rootsFn := func() []*x509.Certificate { return roots }
	state, routes := meshstate.NewStore(cfg.TrustDomain), l7config.NewStore()

	conn, err := xds.Dial(xds.DialOptions{Address: cfg.XDSAddress, ServerName: cfg.CAServerName, Roots: pool, TokenPath: cfg.TokenPath})
	if err != nil {
		return err
	}
	defer conn.Close()
	var mu sync.Mutex
	pending := map[string]bool{discovery.AddressType: true, discovery.RouteType: true}
	synced := make(chan struct{})
	xc, err := xds.NewClient(xds.ClientOptions{
		Conn: conn, Node: discovery.Node(cfg.InstanceIP.String(), cfg.PodName, cfg.PodNamespace, cfg.GatewayName),
		Handler: discovery.Handler(state, routes, func(typeURL string) {
			mu.Lock()
			defer mu.Unlock()
			delete(pending, typeURL)
			if len(pending) == 0 {
				close(synced)
			}
		}),
		Logger: log.With("component", "xds"),
	})
	if err != nil {
		return err
	}
	xc.Watch(discovery.AddressType)
	xc.Watch(discovery.RouteType)

	ca, err := caclient.New(caclient.Options{Address: cfg.CAAddress, Roots: pool, ServerName: cfg.CAServerName,
		TokenPath: cfg.TokenPath, ClusterID: cfg.ClusterID, Log: log.With("client", "ca")})
	if err != nil {
		return err
	}
	defer ca.Close()
	certs, err := secrets.New(secrets.Options{Signer: ca, Roots: rootsFn, TTL: cfg.CertTTL, Log: log.With("component", "secrets")})
	if err != nil {
		return err
	}
	defer certs.Close()

	// Bind everything first: a port in use must fail start-up.
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}()
	for _, b := range []struct {
		name string
		addr fmt.Stringer
	}{{"inbound", cfg.Inbound}, {"readiness", cfg.Readiness}, {"stats", cfg.Stats}} {
		l, err := new(net.ListenConfig).Listen(ctx, "tcp", b.addr.String())
		if err != nil {
			return fmt.Errorf("binding the %s listener on %s: %w", b.name, b.addr, err)
		}
		lns = append(lns, l)
	}
	inL, readyL, statsL := lns[0], lns[1], lns[2]

	m := metrics.New()
	px, err := proxy.New(proxy.Options{
		Identity: cfg.Identity, GatewayKey: cfg.GatewayKey(), State: state.Snapshot, Routes: routes.Current,
		ClientCert: certs.GetClientCertificateFunc(cfg.Identity), Roots: rootsFn,
		Metrics: m, AccessLog: accesslog.New(accessLog), Log: log.With("component", "proxy"),
	})
	if err != nil {
		return err
	}
	defer px.Close()
	tlsCfg, err := mtls.ServerConfig(cfg.Identity.TrustDomain(), certs.GetCertificateFunc(cfg.Identity), rootsFn)
	if err != nil {
		return err
	}
	hs, err := hbone.NewServer(hbone.ServerOptions{TLS: tlsCfg, Handler: px.HandleConnect, Logger: log.With("component", "hbone")})
	if err != nil {
		return err
	}

	var ready atomic.Bool
	stats := http.NewServeMux()
	stats.Handle("/metrics", m.Handler())
	stats.Handle("/stats/prometheus", m.Handler())
	servers := []*http.Server{
		{Handler: readiness(&ready), ReadHeaderTimeout: 5 * time.Second},
		{Handler: stats, ReadHeaderTimeout: 5 * time.Second},
	}
	runCtx, stopRun := context.WithCancel(context.Background()) // outlives ctx by the drain
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return certs.Run(gctx) })
	g.Go(func() error { return xc.Run(gctx) })
	g.Go(func() error { return hs.Serve(gctx, inL) })
	for i, srv := range servers {
		l := []net.Listener{readyL, statsL}[i]
		g.Go(func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}

	// Ready once the waypoint holds its certificate and the first configuration of both
	// types: before that every stream would be refused.
	certErr := make(chan error, 1)
	go func() {
		_, err := certs.Get(gctx, cfg.Identity)
		certErr <- err
	}()
	select {
	case err = <-certErr:
		if err == nil {
			select {
			case <-synced:
				ready.Store(true)
				log.Info("waypoint ready", "identity", cfg.Identity, "gateway", cfg.GatewayKey(), "inbound", inL.Addr().String())
			case <-ctx.Done():
			case <-gctx.Done():
			}
		}
	case <-ctx.Done():
	case <-gctx.Done():
	}
	if err == nil {
		select {
		case <-ctx.Done():
		case <-gctx.Done():
		}
	}
	ready.Store(false)
	log.Info("draining", "for", cfg.Drain)
	dctx, cancel := context.WithTimeout(context.Background(), cfg.Drain)
	defer cancel()
	var dg errgroup.Group
	dg.Go(func() error { return hs.Shutdown(dctx) }) // GOAWAY, no new streams, wait for open ones
	dg.Go(func() error { return px.Shutdown(dctx) }) // requests in flight finish, idle streams close
	if derr := dg.Wait(); derr != nil {
		log.Info("drain period over; closing remaining streams", "err", derr)
	}
	for _, srv := range servers {
		sctx, c := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(sctx)
		c()
	}
	_ = xc.Close()
	stopRun()
	gerr := g.Wait()
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("getting the waypoint certificate: %w", err)
	}
	return gerr
}

func readiness(ready *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
