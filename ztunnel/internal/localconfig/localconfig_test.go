package localconfig

import (
	"os"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	b, err := os.ReadFile("testdata/two-nodes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	addrs := cfg.Addresses
	if len(addrs) != 6 {
		t.Fatalf("parsed %d addresses, want 4 workloads + 2 services", len(addrs))
	}
	echo := addrs[1].GetWorkload()
	if echo.GetUid() != "cluster1//Pod/default/echo-1" || string(echo.GetAddresses()[0]) != string([]byte{10, 10, 2, 2}) ||
		echo.GetTunnelProtocol().String() != "HBONE" || echo.GetServices()["default/echo.default.svc.cluster.local"].GetPorts()[0].GetTargetPort() != 9090 {
		t.Errorf("echo-1 = %v", echo)
	}
	if got := addrs[3].GetWorkload().GetAddresses()[0]; len(got) != 16 {
		t.Errorf("IPv6 address is %d bytes, want 16", len(got))
	}
	db := addrs[5].GetService()
	if len(db.GetAddresses()) != 1 || len(db.GetAddresses()[0].GetAddress()) != 16 {
		t.Errorf("db service addresses = %v", db.GetAddresses())
	}
}

func TestParseErrors(t *testing.T) {
	for name, tt := range map[string]struct{ in, want string }{
		"bad IP":        {"workloads: [{uid: a, addresses: [10.0.0.300]}]", "workloads[0] (a): addresses[0]"},
		"unknown field": {"workloads: [{uid: a, adresses: [10.0.0.1]}]", "adresses"},
		"unknown top":   {"pods: []", "pods"},
		"bad enum":      {"workloads: [{uid: a, tunnelProtocol: GRE}]", "GRE"},
		"bad svc addr":  {"services: [{hostname: h, addresses: [{address: nope}]}]", "services[0] (h): addresses[0]"},
		"not yaml":      {"workloads: [", "parsing local config"},
		"bad CIDR":      {"policies: [{name: p, namespace: ns1, groups: [{rules: [{matches: [{sourceIps: [10.0.0.0/99]}]}]}]}]", "policies[0] (ns1/p): sourceIps[0]"},
		"bad action":    {"policies: [{name: p, namespace: ns1, action: MAYBE}]", "MAYBE"},
	} {
		if _, err := Parse([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tt.want)
		}
	}
}

func TestParsePolicies(t *testing.T) {
	cfg, err := Parse([]byte(`
policies:
- name: allow-sleep
  namespace: default
  scope: WORKLOAD_SELECTOR
  action: ALLOW
  groups:
  - rules:
    - matches:
      - principals: [{exact: cluster.local/ns/default/sa/sleep}]
        sourceIps: [10.10.0.0/16, "fd00::1"]
        destinationPorts: [8080]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Policies) != 1 {
		t.Fatalf("parsed %d policies, want 1", len(cfg.Policies))
	}
	p := cfg.Policies[0]
	m := p.GetGroups()[0].GetRules()[0].GetMatches()[0]
	if p.GetAction().String() != "ALLOW" || p.GetScope().String() != "WORKLOAD_SELECTOR" || m.GetPrincipals()[0].GetExact() != "cluster.local/ns/default/sa/sleep" {
		t.Errorf("policy = %v", p)
	}
	if ips := m.GetSourceIps(); len(ips) != 2 || ips[0].GetLength() != 16 || len(ips[0].GetAddress()) != 4 || ips[1].GetLength() != 128 {
		t.Errorf("sourceIps = %v", ips)
	}
}

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/two-nodes.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("workloads: [{uid: a, addresses: [10.0.0.1]}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Parse(b) // must not panic
	})
}
