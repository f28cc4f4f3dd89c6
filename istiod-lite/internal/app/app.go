// Package app is istiod-lite's composition root: it binds the listeners, connects to
// Kubernetes, loads or creates the CA root, starts the informers, the root publisher, the
// xDS controller (workload API, authorization and the waypoints' L7 configuration), the
// waypoint deployer, the HTTPRoute status writer and the gRPC CA and delta xDS services, and
// shuts them down in order. Nothing imports it but main.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/ca"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/config"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/controller"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/kube"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/routestatus"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/translate"
	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/waypoint"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

const (
	resyncPeriod = 10 * time.Minute
	// servingCertTTL is the validity of istiod-lite's own TLS certificate (re-issued at half-life).
	servingCertTTL = 24 * time.Hour
	shutdownGrace  = 5 * time.Second
)

// Run serves until ctx ends, then stops gracefully. Start-up errors (a busy port, an
// unreachable apiserver, unusable CA material) are returned before anything serves.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	grpcLis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listening for gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	defer grpcLis.Close()
	httpLis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listening for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	defer httpLis.Close()

	var ready atomic.Bool
	health := &http.Server{Handler: healthMux(&ready), ReadHeaderTimeout: 5 * time.Second}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHTTP(ctx, health, httpLis) })

	client, istio, gateways, err := kubeClients(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	store := &kube.RootStore{Client: client, Namespace: cfg.Namespace, TrustDomain: cfg.TrustDomain, RootTTL: cfg.RootCertTTL, Log: log}
	bundle, err := store.Load(ctx)
	if err != nil {
		return errors.Join(err, stop(health, g))
	}

	factory := informers.NewSharedInformerFactory(client, resyncPeriod)
	rootCMs := informers.NewSharedInformerFactoryWithOptions(client, resyncPeriod, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", kube.RootConfigMap).String()
	}))
	pods, err := kube.NewPodIndex(factory)
	if err != nil {
		return err
	}
	publisher, err := kube.NewRootPublisher(client, factory, rootCMs, bundle.RootPEM(), log.With("controller", "root-publisher"))
	if err != nil {
		return err
	}
	// The xDS controller needs whole pods; the CA's pod informer keeps slimmed ones.
	xdsFactory := informers.NewSharedInformerFactory(client, resyncPeriod)
	istioFactory := istioinformers.NewSharedInformerFactory(istio, resyncPeriod)
	var xdsSrv *xdsserver.Server // set below, before the controller runs
	// Gateways and GatewayClasses: the controller's waypoints, and the waypoint deployer. Without
	// the Gateway API CRDs there are no waypoints (install them and restart istiod-lite).
	gatewayFactory := gatewayinformers.NewSharedInformerFactory(gateways, resyncPeriod)
	var waypointGateways gatewayinformers.SharedInformerFactory
	if ok, err := gatewayAPIServed(client); err != nil {
		return err
	} else if ok {
		waypointGateways = gatewayFactory
	} else {
		log.Warn("the Gateway API (gateway.networking.k8s.io/v1 Gateways, GatewayClasses, HTTPRoutes) is not served: waypoints are off until its CRDs are installed and istiod-lite restarts")
		cfg.WaypointImage = ""
	}
	var routeStatus *routestatus.Reconciler // set below when waypoints are on, before the controller runs
	ctrl, err := controller.New(controller.Options{
		Kube: xdsFactory, Istio: istioFactory, Gateway: waypointGateways,
		Translate: translate.Options{TrustDomain: cfg.TrustDomain},
		Policy:    translate.PolicyOptions{RootNamespace: cfg.RootNamespace},
		Pusher:    pushFunc(func(typeURL string, names []string) { xdsSrv.Push(typeURL, names) }),
		ServicesChanged: func() {
			if routeStatus != nil {
				routeStatus.ServicesChanged()
			}
		},
		Log: log.With("controller", "xds"),
	})
	if err != nil {
		return err
	}
	if waypointGateways != nil {
		// HTTPRoute status, from the controller's view of the Services and their waypoints.
		routeStatus, err = routestatus.New(routestatus.Options{
			Client: gateways, Informers: gatewayFactory, Services: ctrl.L7Services, Ready: ctrl.Ready(),
			Log: log.With("controller", "httproute-status"),
		})
		if err != nil {
			return err
		}
	}
	// The waypoint deployer shares the xDS factory's Services and EndpointSlices.
	var deployer *waypoint.Deployer
	if cfg.WaypointImage != "" {
		deployer, err = waypoint.New(waypoint.Options{
			Kube: client, Gateway: gateways, KubeInformers: xdsFactory, GatewayInformers: gatewayFactory,
			Render: waypoint.RenderOptions{
				Image: cfg.WaypointImage, TrustDomain: cfg.TrustDomain,
				CAAddress: cfg.DiscoveryAddress(), XDSAddress: cfg.DiscoveryAddress(), CAServerName: cfg.ServingDNSNames()[0],
			},
			Log: log.With("controller", "waypoint"),
		})
		if err != nil {
			return err
		}
	}
	reviewer := &kube.TokenReviewer{Client: client, Audience: cfg.TokenAudience}
	xdsSrv, err = xdsserver.NewServer(xdsserver.ServerOptions{
		Sources:      ctrl.Sources(),
		Authenticate: func(ctx context.Context) (any, error) { return authenticateStream(ctx, reviewer) },
		Logger:       log.With("service", "xds"),
		Debounce:     -1, // the controller debounces its rebuilds and is the only pusher
	})
	if err != nil {
		return err
	}
	defer xdsSrv.Close()
	caSrv, err := caserver.New(caserver.Options{
		Bundle: bundle, TrustDomain: cfg.TrustDomain,
		DefaultTTL: cfg.DefaultCertTTL, MaxTTL: cfg.MaxCertTTL,
		TrustedNodeAccounts: cfg.TrustedNodeAccounts,
		Auth:                reviewer,
		Pods:                pods,
		Log:                 log.With("service", "ca"),
	})
	if err != nil {
		return err
	}
	serving, err := ca.NewServingCert(bundle, cfg.ServingDNSNames(), servingCertTTL, time.Now)
	if err != nil {
		return err
	}
	grpcSrv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: serving.GetCertificate})),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	)
	pb.RegisterIstioCertificateServiceServer(grpcSrv, caSrv)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(grpcSrv, xdsSrv)

	factory.Start(ctx.Done())
	rootCMs.Start(ctx.Done())
	xdsFactory.Start(ctx.Done())
	istioFactory.Start(ctx.Done())
	gatewayFactory.Start(ctx.Done())
	defer factory.Shutdown()
	defer rootCMs.Shutdown()
	defer xdsFactory.Shutdown()
	defer istioFactory.Shutdown()
	defer gatewayFactory.Shutdown()
	g.Go(func() error { return publisher.Run(ctx) })
	g.Go(func() error { return ctrl.Run(ctx) })
	g.Go(func() error { return xdsSrv.Run(ctx) })
	if routeStatus != nil {
		g.Go(func() error { return routeStatus.Run(ctx) })
	}
	if deployer != nil {
		// Not awaited for readiness: without the Gateway API CRDs it waits for them.
		g.Go(func() error { return deployer.Run(ctx) })
	}
	if !cache.WaitForCacheSync(ctx.Done(), pods.HasSynced) {
		return errors.Join(fmt.Errorf("waiting for the pod cache: %w", ctx.Err()), stop(health, g))
	}
	g.Go(func() error {
		if err := grpcSrv.Serve(grpcLis); err != nil {
			return fmt.Errorf("serving gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		ready.Store(false)
		_ = xdsSrv.Close() // ends the xDS streams, which GracefulStop would wait for
		stopGRPC(grpcSrv)
		return nil
	})
	// xDS streams opened before the first snapshot wait for it; readiness waits too.
	select {
	case <-ctrl.Ready():
	case <-ctx.Done():
		return g.Wait()
	}
	ready.Store(true)
	log.Info("istiod-lite ready", "grpc", grpcLis.Addr().String(), "http", httpLis.Addr().String(),
		"trustDomain", cfg.TrustDomain, "root", bundle.Root.Subject.String(), "rootNotAfter", bundle.Root.NotAfter)
	return g.Wait()
}

func healthMux(ready *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

func serveHTTP(ctx context.Context, srv *http.Server, lis net.Listener) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving HTTP: %w", err)
	}
	return nil
}

