// Package config is the waypoint's configuration: environment variables (ztunnel's names
// and defaults where they overlap, Istio's where they exist), parsed once at start into a
// typed, validated Config. Nothing else in the waypoint reads the environment.
package config

import (
	"fmt"
	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
	"net/netip"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// Environment variable names.
const (
	EnvXDSAddress     = "XDS_ADDRESS" // host:port of istiod-lite's xDS server, or unix:///path
	EnvPodName        = "POD_NAME"
	EnvPodNamespace   = "POD_NAMESPACE"
	EnvInstanceIP     = "INSTANCE_IP"
	EnvGatewayName    = "GATEWAY_NAME"    // the Gateway this waypoint serves
	EnvServiceAccount = "SERVICE_ACCOUNT" // the waypoint's own: its identity
	EnvTrustDomain    = "TRUST_DOMAIN"
	EnvCAAddress      = "CA_ADDRESS"
	EnvCAServerName   = "CA_SERVER_NAME"
	EnvRootCertPath   = "ROOT_CERT_PATH"
	EnvTokenPath      = "TOKEN_PATH"
	EnvClusterID      = "CLUSTER_ID"
	EnvCertTTL        = "SECRET_TTL"
	EnvDrainDuration  = "DRAIN_DURATION"
	EnvInboundAddr    = "INBOUND_ADDR"   // :15008
	EnvReadinessAddr  = "READINESS_ADDR" // :15021
	EnvStatsAddr      = "STATS_ADDR"     // :15020
	EnvLogLevel       = "LOG_LEVEL"
	EnvAccessLog      = "ACCESS_LOG" // "true" (default) writes one line per request to stdout
	// EnvWorkerThreads is how many Ps the waypoint runs on; unset: envconfig.Workers'
	// default (half the CPUs of its limit or node, 1 to 2).
	EnvWorkerThreads = "WORKER_THREADS"
)

// Config is the waypoint's validated configuration.
type Config struct {
	XDSAddress, CAAddress, CAServerName string
	PodName, PodNamespace               string
	InstanceIP                          netip.Addr
	GatewayName                         string
	// Identity is spiffe://<TrustDomain>/ns/<PodNamespace>/sa/<ServiceAccount>.
	Identity                identity.ID
	TrustDomain             string
	RootCertPath, TokenPath string
	ClusterID               string
	CertTTL, Drain          time.Duration
	Inbound, Readiness      netip.AddrPort
	Stats                   netip.AddrPort
	LogLevel                string
	AccessLog               bool
	// WorkerThreads is WORKER_THREADS, 0 when unset (envconfig.Workers decides).
	WorkerThreads int
}

// GatewayKey is the name of the Gateway's own route configuration.
func (c Config) GatewayKey() string { return "gateway/" + c.PodNamespace + "/" + c.GatewayName }

// FromEnv parses the configuration from getenv. Every bad value is reported, by name.
func FromEnv(getenv func(string) string) (Config, error) {
	r := envconfig.New(getenv)
	str, required, addr, dur := r.String, r.Required, r.AddrPort, r.Duration
	c := Config{
		XDSAddress:   str(EnvXDSAddress, "istiod.istio-system.svc:15012"),
		CAAddress:    str(EnvCAAddress, "istiod.istio-system.svc:15012"),
		CAServerName: str(EnvCAServerName, "istiod.istio-system.svc"),
		PodName:      required(EnvPodName),
		PodNamespace: required(EnvPodNamespace),
		GatewayName:  required(EnvGatewayName),
		TrustDomain:  str(EnvTrustDomain, identity.DefaultTrustDomain),
		RootCertPath: str(EnvRootCertPath, "/var/run/secrets/istio/root-cert.pem"),
		TokenPath:    str(EnvTokenPath, "/var/run/secrets/tokens/istio-token"),
		ClusterID:    str(EnvClusterID, "Kubernetes"),
		CertTTL:      dur(EnvCertTTL, 24*time.Hour),
		Drain:        dur(EnvDrainDuration, 5*time.Second),
		Inbound:      addr(EnvInboundAddr, "0.0.0.0:15008"),
		Readiness:    addr(EnvReadinessAddr, "0.0.0.0:15021"),
		Stats:        addr(EnvStatsAddr, "0.0.0.0:15020"),
		LogLevel:     r.LogLevel(EnvLogLevel, "info"),
	}
	if required(EnvInstanceIP) != "" {
		c.InstanceIP = r.Addr(EnvInstanceIP)
	}
	sa := str(EnvServiceAccount, c.GatewayName) // Istio names the waypoint's account after the Gateway
	if c.PodNamespace != "" && sa != "" {
		id, err := identity.New(c.TrustDomain, c.PodNamespace, sa)
		if err != nil {
			r.Fail(fmt.Errorf("%s=%q, %s=%q, %s=%q: %w", EnvTrustDomain, c.TrustDomain, EnvPodNamespace, c.PodNamespace, EnvServiceAccount, sa, err))
		}
		c.Identity = id
	}
	c.AccessLog = r.Bool(EnvAccessLog, true)
	c.WorkerThreads = r.Count(EnvWorkerThreads, 0)
	if c.CertTTL <= 0 || c.Drain < 0 {
		r.Fail(fmt.Errorf("%s must be positive and %s not negative", EnvCertTTL, EnvDrainDuration))
	}
	return c, r.Err()
}
