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
	"github.com/ambient-lite/ambient-lite/cni/internal/install"
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
	kube, rc, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	inst, err := installer(cfg, rc, log)
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
			http.Error(w, "not ready: reconciling the node", http.StatusServiceUnavailable)
			return
		}
		if inst != nil {
			if err := inst.Check(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	})
	servers := map[*http.Server]net.Listener{
		{Handler: pluginapi.Handler(a), ReadHeaderTimeout: 5 * time.Second}: pluginL,
		{Handler: mux, ReadHeaderTimeout: 5 * time.Second}:                  readyL,
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Run(gctx) })
	if inst != nil {
		g.Go(func() error { return copyToken(gctx, cfg.SourceTokenFile, cfg.PluginTokenFile, log) })
		g.Go(func() error { return inst.Run(gctx) })
	}
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

func kubeClient(kubeconfig string) (kubernetes.Interface, *rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("loading Kubernetes client configuration (set --kubeconfig outside a cluster): %w", err)
	}
	cfg.UserAgent = "ambient-lite-node-agent"
	// client-go's default (5 requests/s, burst 10) would pace annotations to 200 ms each
	// once a node enrolls a namespace; one agent per node asks little of the apiserver.
	cfg.QPS, cfg.Burst = 50, 100
	k, err := kubernetes.NewForConfig(cfg)
	return k, cfg, err
}

// installer chains the plugin into the node's CNI config, when the agent is told where it is.
func installer(cfg config, rc *rest.Config, log *slog.Logger) (*install.Installer, error) {
	if cfg.ConfDir == "" {
		return nil, nil
	}
	ca := rc.CAData
	if len(ca) == 0 && rc.CAFile != "" {
		b, err := os.ReadFile(rc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the apiserver CA for the plugin: %w", err)
		}
		ca = b
	}
	return install.New(install.Options{
		ConfDir: cfg.ConfDir, HostConfDir: cfg.HostConfDir, BinDir: cfg.BinDir, PluginBinary: cfg.PluginBinary,
		Plugin:     install.PluginConfig{AgentSocket: cfg.PluginSocket},
		Kubeconfig: install.KubeconfigSource{Server: rc.Host, CAData: ca, TokenFile: cfg.PluginTokenFile},
		Log:        log.With("component", "install"),
	})
}

// copyToken keeps dst a copy of src (a projected token that the kubelet rotates), checking
// every minute, until ctx ends.
func copyToken(ctx context.Context, src, dst string, log *slog.Logger) error {
	copyOnce := func() error {
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("reading the token for the plugin: %w", err)
		}
		if old, err := os.ReadFile(dst); err == nil && string(old) == string(b) {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		tmp := dst + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return err
		}
		return os.Rename(tmp, dst)
	}
	if err := copyOnce(); err != nil {
		return err
	}
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := copyOnce(); err != nil {
				log.Warn("refreshing the plugin's token", "err", err)
			}
		}
	}
}
