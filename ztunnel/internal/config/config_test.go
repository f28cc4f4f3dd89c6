package config

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFromEnv(t *testing.T) {
	c, err := FromEnv(env(map[string]string{EnvLocalXDSPath: "/etc/ztunnel/local.yaml", EnvNodeName: "node-a", EnvDrainDuration: "30"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Outbound.Port() != 15001 || c.Inbound.Port() != 15008 || c.Plaintext.Port() != 15006 || c.Readiness.Port() != 15021 ||
		c.Stats.Port() != 15020 || c.Admin.String() != "127.0.0.1:15000" || c.Drain != 30*time.Second || c.CertTTL != 24*time.Hour {
		t.Errorf("defaults: %+v", c)
	}
	if c.WorkerThreads != 0 {
		t.Errorf("WorkerThreads = %d unset, want 0 (the default policy)", c.WorkerThreads)
	}
	if c, err := FromEnv(env(map[string]string{EnvNodeName: "n", EnvWorkerThreads: "3"})); err != nil || c.WorkerThreads != 3 {
		t.Errorf("%s=3: WorkerThreads %d, %v", EnvWorkerThreads, c.WorkerThreads, err)
	}
	if c.InPod || c.ZDSPath != "/var/run/ztunnel/ztunnel.sock" {
		t.Errorf("in-pod defaults: InPod=%v ZDSPath=%q; want false and the node agent's socket", c.InPod, c.ZDSPath)
	}
	for name, tt := range map[string]struct {
		env  map[string]string
		want string
	}{
		"no node":      {map[string]string{EnvLocalXDSPath: "f"}, EnvNodeName},
		"bad address":  {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvInboundAddr: ":15008"}, EnvInboundAddr},
		"public admin": {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvAdminAddr: "0.0.0.0:15000"}, "loopback"},
		"bad ttl":      {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvCertTTL: "forever"}, EnvCertTTL},
		"bad level":    {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvLogLevel: "chatty"}, EnvLogLevel},
		"bad td":       {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvTrustDomain: "A B"}, EnvTrustDomain},
		"bad inpod":    {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvInPodEnabled: "yes please"}, EnvInPodEnabled},
		"relative zds": {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvInPodEnabled: "true", EnvZDSPath: "ztunnel.sock"}, EnvZDSPath},
		"zero workers": {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvWorkerThreads: "0"}, EnvWorkerThreads},
		"workers %":    {map[string]string{EnvLocalXDSPath: "f", EnvNodeName: "n", EnvWorkerThreads: "50%"}, EnvWorkerThreads},
	} {
		if _, err := FromEnv(env(tt.env)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to name %s", name, err, tt.want)
		}
	}
}

func TestFromEnvInPod(t *testing.T) {
	for _, tt := range []struct {
		inpod, path string
		want        bool
		wantPath    string
	}{
		{"", "", false, DefaultZDSPath},
		{"true", "", true, DefaultZDSPath},
		{"1", "/run/zds.sock", true, "/run/zds.sock"},
		{"false", "", false, DefaultZDSPath},
		{"FALSE", "relative-is-fine-when-off", false, "relative-is-fine-when-off"},
	} {
		c, err := FromEnv(env(map[string]string{EnvNodeName: "n", EnvInPodEnabled: tt.inpod, EnvZDSPath: tt.path}))
		if err != nil || c.InPod != tt.want || c.ZDSPath != tt.wantPath {
			t.Errorf("INPOD_ENABLED=%q ZDS_PATH=%q: InPod=%v ZDSPath=%q err=%v; want %v %q", tt.inpod, tt.path, c.InPod, c.ZDSPath, err, tt.want, tt.wantPath)
		}
	}
}
