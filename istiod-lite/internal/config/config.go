// Package config is istiod-lite's configuration: flags with environment-variable defaults,
// parsed once at start into a typed, validated Config. Nothing else reads the environment.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// DefaultWaypointImage is the waypoint image the local cluster's image builder tags.
const DefaultWaypointImage = "ambient-lite.local/waypoint:dev"

// Config is istiod-lite's validated configuration.
type Config struct {
	// Namespace is where istiod-lite runs and keeps its CA Secrets (POD_NAMESPACE).
	Namespace string
	// TrustDomain of the mesh's SPIFFE identities (TRUST_DOMAIN).
	TrustDomain string
	// RootNamespace is MeshConfig.rootNamespace (ROOT_NAMESPACE): its policies without a
	// selector apply mesh-wide. ztunnel must be given the same value.
	RootNamespace string
	// GRPCAddr serves the CA (and later xDS) over TLS; Istio's port is 15012.
	GRPCAddr string
	// HTTPAddr serves /ready and /healthz.
	HTTPAddr string
	// Kubeconfig is a kubeconfig path; empty means in-cluster configuration (KUBECONFIG).
	Kubeconfig string
	// ServiceName is the Service fronting istiod-lite; its DNS names go in the serving certificate.
	ServiceName string
	// DefaultCertTTL applies when a CSR asks for no validity; MaxCertTTL caps all.
	DefaultCertTTL, MaxCertTTL time.Duration
	// RootCertTTL is the validity of a generated self-signed root.
	RootCertTTL time.Duration
	// TrustedNodeAccounts may request other identities on their node (CA_TRUSTED_NODE_ACCOUNTS).
	TrustedNodeAccounts []caserver.Account
	// TokenAudience is the audience callers' tokens must carry.
	TokenAudience string
	// WaypointImage is the image of the waypoints deployed for Gateways of class
	// istio-waypoint (WAYPOINT_IMAGE); empty disables the waypoint deployer.
	WaypointImage string
	LogLevel      slog.Level
}

// Parse reads args (without the program name) with defaults from getenv.
func Parse(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	var envErrs []error
	envDuration := func(name string, def time.Duration) time.Duration {
		v := strings.TrimSpace(getenv(name))
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			envErrs = append(envErrs, fmt.Errorf("environment variable %s=%q: %w", name, v, err))
		}
		return d
	}
	var c Config
	var trusted, level string
	fs := flag.NewFlagSet("istiod-lite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Namespace, "namespace", env("POD_NAMESPACE", "istio-system"), "namespace istiod-lite runs in and keeps its CA Secrets in (env POD_NAMESPACE)")
	fs.StringVar(&c.TrustDomain, "trust-domain", env("TRUST_DOMAIN", identity.DefaultTrustDomain), "trust domain of workload identities (env TRUST_DOMAIN)")
	fs.StringVar(&c.RootNamespace, "root-namespace", env("ROOT_NAMESPACE", "istio-system"), "mesh root namespace: its policies without a selector apply mesh-wide; give ztunnel the same (env ROOT_NAMESPACE)")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", env("GRPC_ADDR", ":15012"), "address of the TLS gRPC server (CA)")
	fs.StringVar(&c.HTTPAddr, "http-addr", env("HTTP_ADDR", ":8080"), "address of the /ready and /healthz server")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", env("KUBECONFIG", ""), "kubeconfig path; empty means in-cluster (env KUBECONFIG)")
	fs.StringVar(&c.ServiceName, "service-name", env("ISTIOD_SERVICE", "istiod"), "name of the Service in front of istiod-lite, for its serving certificate")
	fs.DurationVar(&c.DefaultCertTTL, "default-cert-ttl", envDuration("DEFAULT_WORKLOAD_CERT_TTL", 24*time.Hour), "workload certificate validity when the CSR asks for none")
	fs.DurationVar(&c.MaxCertTTL, "max-cert-ttl", envDuration("MAX_WORKLOAD_CERT_TTL", 24*time.Hour), "maximum workload certificate validity")
	fs.DurationVar(&c.RootCertTTL, "root-cert-ttl", envDuration("CITADEL_SELF_SIGNED_CA_CERT_TTL", 10*365*24*time.Hour), "validity of a generated self-signed root")
	fs.StringVar(&trusted, "trusted-node-accounts", getenv("CA_TRUSTED_NODE_ACCOUNTS"), "comma-separated namespace/serviceaccount of node proxies that may request other identities (default <namespace>/ztunnel)")
	fs.StringVar(&c.TokenAudience, "token-audience", env("TOKEN_AUDIENCE", "istio-ca"), "audience callers' ServiceAccount tokens must carry")
	fs.StringVar(&c.WaypointImage, "waypoint-image", env("WAYPOINT_IMAGE", DefaultWaypointImage), "image of the waypoints deployed for Gateways of class istio-waypoint; empty deploys none (env WAYPOINT_IMAGE)")
	fs.StringVar(&level, "log-level", env("LOG_LEVEL", "info"), "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if len(envErrs) > 0 {
		return Config{}, errors.Join(envErrs...)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if trusted == "" {
		trusted = c.Namespace + "/ztunnel"
	}
	var err error
	if c.TrustedNodeAccounts, err = caserver.ParseAccounts(trusted); err != nil {
		return Config{}, err
	}
	if err := c.LogLevel.UnmarshalText([]byte(level)); err != nil {
		return Config{}, fmt.Errorf("log level %q: %w", level, err)
	}
	return c, c.validate()
}

func (c Config) validate() error {
	var errs []error
	if _, err := identity.New(c.TrustDomain, "ns", "sa"); err != nil {
		errs = append(errs, fmt.Errorf("trust domain %q is invalid: %w", c.TrustDomain, err))
	}
	if c.Namespace == "" || c.ServiceName == "" || c.TokenAudience == "" || c.RootNamespace == "" {
		errs = append(errs, errors.New("namespace, root namespace, service name and token audience must not be empty"))
	}
	for name, addr := range map[string]string{"grpc-addr": c.GRPCAddr, "http-addr": c.HTTPAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", name, addr, err))
		}
	}
	if c.MaxCertTTL <= 0 || c.DefaultCertTTL <= 0 || c.RootCertTTL <= 0 {
		errs = append(errs, errors.New("certificate TTLs must be positive"))
	}
	if c.MaxCertTTL > c.RootCertTTL {
		errs = append(errs, fmt.Errorf("max-cert-ttl %s exceeds root-cert-ttl %s", c.MaxCertTTL, c.RootCertTTL))
	}
	return errors.Join(errs...)
}

// DiscoveryAddress is the host:port proxies in the cluster dial for the CA and xDS: the
// Service's namespaced name and the gRPC port.
func (c Config) DiscoveryAddress() string {
	_, port, _ := net.SplitHostPort(c.GRPCAddr)
	return net.JoinHostPort(c.ServiceName+"."+c.Namespace+".svc", port)
}

// ServingDNSNames are the names clients may dial istiod-lite by.
func (c Config) ServingDNSNames() []string {
	base := c.ServiceName + "." + c.Namespace
	return []string{base + ".svc", base + ".svc.cluster.local", base, c.ServiceName}
}
