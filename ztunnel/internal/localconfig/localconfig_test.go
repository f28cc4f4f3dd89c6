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
	addrs, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
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
	} {
		if _, err := Parse([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tt.want)
		}
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