// stop ends the health server during a failed start-up.
func stop(health *http.Server, g *errgroup.Group) error {
	_ = health.Close()
	return g.Wait()
}

// stopGRPC drains in-flight requests, then forces the rest closed after shutdownGrace.
func stopGRPC(s *grpc.Server) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		s.Stop()
	}
}

// pushFunc adapts a function to controller.Pusher.
type pushFunc func(typeURL string, names []string)

func (f pushFunc) Push(typeURL string, names []string) { f(typeURL, names) }

// authenticateStream checks the stream's bearer token with TokenReview, as the CA does; the
// caller's identity is the stream's principal.
func authenticateStream(ctx context.Context, reviewer *kube.TokenReviewer) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if token, ok := strings.CutPrefix(v, "Bearer "); ok && token != "" {
			caller, err := reviewer.Authenticate(ctx, token)
			if err != nil && !errors.Is(err, caserver.ErrUnauthenticated) {
				// The review itself failed (apiserver unreachable, throttled): not the
				// caller's fault, so it retries instead of taking its token for bad.
				return nil, status.Errorf(codes.Unavailable, "%v", err)
			}
			return caller, err
		}
	}
	return nil, errors.New("no bearer token in the authorization metadata (send a ServiceAccount token with audience istio-ca)")
}

func kubeClients(kubeconfig string) (kubernetes.Interface, istioclient.Interface, gatewayclient.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("loading Kubernetes client configuration (set --kubeconfig outside a cluster): %w", err)
	}
	cfg.UserAgent = "istiod-lite"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	istio, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("creating Istio client: %w", err)
	}
	gateways, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("creating Gateway API client: %w", err)
	}
	return client, istio, gateways, nil
}

// gatewayAPIServed tells whether the apiserver serves Gateway API v1 Gateways,
// GatewayClasses and HTTPRoutes (their CRDs are installed).
func gatewayAPIServed(client kubernetes.Interface) (bool, error) {
	list, err := client.Discovery().ServerResourcesForGroupVersion("gateway.networking.k8s.io/v1")
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discovering the Gateway API: %w", err)
	}
	var gw, class, routes bool
	for _, r := range list.APIResources {
		gw = gw || r.Name == "gateways"
		class = class || r.Name == "gatewayclasses"
		routes = routes || r.Name == "httproutes"
	}
	return gw && class && routes, nil
}
