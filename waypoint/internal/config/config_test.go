package config

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func base() map[string]string {
	return map[string]string{EnvPodName: "waypoint-abc", EnvPodNamespace: "ns1", EnvInstanceIP: "10.0.0.9", EnvGatewayName: "waypoint"}
}

func TestFromEnv(t *testing.T) {
	c, err := FromEnv(env(base()))
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity.String() != "spiffe://cluster.local/ns/ns1/sa/waypoint" || c.GatewayKey() != "gateway/ns1/waypoint" ||
		c.Inbound.Port() != 15008 || c.Stats.Port() != 15020 || c.Readiness.Port() != 15021 || c.Drain != 5*time.Second ||
		c.TokenPath != "/var/run/secrets/tokens/istio-token" || c.RootCertPath != "/var/run/secrets/istio/root-cert.pem" || !c.AccessLog {
		t.Errorf("defaults: %+v", c)
	}
	m := base()
	if c.WorkerThreads != 0 {
		t.Errorf("WorkerThreads = %d unset, want 0 (the default policy)", c.WorkerThreads)
	}
	m[EnvServiceAccount], m[EnvTrustDomain], m[EnvDrainDuration], m[EnvWorkerThreads] = "wp-sa", "example.org", "30", "4"
	c, err = FromEnv(env(m))
	if err != nil || c.Identity.String() != "spiffe://example.org/ns/ns1/sa/wp-sa" || c.Drain != 30*time.Second || c.WorkerThreads != 4 {
		t.Errorf("got %v %v", c.Identity, err)
	}
}

func TestFromEnvErrors(t *testing.T) {
	tests := []struct {
		name, key, value, want string
	}{
		{"missing gateway", EnvGatewayName, "", "GATEWAY_NAME is required"},
		{"missing namespace", EnvPodNamespace, "", "POD_NAMESPACE is required"},
		{"bad ip", EnvInstanceIP, "ten", "INSTANCE_IP"},
		{"bad addr", EnvInboundAddr, ":15008", "INBOUND_ADDR"},
		{"bad duration", EnvDrainDuration, "soon", "DRAIN_DURATION"},
		{"bad level", EnvLogLevel, "loud", "LOG_LEVEL"},
		{"bad trust domain", EnvTrustDomain, "Bad Domain", "TRUST_DOMAIN"},
		{"bad access log", EnvAccessLog, "yes", "ACCESS_LOG"},
		{"zero workers", EnvWorkerThreads, "0", "WORKER_THREADS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base()
			m[tt.key] = tt.value
			_, err := FromEnv(env(m))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error naming %s", err, tt.want)
			}
		})
	}
}
