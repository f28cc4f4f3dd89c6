package netns

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// benchL7MeshConfig is BenchmarkL7's mesh, as both ztunnels read it and as the test xDS
// server serves it to the waypoint. Node A: client. Node B: echo-v1 (the server pod of
// newMeshWith), echo-v2, and the waypoint pod (not captured), named by its Service VIP
// 10.96.0.30. Service echo (echo-v1 only) uses the waypoint with no HTTPRoute; echo-split
// (both) uses it with an 80/20 HTTPRoute to echo-v1 and echo-v2.
var benchL7MeshConfig = fmt.Sprintf(`
workloads:
- uid: Kubernetes//Pod/default/client
  name: client
  namespace: default
  serviceAccount: sleep
  workloadName: client
  canonicalName: client
  addresses: [10.10.1.2]
  tunnelProtocol: HBONE
  node: node-a
- uid: Kubernetes//Pod/default/echo-v1
  name: echo-v1
  namespace: default
  serviceAccount: echo
  workloadName: echo-v1
  canonicalName: echo
  canonicalRevision: v1
  addresses: [10.10.2.2]
  tunnelProtocol: HBONE
  node: node-b
  services:
    default/echo.default.svc.cluster.local: {}
    default/echo-split.default.svc.cluster.local: {}
    default/echo-v1.default.svc.cluster.local: {}
- uid: Kubernetes//Pod/default/echo-v2
  name: echo-v2
  namespace: default
  serviceAccount: echo
  workloadName: echo-v2
  canonicalName: echo
  canonicalRevision: v2
  addresses: [10.10.4.2]
  tunnelProtocol: HBONE
  node: node-b
  services:
    default/echo-split.default.svc.cluster.local: {}
    default/echo-v2.default.svc.cluster.local: {}
- uid: Kubernetes//Pod/default/waypoint
  name: waypoint
  namespace: default
  serviceAccount: waypoint
  workloadName: waypoint
  canonicalName: waypoint
  addresses: [10.10.3.2]
  node: node-b
  services:
    default/waypoint.default.svc.cluster.local: {}
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: [10.96.0.20]
  ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: {address: {address: %[1]q}, hboneMtlsPort: 15008}
- name: echo-split
  namespace: default
  hostname: echo-split.default.svc.cluster.local
  addresses: [10.96.0.24]
  ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: {address: {address: %[1]q}, hboneMtlsPort: 15008}
- name: echo-v1
  namespace: default
  hostname: echo-v1.default.svc.cluster.local
  addresses: [10.96.0.21]
  ports: [{servicePort: 80, targetPort: 8080}]
- name: echo-v2
  namespace: default
  hostname: echo-v2.default.svc.cluster.local
  addresses: [10.96.0.22]
  ports: [{servicePort: 80, targetPort: 8080}]
- name: waypoint
  namespace: default
  hostname: waypoint.default.svc.cluster.local
  addresses: [10.96.0.30]
  ports: [{servicePort: 15021, targetPort: 15021}, {servicePort: 15008, targetPort: 15008}]
`, base64.StdEncoding.EncodeToString(netip.MustParseAddr("10.96.0.30").AsSlice()))

