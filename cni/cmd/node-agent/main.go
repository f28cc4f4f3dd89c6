// Command node-agent is the CNI node agent (one per node, a DaemonSet): it redirects the
// traffic of its node's enrolled pods to ztunnel with in-pod eBPF, serves ztunnel over ZDS
// and the CNI plugin over a unix socket. Configuration is flags with environment defaults
// (see config.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
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
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.ReadFile, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node-agent: invalid configuration:", err)
		os.Exit(2)
	}
	log := newLogger(os.Stderr, cfg.LogLevel)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

// newLogger is the process's logger. The binary's name is its own key, "binary", so that
// the "component" each part sets once (install, lifecycle, zds-server) never repeats a key
// in a JSON line.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("binary", "node-agent")
}

// run serves until ctx ends (SIGTERM). Then, if the agent's DaemonSet is gone, it takes the
// mesh off the node before returning (see agent.DecideShutdown); otherwise (a restart or
// upgrade) it leaves everything, the plugin's socket file included, so that the plugin holds
// new pods in the mesh until the next agent serves. A failure of the agent itself is a
// restart too, never an uninstall.
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
	owner := &agent.Owner{Kube: kube, Namespace: cfg.Namespace, Name: cfg.DaemonSet, Log: log.With("component", "lifecycle")}
	if err := os.MkdirAll(filepath.Dir(cfg.PluginSocket), 0o755); err != nil {
		return fmt.Errorf("creating the plugin socket's directory: %w", err)
	}
	_ = os.Remove(cfg.PluginSocket)
	pluginL, err := net.Listen("unix", cfg.PluginSocket)
	if err != nil {
		return fmt.Errorf("listening for the CNI plugin on %s: %w", cfg.PluginSocket, err)
	}
	// The socket file outlives a restart: the plugin tells "the agent is restarting"
	// (connection refused) from "the agent was uninstalled" (no socket file).
	pluginL.(*net.UnixListener).SetUnlinkOnClose(false)
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
	// Everything runs until stopAll, not until ctx: after SIGTERM the agent may still have
	// to unenroll the node's pods, which needs ZDS and the apiserver.
	base, stopAll := context.WithCancel(context.Background())
	defer stopAll()
	g, gctx := errgroup.WithContext(base)
	g.Go(func() error { return a.Run(gctx) })
	g.Go(func() error { owner.Confirm(gctx); return nil })
	// The installer and the token copy stop first when uninstalling, so that they do not
	// put back what Uninstall removes.
	instCtx, stopInst := context.WithCancel(gctx)
	defer stopInst()
	var instWG sync.WaitGroup
	if inst != nil {
		instWG.Add(2)
		g.Go(func() error {
			defer instWG.Done()
			return copyToken(instCtx, cfg.SourceTokenFile, cfg.PluginTokenFile, log)
		})
		g.Go(func() error { defer instWG.Done(); return inst.Run(instCtx) })
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
	select {
	case <-ctx.Done():
	case <-gctx.Done():
	}
	var uninstallErr error
	uninstalled := false
	if gctx.Err() == nil { // told to stop, and nothing failed
		dctx, cancel := context.WithTimeout(context.Background(), cfg.UninstallTimeout)
		mode, why := owner.Decide(dctx)
		log.Info("node agent stopping", "mode", mode.String(), "why", why)
		if mode == agent.Uninstall {
			stopInst()
			instWG.Wait()
			uninstallErr = uninstall(dctx, a, inst, cfg, log)
			uninstalled = true
		}
		cancel()
	}
	for srv := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	if uninstalled {
		if err := os.Remove(cfg.PluginSocket); err != nil && !errors.Is(err, fs.ErrNotExist) {
			uninstallErr = errors.Join(uninstallErr, fmt.Errorf("removing the plugin socket: %w", err))
		}
	}
	stopAll()
	err = errors.Join(g.Wait(), uninstallErr)
	if uninstalled && uninstallErr == nil {
		log.Info("mesh uninstalled from the node")
	}
	return err
}

// uninstall takes the mesh off the node: the plugin out of the CNI config first (new pods
// no longer call it), then every pod unenrolled, then the plugin's token. The agent
// answers the plugin (no pod is in the mesh) until the caller closes its socket.
func uninstall(ctx context.Context, a *agent.Agent, inst *install.Installer, cfg config, log *slog.Logger) error {
	var errs []error
	if inst != nil {
		if err := inst.Uninstall(); err != nil {
			errs = append(errs, fmt.Errorf("uninstalling the CNI plugin: %w", err))
		}
	}
	if err := a.Uninstall(ctx); err != nil {
		errs = append(errs, fmt.Errorf("unenrolling the node's pods: %w", err))
	}
	if inst != nil {
		if err := os.Remove(cfg.PluginTokenFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing the plugin's token: %w", err))
		} else if err == nil {
			log.Info("removed the CNI plugin's token", "path", cfg.PluginTokenFile)
		}
	}
	return errors.Join(errs...)
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
