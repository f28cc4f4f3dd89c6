// Package config is ztunnel's configuration: environment variables (Istio ztunnel's names
// where they exist), parsed once at start into a typed, validated Config. The names are the
// constants below; nothing else in ztunnel reads the environment.
package config

import (
	"fmt"
	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
	"net/netip"
	"strings"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// Environment variable names.
const (
	EnvLocalXDSPath  = "LOCAL_XDS_PATH" // workloads and services from a file instead of xDS
	EnvXDSAddress    = "XDS_ADDRESS"    // host:port of istiod-lite's xDS server, or unix:///path
	EnvPodName       = "POD_NAME"       // this ztunnel's pod, for its xDS node identity
	EnvPodNamespace  = "POD_NAMESPACE"
	EnvInstanceIP    = "INSTANCE_IP"
	EnvCAAddress     = "CA_ADDRESS"             // host:port of the Istio CA, or unix:///path
	EnvCAServerName  = "CA_SERVER_NAME"         // name in the CA's serving certificate
	EnvRootCertPath  = "ROOT_CERT_PATH"         // mesh root(s), PEM
	EnvTokenPath     = "TOKEN_PATH"             // projected ServiceAccount token, audience istio-ca
	EnvTrustDomain   = "TRUST_DOMAIN"           // default for workloads that name none
	EnvRootNamespace = "ROOT_NAMESPACE"         // mesh root namespace, as istiod-lite's
	EnvNodeName      = "NODE_NAME"              // this ztunnel's node: it serves the workloads on it
	EnvCertTTL       = "SECRET_TTL"             // requested workload certificate validity
	EnvDrainDuration = "DRAIN_DURATION"         // how long connections may finish after SIGTERM
	EnvClusterID     = "CLUSTER_ID"             // sent to the CA as clusterid
	EnvOutboundAddr  = "OUTBOUND_ADDR"          // :15001
	EnvInboundAddr   = "INBOUND_ADDR"           // :15008
	EnvPlaintextAddr = "INBOUND_PLAINTEXT_ADDR" // :15006
	EnvReadinessAddr = "READINESS_ADDR"         // :15021
	EnvStatsAddr     = "STATS_ADDR"             // :15020
	EnvAdminAddr     = "ADMIN_ADDR"             // localhost:15000
	EnvLogLevel      = "LOG_LEVEL"              // debug, info, warn, error
	// EnvInPodEnabled turns on in-pod mode (Istio's name): ztunnel takes the pods of its node
	// from the CNI node agent over ZDS and opens :15001, :15006 and :15008 inside each pod's
	// network namespace instead of on the node. Default false here, so ztunnel also runs as a
	// plain node-level proxy (the tests' mode); the Helm chart sets it to true.
	EnvInPodEnabled = "INPOD_ENABLED"
	// EnvZDSPath is the node agent's ZDS socket (unix SOCK_SEQPACKET), used in in-pod mode.
	EnvZDSPath = "ZDS_PATH"
	// EnvWorkerThreads (Rust ztunnel's name) is how many Ps ztunnel runs on; unset:
	// envconfig.Workers' default.
	EnvWorkerThreads = envconfig.EnvWorkerThreads
)

// DefaultZDSPath is where Istio's CNI node agent serves ZDS (pkg/zds.DefaultPath).
const DefaultZDSPath = "/var/run/ztunnel/ztunnel.sock"

// Config is ztunnel's validated configuration.
type Config struct {
	LocalXDSPath string
	XDSAddress   string
	PodName      string
	PodNamespace string
	InstanceIP   string
	CAAddress    string
	CAServerName string
	RootCertPath string
	TokenPath    string
	TrustDomain  string
	// RootNamespace is the mesh root namespace; a GLOBAL policy from elsewhere is NACKed.
	RootNamespace string
	NodeName      string
	ClusterID     string
	CertTTL       time.Duration
	Drain         time.Duration
	// Listener addresses.
	Outbound, Inbound, Plaintext, Readiness, Stats, Admin netip.AddrPort
	LogLevel                                              string
	// InPod turns on in-pod mode: pods come from the node agent over ZDS at ZDSPath and
	// the Outbound, Inbound and Plaintext addresses are not bound on the node; their ports
	// are bound in each pod's network namespace instead.
	InPod   bool
	ZDSPath string
	// WorkerThreads is ZTUNNEL_WORKER_THREADS, 0 when unset (envconfig.Workers decides).
	WorkerThreads int
}

// FromEnv parses the configuration from getenv.
func FromEnv(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	str, addr, dur, boolean := r.String, r.AddrPort, r.Duration, r.Bool
	c := Config{
		LocalXDSPath:  str(EnvLocalXDSPath, ""),
		XDSAddress:    str(EnvXDSAddress, "istiod.istio-system.svc:15012"),
		PodName:       str(EnvPodName, "ztunnel"),
		PodNamespace:  str(EnvPodNamespace, "istio-system"),
		InstanceIP:    str(EnvInstanceIP, ""),
		CAAddress:     str(EnvCAAddress, "istiod.istio-system.svc:15012"),
		CAServerName:  str(EnvCAServerName, "istiod.istio-system.svc"),
		RootCertPath:  str(EnvRootCertPath, "/var/run/secrets/istio/root-cert.pem"),
		TokenPath:     str(EnvTokenPath, "/var/run/secrets/tokens/istio-token"),
		TrustDomain:   str(EnvTrustDomain, identity.DefaultTrustDomain),
		RootNamespace: str(EnvRootNamespace, "istio-system"),
		NodeName:      str(EnvNodeName, ""),
		ClusterID:     str(EnvClusterID, "Kubernetes"),
		CertTTL:       dur(EnvCertTTL, 24*time.Hour),
		Drain:         dur(EnvDrainDuration, 5*time.Second),
		Outbound:      addr(EnvOutboundAddr, "0.0.0.0:15001"),
		Inbound:       addr(EnvInboundAddr, "0.0.0.0:15008"),
		Plaintext:     addr(EnvPlaintextAddr, "0.0.0.0:15006"),
		Readiness:     addr(EnvReadinessAddr, "0.0.0.0:15021"),
		Stats:         addr(EnvStatsAddr, "0.0.0.0:15020"),
		Admin:         addr(EnvAdminAddr, "127.0.0.1:15000"),
		LogLevel:      r.LogLevel(EnvLogLevel, "info"),
		InPod:         boolean(EnvInPodEnabled, false),
		ZDSPath:       str(EnvZDSPath, DefaultZDSPath),
		WorkerThreads: r.Count(EnvWorkerThreads, 0),
	}
	if c.NodeName == "" {
		r.Fail(fmt.Errorf("%s is required: ztunnel serves the workloads of its node", EnvNodeName))
	}
	if _, err := identity.New(c.TrustDomain, "ns", "sa"); err != nil {
		r.Fail(fmt.Errorf("%s=%q: %w", EnvTrustDomain, c.TrustDomain, err))
	}
	if c.CertTTL <= 0 || c.Drain < 0 {
		r.Fail(fmt.Errorf("%s must be positive and %s not negative", EnvCertTTL, EnvDrainDuration))
	}
	if !c.Admin.Addr().IsLoopback() {
		r.Fail(fmt.Errorf("%s=%s: the admin server must listen on loopback", EnvAdminAddr, c.Admin))
	}
	if c.InPod && !strings.HasPrefix(c.ZDSPath, "/") {
		r.Fail(fmt.Errorf("%s=%q: want an absolute path to the node agent's socket", EnvZDSPath, c.ZDSPath))
	}
	return c, r.Err()
}