// benchL7SplitRoute is the HTTPRoute of BenchmarkL7's weighted variant.
const benchL7SplitRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-split}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80, weight: 80}, {name: echo-v2, port: 80, weight: 20}]
`

// Ports of BenchmarkL7's fortio servers and of caddy: the mesh target port (captured on
// node B), the direct port (not captured; also caddy's upstream) and caddy's listener.
const (
	l7FortioMesh, l7FortioDirect, l7Caddy = 8080, 8081, 8082
)

// benchL7Mesh is BenchmarkL7's topology: newMeshWith's two nodes, client and echo-v1,
// plus echo-v2, the waypoint pod and a caddy pod on node B.
type benchL7Mesh struct {
	*mesh
	ca                        *testca.Server
	serverV2, waypoint, caddy string
	xds                       *xdsServer
	waypointCmd, caddyCmd     *exec.Cmd
}

// newBenchL7Mesh builds the topology, runs fortio servers in echo-v1 and echo-v2 and
// configures the test xDS server with what istiod-lite's l7.Translate makes of the two
// Services bound to the waypoint (one with no HTTPRoute, one with benchL7SplitRoute). It
// starts neither the waypoint nor caddy.
func newBenchL7Mesh(t testing.TB, fortio string) *benchL7Mesh {
	t.Helper()
	ca := testca.Start(t)
	m := &benchL7Mesh{mesh: newMeshWith(t, node{ca: ca, config: benchL7MeshConfig}, node{ca: ca, config: benchL7MeshConfig}), ca: ca}
	tp := m.tp
	m.serverV2, m.waypoint, m.caddy = tp.Namespace("echo-v2"), tp.Namespace("waypoint"), tp.Namespace("caddy")
	tp.Link(m.serverV2, "eth0", "10.10.4.2/24", m.nodeB, "vserver2", "10.10.4.1/24")
	tp.Link(m.waypoint, "eth0", "10.10.3.2/24", m.nodeB, "vwaypoint", "10.10.3.1/24")
	tp.Link(m.caddy, "eth0", "10.10.7.2/24", m.nodeB, "vcaddy", "10.10.7.1/24")
	tp.Route(m.serverV2, "default", "10.10.4.1")
	tp.Route(m.waypoint, "default", "10.10.3.1")
	tp.Route(m.caddy, "default", "10.10.7.1")
	for _, cidr := range []string{"10.10.3.0/24", "10.10.4.0/24", "10.10.7.0/24"} {
		tp.Route(m.nodeA, cidr, "10.0.0.2")
	}
	// The direct and caddy paths bypass capture on both nodes; node B sends HBONE for its
	// pods, from node A or from the waypoint, to ztunnel's inbound port.
	nft(t, tp, m.nodeA, fmt.Sprintf(`insert rule ip mesh prerouting iifname "vclient" tcp dport { %d, %d } accept`, l7FortioDirect, l7Caddy))
	nft(t, tp, m.nodeB, fmt.Sprintf(`insert rule ip mesh prerouting tcp dport %d accept`, l7FortioDirect))
	nft(t, tp, m.nodeB, `add rule ip mesh prerouting iifname { "eth0", "vwaypoint" } ip daddr { 10.10.2.0/24, 10.10.4.0/24 } tcp dport 15008 redirect to :15008`)

	for _, s := range []struct {
		ns, addr string
	}{
		{m.server, fmt.Sprintf("10.10.2.2:%d", l7FortioMesh)},
		{m.server, fmt.Sprintf("10.10.2.2:%d", l7FortioDirect)},
		{m.serverV2, fmt.Sprintf("10.10.4.2:%d", l7FortioMesh)},
	} {
		m.background(t, s.ns, fortio, "server", "-http-port", s.addr, "-grpc-port", "disabled", "-redirect-port", "disabled",
			"-tcp-port", "disabled", "-udp-port", "disabled", "-loglevel", "warning")
		m.waitListening(t, s.ns, s.addr)
	}

	// The waypoint's configuration, as istiod-lite would make it.
	svc := func(name string, waypoint bool) l7Service {
		s := l7Service{Namespace: "default", Name: name, Hostname: name + ".default.svc.cluster.local", Ports: []int32{80}}
		if waypoint {
			s.Waypoint = types.NamespacedName{Namespace: "default", Name: "waypoint"}
		}
		return s
	}
	rcs := translateL7(t, l7Input{
		Gateway:    types.NamespacedName{Namespace: "default", Name: "waypoint"},
		Bound:      []l7Service{svc("echo", true), svc("echo-split", true)},
		Services:   []l7Service{svc("echo", true), svc("echo-split", true), svc("echo-v1", false), svc("echo-v2", false)},
		HTTPRoutes: []*gatewayv1.HTTPRoute{decodeYAML[gatewayv1.HTTPRoute](t, benchL7SplitRoute)},
	})
	for _, want := range []string{"default/echo.default.svc.cluster.local", "default/echo-split.default.svc.cluster.local"} {
		if rcs[want] == nil {
			t.Fatalf("l7.Translate made no %s (made %d resources)", want, len(rcs))
		}
	}
	resources := map[string]map[string]proto.Message{addressTypeURL: {}, routeTypeURL: {}}
	for name, a := range addressesFromLocalConfig(t, benchL7MeshConfig) {
		resources[addressTypeURL][name] = a
	}
	for name, rc := range rcs {
		resources[routeTypeURL][name] = rc
	}
	m.xds = startXDS(t, ca, resources)
	return m
}

// startWaypoint runs the waypoint binary bin in the waypoint pod with the deployer's
// defaults (info logs, access log on) plus extraEnv, its output appended to a file (as a
// container runtime would keep it), and waits until it is ready. A running waypoint is
// stopped first.
func (m *benchL7Mesh) startWaypoint(t testing.TB, bin string, extraEnv ...string) {
	t.Helper()
	m.stopWaypoint()
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("waypoint-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "waypoint.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := m.tp.Command(m.waypoint, bin)
	cmd.Env = append([]string{
		"XDS_ADDRESS=" + m.xds.Address, "CA_ADDRESS=" + m.ca.Address, "CA_SERVER_NAME=" + testca.ServerName,
		"ROOT_CERT_PATH=" + m.ca.RootPath, "TOKEN_PATH=" + token, "POD_NAME=waypoint", "POD_NAMESPACE=default",
		"INSTANCE_IP=10.10.3.2", "GATEWAY_NAME=waypoint", "SERVICE_ACCOUNT=waypoint", "DRAIN_DURATION=1s",
		"GODEBUG=" + envconfig.DataPlaneGODEBUG, // as deployed
	}, extraEnv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cluster.StartChild(cmd); err != nil {
		t.Fatal(err)
	}
	_ = logFile.Close()
	m.waypointCmd = cmd
	t.Cleanup(func() {
		m.stopWaypoint()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("waypoint (last 8 kB of its log):\n%s", b)
		}
	})
	m.waitReady(t, m.waypoint)
}

// stopWaypoint ends the running waypoint, if any.
func (m *benchL7Mesh) stopWaypoint() {
	if cmd := m.waypointCmd; cmd != nil {
		m.waypointCmd = nil
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
}

// startCaddy runs caddy in the caddy pod as a plain HTTP reverse proxy (no TLS, no access
// log, no admin endpoint) from 10.10.7.2:l7Caddy to echo-v1's direct port.
func (m *benchL7Mesh) startCaddy(t testing.TB, caddy string) {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "Caddyfile")
	body := fmt.Sprintf(`{
	admin off
	auto_https off
}

