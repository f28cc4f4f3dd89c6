package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
)

// TestServiceVIPAcrossNodes sends new connections from an enrolled client to a Service
// VIP whose two endpoints run on both nodes: ztunnel (which picks the endpoint for enrolled
// clients) must use both, and report the Service in its metrics.
func TestServiceVIPAcrossNodes(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, ClientNode: "node1"})
	echoes, err := e.k.Pods(ctx(t), ns, "app=echo")
	if err != nil {
		t.Fatal(err)
	}
	nodeOf := map[string]string{}
	for _, p := range echoes {
		nodeOf[p.Name] = p.Node
	}
	vip := strings.TrimSpace(e.kubectl(t, "-n", ns, "get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"))
	const n = 40
	out, err := e.k.Exec(ctx(t), ns, "deploy/client", "client", "--new-connection-per-request", fmt.Sprintf("--count=%d", n),
		"--timeout=3s", "http://"+vip+"/")
	r := mesh.ParseEcho(out)
	if err != nil || r.Codes["200"] != n {
		t.Fatalf("%d requests to %s: codes %v, %v", n, vip, r.Codes, err)
	}
	hits := r.Hostnames
	t.Logf("%d connections to Service VIP %s: %v (pods on nodes %v)", n, vip, hits, nodeOf)
	for pod, node := range nodeOf {
		// Each endpoint's share is binomial(40, 1/2): fewer than 5 is a broken balancer.
		if hits[pod] < 5 {
			t.Errorf("endpoint %s on %s got %d of %d connections, want about half", pod, node, hits[pod], n)
		}
	}
	svc := map[string]string{"source_workload_namespace": ns, "reporter": "source",
		"destination_service": "echo." + ns + ".svc.cluster.local", "connection_security_policy": "mutual_tls"}
	samples, err := e.k.TCPConnections(ctx(t), svc)
	if err != nil {
		t.Fatal(err)
	}
	byWorkloadNode := map[string]float64{}
	for _, s := range samples {
		byWorkloadNode[s.Labels["destination_workload"]] += s.Value
	}
	if total := byWorkloadNode["echo"]; total < n {
		t.Errorf("node1's ztunnel counted %v mutual_tls connections to Service echo, want at least %d: %v", total, n, samples)
	}
}

// TestDNS resolves names from an enrolled pod: the Service by its short and full names and
// the kubernetes Service, and reaches echo by name.
func TestDNS(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	vip := strings.TrimSpace(e.kubectl(t, "-n", ns, "get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"))
	for name, want := range map[string]string{
		"echo":                              vip,
		"echo." + ns + ".svc.cluster.local": vip,
		"kubernetes.default.svc.cluster.local": strings.TrimSpace(e.kubectl(t, "-n", "default", "get", "service", "kubernetes",
			"-o", "jsonpath={.spec.clusterIP}")),
	} {
		// busybox's nslookup tries every search domain and exits 1 if one is NXDOMAIN: the
		// answer is what counts.
		out, err := e.k.Exec(ctx(t), ns, "deploy/client", "nslookup", name)
		if !strings.Contains(out, "Address: "+want) {
			t.Errorf("nslookup %s from an enrolled pod: %v\n%s\nwant address %s", name, err, out, want)
		}
	}
	e.mustEcho(t, ns, 2, "http://echo."+ns+"/")
}
