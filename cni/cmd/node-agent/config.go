package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambient-lite/ambient-lite/cni/internal/agent"
	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
	"github.com/ambient-lite/ambient-lite/pkg/zds"
)

// config is the node agent's configuration: flags with environment-variable defaults,
// parsed once at start.
type config struct {
	NodeName     string
	Kubeconfig   string // empty: in-cluster
	ZDSPath      string
	PluginSocket string
	PinRoot      string
	NetnsDir     string
	ProbeSources []netip.Addr
	ReadyAddr    string
	AckTimeout   time.Duration
	// Installer settings; ConfDir empty means the plugin is installed by someone else.
	ConfDir, HostConfDir, BinDir, PluginBinary string
	// PluginTokenFile is where the agent keeps a copy of its ServiceAccount token for the
	// plugin (a node path, so the plugin can read it); SourceTokenFile is the token it copies.
	PluginTokenFile, SourceTokenFile string
	LogLevel                         slog.Level
	// Namespace and DaemonSet name the DaemonSet running the agent, which it reads when it
	// stops to tell an uninstall (the DaemonSet is gone) from a restart. Either empty: the
	// agent always leaves the node as it is.
	Namespace, DaemonSet string
	// UninstallTimeout bounds the decision and the uninstall when the agent stops.
	UninstallTimeout time.Duration
}

// serviceAccountNamespace is where Kubernetes mounts the pod's namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// parseConfig parses args with defaults from getenv; readFile reads the pod's namespace
// when POD_NAMESPACE is not set.
func parseConfig(args []string, getenv func(string) string, readFile func(string) ([]byte, error), stderr io.Writer) (config, error) {
	env := func(name, def string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		return def
	}
	var c config
	var probes, level, ack, uninstallTimeout string
	defaultNamespace := ""
	if b, err := readFile(serviceAccountNamespace); err == nil {
		defaultNamespace = strings.TrimSpace(string(b))
	}
	fs := flag.NewFlagSet("node-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.NodeName, "node-name", env("NODE_NAME", ""), "this node's name (env NODE_NAME; required)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", env("KUBECONFIG", ""), "kubeconfig path; empty means in-cluster (env KUBECONFIG)")
	fs.StringVar(&c.ZDSPath, "zds-path", env("ZDS_PATH", zds.DefaultPath), "ztunnel's ZDS socket, served by the agent (env ZDS_PATH)")
	fs.StringVar(&c.PluginSocket, "plugin-socket", env("PLUGIN_SOCKET", pluginapi.DefaultSocketPath), "socket the CNI plugin calls (env PLUGIN_SOCKET)")
	fs.StringVar(&c.PinRoot, "pin-root", env("BPF_PIN_ROOT", agent.DefaultPinRoot), "bpffs directory for the pods' pinned redirection (env BPF_PIN_ROOT)")
	fs.StringVar(&c.NetnsDir, "netns-dir", env("NETNS_DIR", agent.DefaultNetnsDir), "where the container runtime keeps pod network namespaces (env NETNS_DIR)")
	fs.StringVar(&probes, "probe-sources", env("PROBE_SOURCES", ""), "comma-separated addresses whose TCP to pods is not captured (kubelet probes), besides each pod's default gateway (env PROBE_SOURCES)")
	fs.StringVar(&c.ReadyAddr, "ready-addr", env("READY_ADDR", ":8000"), "address of /readyz and /healthz (env READY_ADDR)")
	fs.StringVar(&ack, "ack-timeout", env("ZDS_ACK_TIMEOUT", "5s"), "how long ztunnel has to acknowledge a pod (env ZDS_ACK_TIMEOUT)")
	fs.StringVar(&c.ConfDir, "cni-conf-dir", env("CNI_CONF_DIR", ""), "CNI config directory to chain the plugin into; empty: do not install (env CNI_CONF_DIR)")
	fs.StringVar(&c.HostConfDir, "host-cni-conf-dir", env("HOST_CNI_CONF_DIR", ""), "the CNI config directory as the node sees it, when mounted elsewhere here (env HOST_CNI_CONF_DIR)")
	fs.StringVar(&c.PluginTokenFile, "plugin-token-file", env("PLUGIN_TOKEN_FILE", "/var/run/ambient-lite/cni/token"), "node path where the agent keeps the token the plugin uses (env PLUGIN_TOKEN_FILE)")
	fs.StringVar(&c.SourceTokenFile, "source-token-file", env("SOURCE_TOKEN_FILE", "/var/run/secrets/kubernetes.io/serviceaccount/token"), "the agent's ServiceAccount token, copied for the plugin (env SOURCE_TOKEN_FILE)")
	fs.StringVar(&c.BinDir, "cni-bin-dir", env("CNI_BIN_DIR", "/opt/cni/bin"), "CNI binary directory (env CNI_BIN_DIR)")
	fs.StringVar(&c.PluginBinary, "plugin-binary", env("PLUGIN_BINARY", "/opt/ambient-lite/ambient-lite-cni"), "the plugin binary to install (env PLUGIN_BINARY)")
	fs.StringVar(&c.Namespace, "namespace", env("POD_NAMESPACE", defaultNamespace), "the agent's namespace (env POD_NAMESPACE; default: the pod's, from its ServiceAccount mount)")
	fs.StringVar(&c.DaemonSet, "daemonset", env("DAEMONSET_NAME", "istio-cni-node"), "the DaemonSet running the agent: when it is gone as the agent stops, the agent removes the mesh from the node (env DAEMONSET_NAME)")
	fs.StringVar(&uninstallTimeout, "uninstall-timeout", env("UNINSTALL_TIMEOUT", "4s"), "bound on deciding and uninstalling when the agent stops; keep it under the pod's terminationGracePeriodSeconds (env UNINSTALL_TIMEOUT)")
	fs.StringVar(&level, "log-level", env("LOG_LEVEL", "info"), "debug, info, warn or error (env LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is required (--node-name or NODE_NAME, from the downward API spec.nodeName)"))
	}
	for name, p := range map[string]string{"zds-path": c.ZDSPath, "plugin-socket": c.PluginSocket, "pin-root": c.PinRoot, "netns-dir": c.NetnsDir} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q must be an absolute path", name, p))
		}
	}
	for _, s := range strings.Split(probes, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("probe-sources: %q is not an IP address", s))
			continue
		}
		c.ProbeSources = append(c.ProbeSources, ip)
	}
	d, err := time.ParseDuration(ack)
	if err != nil || d <= 0 {
		errs = append(errs, fmt.Errorf("ack-timeout %q: want a positive duration like 5s", ack))
	}
	c.AckTimeout = d
	d, err = time.ParseDuration(uninstallTimeout)
	if err != nil || d <= 0 {
		errs = append(errs, fmt.Errorf("uninstall-timeout %q: want a positive duration like 4s", uninstallTimeout))
	}
	c.UninstallTimeout = d
	if err := c.LogLevel.UnmarshalText([]byte(level)); err != nil {
		errs = append(errs, fmt.Errorf("log level %q: want debug, info, warn or error", level))
	}
	return c, errors.Join(errs...)
}
