package config

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
)

func TestParse(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := Parse(nil, env(map[string]string{"POD_NAMESPACE": "mesh"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Namespace != "mesh" || c.TrustDomain != "cluster.local" || c.GRPCAddr != ":15012" || c.MaxCertTTL != 24*time.Hour {
		t.Errorf("defaults: %+v", c)
	}
	if len(c.TrustedNodeAccounts) != 1 || c.TrustedNodeAccounts[0] != (caserver.Account{Namespace: "mesh", Name: "ztunnel"}) {
		t.Errorf("trusted node accounts default = %v, want mesh/ztunnel", c.TrustedNodeAccounts)
	}
	if got := c.ServingDNSNames(); got[0] != "istiod.mesh.svc" {
		t.Errorf("serving names = %v", got)
	}
	if c.WaypointImage != DefaultWaypointImage || c.DiscoveryAddress() != "istiod.mesh.svc:15012" {
		t.Errorf("waypoint image %q, discovery address %q", c.WaypointImage, c.DiscoveryAddress())
	}
	if c, err := Parse([]string{"--waypoint-image=", "--grpc-addr=127.0.0.1:1234"}, env(nil), io.Discard); err != nil || c.WaypointImage != "" || c.DiscoveryAddress() != "istiod.istio-system.svc:1234" {
		t.Errorf("no waypoints: %+v, %v", c, err)
	}

	c, err = Parse([]string{"--max-cert-ttl=1h", "--trusted-node-accounts=a/b,c/d", "--trust-domain=example.org"},
		env(map[string]string{"MAX_WORKLOAD_CERT_TTL": "2h"}), io.Discard)
	if err != nil || c.MaxCertTTL != time.Hour || len(c.TrustedNodeAccounts) != 2 || c.TrustDomain != "example.org" {
		t.Errorf("flags over env: %+v, %v", c, err)
	}

	for name, tt := range map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"bad env duration": {nil, map[string]string{"MAX_WORKLOAD_CERT_TTL": "soon"}, "MAX_WORKLOAD_CERT_TTL"},
		"bad trust domain": {[]string{"--trust-domain=Not Valid"}, nil, "trust domain"},
		"bad address":      {[]string{"--grpc-addr=15012"}, nil, "grpc-addr"},
		"negative ttl":     {[]string{"--max-cert-ttl=-1h"}, nil, "positive"},
		"bad trusted":      {[]string{"--trusted-node-accounts=ztunnel"}, nil, "namespace/serviceaccount"},
		"bad log level":    {[]string{"--log-level=loud"}, nil, "log level"},
		"stray argument":   {[]string{"serve"}, nil, "unexpected arguments"},
		"max beyond root":  {[]string{"--max-cert-ttl=100h", "--root-cert-ttl=10h"}, nil, "exceeds root-cert-ttl"},
	} {
		if _, err := Parse(tt.args, env(tt.env), io.Discard); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tt.want)
		}
	}
}