http://10.10.7.2:%d {
	bind 10.10.7.2
	reverse_proxy 10.10.2.2:%d
}
`, l7Caddy, l7FortioDirect)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	m.caddyCmd, _ = startIn(t, m.tp, m.caddy, "caddy", []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir},
		caddy, "run", "--config", conf, "--adapter", "caddyfile")
	m.waitListening(t, m.client, fmt.Sprintf("10.10.7.2:%d", l7Caddy))
}

// waitListening waits until addr accepts a TCP connection made from ns.
func (m *mesh) waitListening(t testing.TB, ns, addr string) {
	t.Helper()
	dial := m.tp.DialContext(ns)
	waitFor(t, 10*time.Second, addr+" to listen", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := dial(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
}

// fortioResult is one fortio load run.
type fortioResult struct {
	hist          fortioHistogram
	p50, p90, p99 float64 // ms
	qps           float64 // achieved
	count, errors float64 // requests, answers other than 200
	duration      time.Duration
}

// fortioLoad runs fortio from the client pod: POSTs of a 1 KiB payload to url (fortio's
// echo handler sends it back) at qps (0: as fast as possible) over conns HTTP/1.1
// keep-alive connections for d. Its histogram buckets are in units of 10 µs (-r): 0.1 ms
// wide from 0.6 to 1 ms, 0.2 ms to 2 ms, 0.5 ms to 5 ms (fortio's default unit of 1 ms puts
// every latency between 1 and 2 ms in one bucket, and a percentile there is a guess).
func (m *mesh) fortioLoad(t testing.TB, fortio, url string, qps, conns int, d time.Duration) fortioResult {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fortio.json")
	out, err := m.tp.Command(m.client, fortio, "load", "-qps", strconv.Itoa(qps), "-c", strconv.Itoa(conns), "-t", d.String(),
		"-payload-size", "1024", "-r", "0.00001", "-p", "50,90,99", "-json", path, "-quiet", url).CombinedOutput()
	if err != nil {
		t.Fatalf("fortio to %s: %v\n%s", url, err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		ActualQPS         float64
		ActualDuration    int64 // ns
		DurationHistogram struct {
			fortioHistogram
			Percentiles []struct{ Percentile, Value float64 }
		}
		RetCodes map[string]float64
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("fortio JSON: %v", err)
	}
	r := fortioResult{hist: res.DurationHistogram.fortioHistogram, qps: res.ActualQPS, count: res.DurationHistogram.Count, duration: time.Duration(res.ActualDuration)}
	r.errors = r.count - res.RetCodes["200"]
	if r.errors > 0 {
		t.Errorf("fortio to %s: return codes %v for %v requests", url, res.RetCodes, r.count)
	}
	for _, p := range res.DurationHistogram.Percentiles {
		switch p.Percentile {
		case 50:
			r.p50 = p.Value * 1000
		case 90:
			r.p90 = p.Value * 1000
		case 99:
			r.p99 = p.Value * 1000
		}
	}
	return r
}

// procRSSBytes is process pid's resident set (VmRSS), 0 if it is gone.
func procRSSBytes(pid int) float64 {
	kb, _ := procStatus(pid, "VmRSS")
	return kb * 1024
}

// rssSampler records the largest VmRSS of some processes, sampled every 200 ms until stop.
type rssSampler struct {
	stopc chan struct{}
	done  sync.WaitGroup
	mu    sync.Mutex
	peak  map[int]float64
}

func sampleRSS(pids ...int) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), peak: map[int]float64{}}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, pid := range pids {
				v := procRSSBytes(pid)
				s.mu.Lock()
				s.peak[pid] = max(s.peak[pid], v)
				s.mu.Unlock()
			}
			select {
			case <-s.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// stop ends sampling and returns the peak VmRSS of each process, in bytes.
func (s *rssSampler) stop() map[int]float64 {
	close(s.stopc)
	s.done.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

var waypointPprofBin buildOnce

// buildWaypointPprof builds the waypoint with testdata/waypointpprof added to its main
// package (a build overlay: nothing is written into waypoint/), which serves
// net/http/pprof on BENCH_PPROF_ADDR. Only -bench-l7-profile uses it.
func buildWaypointPprof(t testing.TB) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	overlay, err := json.Marshal(map[string]any{"Replace": map[string]string{
		filepath.Join(root, "waypoint", "cmd", "waypoint", "netnstest_pprof.go"): filepath.Join(root, "tests", "netns", "testdata", "waypointpprof", "pprof.go"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(binDir, "waypoint-pprof-overlay.json")
	if err := os.WriteFile(path, overlay, 0o600); err != nil {
		t.Fatal(err)
	}
	return waypointPprofBin.build(t, "waypoint-pprof", "-overlay", path, "./waypoint/cmd/waypoint")
}

// cpuProfile fetches a CPU profile of seconds from the pprof server at addr (as seen from
// inside ns) into path; run it in a goroutine beside the load.
func (m *mesh) cpuProfile(ns, addr string, seconds int, path string) error {
	client := &http.Client{Transport: &http.Transport{DialContext: m.tp.DialContext(ns)}}
	resp, err := client.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, seconds))
	if err != nil {
		return fmt.Errorf("fetching the CPU profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching the CPU profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return fmt.Errorf("writing the CPU profile: %w", err)
	}
	return f.Close()
}

// pprofTop is `go tool pprof -top` of a profile of bin, by flat and by cumulative time.
func pprofTop(bin, profile string, nodes int) (string, error) {
	var b strings.Builder
	for _, order := range []string{"-flat", "-cum"} {
		out, err := exec.Command("go", "tool", "pprof", "-top", order, "-nodecount", strconv.Itoa(nodes), bin, profile).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go tool pprof: %v\n%s", err, out)
		}
		fmt.Fprintf(&b, "by %s time:\n%s\n", strings.TrimPrefix(order, "-"), out)
	}
	return b.String(), nil
}

// waypointRequests sums the waypoint's istio_requests_total by the value of label.
func (m *benchL7Mesh) waypointRequests(t testing.TB, label string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, l := range strings.Split(m.get(t, m.waypoint, "http://127.0.0.1:15020/metrics"), "\n") {
		if !strings.HasPrefix(l, "istio_requests_total{") {
			continue
		}
		_, rest, ok := strings.Cut(l, label+`="`)
		if !ok {
			continue
		}
		value, _, _ := strings.Cut(rest, `"`)
		n, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("waypoint metrics line %q: %v", l, err)
		}
		out[value] += n
	}
	return out
}
