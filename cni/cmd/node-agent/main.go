// Command node-agent is the CNI node agent (one per node, a DaemonSet): it redirects the
// traffic of its node's enrolled pods to ztunnel with in-pod eBPF, serves ztunnel over ZDS
// and the CNI plugin over a unix socket. Configuration is flags with environment defaults
// (see config.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ambient-lite/ambient-lite/cni/internal/agent"
	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node-agent: invalid configuration:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel})).With("component", "node-agent")
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	kube, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Options{
		NodeName: cfg.NodeName, Kube: kube, ZDSPath: cfg.ZDSPath, PinRoot: cfg.PinRoot, NetnsDir: cfg.NetnsDir,
		ProbeSources: cfg.ProbeSources, AckTimeout: cfg.AckTimeout, Log: log,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.PluginSocket), 0o755); err != nil {
		return fmt.Errorf("creating the plugin socket's directory: %w", err)
	}
	_ = os.Remove(cfg.PluginSocket)
	pluginL, err := net.Listen("unix", cfg.PluginSocket)
	if err != nil {
		return fmt.Errorf("listening for the CNI plugin on %s: %w", cfg.PluginSocket, err)
	}
	if err := os.Chmod(cfg.PluginSocket, 0o600); err != nil {
		return err
	}
	readyL, err := net.Listen("tcp", cfg.ReadyAddr)
	if err != nil {
		return fmt.Errorf("listening for readiness on %s: %w", cfg.ReadyAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	servers := map[*http.Server]net.Listener{
		{Handler: pluginapi.Handler(a), ReadHeaderTimeout: 5 * time.Second}: pluginL,
		{Handler: mux, ReadHeaderTimeout: 5 * time.Second}:                  readyL,
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Run(gctx) })
	for srv, l := range servers {
		g.Go(func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	log.Info("node agent serving", "node", cfg.NodeName, "plugin", cfg.PluginSocket, "ready", readyL.Addr().String())
	<-gctx.Done()
	for srv := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	return g.Wait()
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("loading Kubernetes client configuration (set --kubeconfig outside a cluster): %w", err)
	}
	cfg.UserAgent = "ambient-lite-node-agent"
	return kubernetes.NewForConfig(cfg)
}
