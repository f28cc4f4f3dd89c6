package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/gobuild"
	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// mesh is two nodes, each with one pod and a ztunnel, and the node-level capture rules that
// send pod traffic to ztunnel (this shared mode; in-pod capture replaces them later).
type mesh struct {
	tp                 *Topology
	nodeA, nodeB       string
	client, server     string
	ztunnelA, ztunnelB *exec.Cmd
	logA, logB         *testenv.Buffer
}

const meshConfig = `
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
- uid: Kubernetes//Pod/default/server
  name: server
  namespace: default
  serviceAccount: echo
  workloadName: server
  canonicalName: echo
  addresses: [10.10.2.2]
  tunnelProtocol: HBONE
  node: node-b
  services:
    default/echo.default.svc.cluster.local: {}
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: [10.96.0.20]
  ports: [{servicePort: 80, targetPort: 8080}]
`

// node is how one ztunnel is set up: its CA, the roots it trusts, its view of the workloads.
type node struct {
	ca     *testca.Server
	roots  []*testca.Server // trusted in addition to ca's root
	config string           // local config; meshConfig if empty
	drain  string           // DRAIN_DURATION; 1s if empty
}

func newMesh(t testing.TB) *mesh {
	t.Helper()
	ca := testca.Start(t)
	return newMeshWith(t, node{ca: ca}, node{ca: ca})
}

func newMeshWith(t testing.TB, a, b node) *mesh {
	t.Helper()
	tp := New(t)
	for _, tool := range []string{"nft", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.SkipOrFail(t, tool+" is not installed: run make setup")
		}
	}
	m := &mesh{tp: tp, nodeA: tp.Namespace("node-a"), nodeB: tp.Namespace("node-b"), client: tp.Namespace("client"), server: tp.Namespace("server")}
	tp.Link(m.nodeA, "eth0", "10.0.0.1/24", m.nodeB, "eth0", "10.0.0.2/24")
	tp.Link(m.client, "eth0", "10.10.1.2/24", m.nodeA, "vclient", "10.10.1.1/24")
	tp.Link(m.server, "eth0", "10.10.2.2/24", m.nodeB, "vserver", "10.10.2.1/24")
	tp.Forwarding(m.nodeA)
	tp.Forwarding(m.nodeB)
	tp.Route(m.client, "default", "10.10.1.1")
	tp.Route(m.server, "default", "10.10.2.1")
	tp.Route(m.nodeA, "10.10.2.0/24", "10.0.0.2")
	tp.Route(m.nodeA, "10.96.0.0/16", "10.0.0.2")
	tp.Route(m.nodeB, "10.10.1.0/24", "10.0.0.1")
	// Node A: everything the client pod sends over TCP goes to ztunnel's outbound port.
	nft(t, tp, m.nodeA, `table ip mesh {
	chain prerouting {
		type nat hook prerouting priority dstnat
		iifname "vclient" meta l4proto tcp redirect to :15001
	}
}`)
	// Node B: HBONE for its pods goes to ztunnel's inbound port, any other TCP for them to the
	// plaintext port.
	nft(t, tp, m.nodeB, `table ip mesh {
	chain prerouting {
		type nat hook prerouting priority dstnat
		iifname "eth0" ip daddr 10.10.2.0/24 tcp dport 15008 redirect to :15008
		iifname "eth0" ip daddr 10.10.2.0/24 meta l4proto tcp redirect to :15006
	}
}`)

	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tokenPath := write("token", "test-token")
	bin := buildZtunnel(t)
	start := func(ns, name string, n node) (*exec.Cmd, *testenv.Buffer) {
		roots := ""
		for _, ca := range append([]*testca.Server{n.ca}, n.roots...) {
			b, err := os.ReadFile(ca.RootPath)
			if err != nil {
				t.Fatal(err)
			}
			roots += string(b)
		}
		config, drain := n.config, n.drain
		if config == "" {
			config = meshConfig
		}
		if drain == "" {
			drain = "1s"
		}
		return startIn(t, tp, ns, "ztunnel on "+name, []string{
			"LOCAL_XDS_PATH=" + write(name+".yaml", config), "NODE_NAME=" + name, "CA_ADDRESS=" + n.ca.Address,
			"CA_SERVER_NAME=" + testca.ServerName, "ROOT_CERT_PATH=" + write(name+"-roots.pem", roots),
			"TOKEN_PATH=" + tokenPath, "LOG_LEVEL=debug", "DRAIN_DURATION=" + drain,
			"GODEBUG=" + envconfig.DataPlaneGODEBUG, // as deployed
		}, bin)
	}
	m.ztunnelA, m.logA = start(m.nodeA, "node-a", a)
	m.ztunnelB, m.logB = start(m.nodeB, "node-b", b)
	for _, ns := range []string{m.nodeA, m.nodeB} {
		m.waitReady(t, ns)
	}
	return m
}

// startIn runs a command inside ns until the test ends (SIGTERM, then wait), with env as
// its whole environment when not nil; its output is logged if the test failed.
func startIn(t testing.TB, tp *Topology, ns, what string, env []string, name string, args ...string) (*exec.Cmd, *testenv.Buffer) {
	t.Helper()
	cmd := tp.Command(ns, name, args...)
	cmd.Env = env
	out := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cluster.StartChild(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", what, out.String())
		}
	})
	return cmd, out
}

// waitReady polls ztunnel's readiness endpoint inside ns.
func (m *mesh) waitReady(t testing.TB, ns string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var code int
		if resp, err := m.tp.HTTPClient(ns).Get("http://127.0.0.1:15021/healthz/ready"); err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		if code == http.StatusOK {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("ztunnel in %s not ready", ns)
}

// get fetches a URL from inside ns.
func (m *mesh) get(t testing.TB, ns, url string) string {
	t.Helper()
	resp, err := m.tp.HTTPClient(ns).Get(url)
	if err != nil {
		t.Fatalf("GET %s in %s: %v", url, ns, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s in %s: %v", url, ns, err)
	}
	return string(body)
}

// echoServer serves an echo on addr inside ns until the test ends.
func echoServer(t testing.TB, tp *Topology, ns, addr string) {
	t.Helper()
	tcpServer(t, tp, ns, addr, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// tcpServer listens on addr inside ns and runs handle for each connection (closing it
// afterwards) until the test ends.
func tcpServer(t testing.TB, tp *Topology, ns, addr string, handle func(net.Conn)) {
	t.Helper()
	var l net.Listener
	if err := tp.Do(ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// TestPodToPodOverHBONE: client pod → ztunnel A → HBONE → ztunnel B → server pod, by pod IP
// and by Service VIP, and a capture between the nodes sees TLS records only.
func TestPodToPodOverHBONE(t *testing.T) {
	m := newMesh(t)
	echoServer(t, m.tp, m.server, "10.10.2.2:8080")

	pcap := filepath.Join(t.TempDir(), "between-nodes.pcap")
	dump := m.tp.Command(m.nodeA, "tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-n", "-w", pcap, "tcp")
	var dumpErr testenv.Buffer
	dump.Stderr = &dumpErr
	if err := cluster.StartChild(dump); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "tcpdump to listen", func() bool { return strings.Contains(dumpErr.String(), "listening on") })

	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	payload := "ambient-lite-plaintext-" + hex.EncodeToString(secret)
	for _, dst := range []string{"10.10.2.2:8080", "10.96.0.20:80"} {
		if got := m.roundTrip(t, dst, payload); got != payload {
			t.Fatalf("echo via %s = %q, want %q", dst, got, payload)
		}
	}

	time.Sleep(200 * time.Millisecond) // let tcpdump flush the last packets (-U writes per packet)
	_ = dump.Process.Signal(syscall.SIGTERM)
	_ = dump.Wait()
	text, err := exec.Command("tcpdump", "-r", pcap, "-n", "-A").CombinedOutput()
	if err != nil {
		t.Fatalf("reading capture: %v\n%s", err, text)
	}
	if bytes.Contains(text, []byte(payload)) || bytes.Contains(text, []byte(hex.EncodeToString(secret))) {
		t.Fatal("the plaintext payload crossed between the nodes")
	}
	if !bytes.Contains(text, []byte(".15008:")) {
		t.Fatalf("no HBONE (port 15008) traffic captured between the nodes (tcpdump said %q):\n%.2000s", dumpErr.String(), text)
	}
	for _, port := range []string{".8080:", ".80:"} {
		if bytes.Contains(text, []byte("10.10.2.2"+port)) || bytes.Contains(text, []byte("10.96.0.20"+port)) {
			t.Errorf("a plaintext connection to %s crossed between the nodes", port)
		}
	}

	metricsB := m.get(t, m.nodeB, "http://127.0.0.1:15020/metrics")
	for _, want := range []string{
		`istio_tcp_connections_opened_total{`, `reporter="destination"`, `source_principal="spiffe://cluster.local/ns/default/sa/sleep"`,
		`destination_principal="spiffe://cluster.local/ns/default/sa/echo"`, `connection_security_policy="mutual_tls"`,
	} {
		if !strings.Contains(metricsB, want) {
			t.Errorf("ztunnel B metrics lack %s", want)
		}
	}
	if dumpJSON := m.get(t, m.nodeA, "http://127.0.0.1:15000/config_dump"); !strings.Contains(dumpJSON, "Kubernetes//Pod/default/server") {
		t.Errorf("config_dump lacks the server workload: %.500s", dumpJSON)
	}
}

// roundTrip sends payload from the client pod to dst and returns the echo.
func (m *mesh) roundTrip(t testing.TB, dst, payload string) string {
	t.Helper()
	var got []byte
	err := m.tp.Do(m.client, func() error {
		c, err := net.DialTimeout("tcp", dst, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(payload)); err != nil {
			return err
		}
		_ = c.(*net.TCPConn).CloseWrite()
		got, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		t.Fatalf("client → %s: %v", dst, err)
	}
	return string(got)
}

func nft(t testing.TB, tp *Topology, ns, rules string) {
	t.Helper()
	cmd := tp.Command(ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
}

func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// binDir holds binaries built for this test binary; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ambient-lite-netns-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var ztunnelBin struct {
	once sync.Once
	path string
	err  error
}

// buildZtunnel builds the ztunnel binary once per test binary.
func buildZtunnel(t testing.TB) string {
	t.Helper()
	ztunnelBin.once.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			ztunnelBin.err = err
			return
		}
		ztunnelBin.path = filepath.Join(binDir, "ztunnel")
		cmd := gobuild.Command(context.Background(), root, "-o", ztunnelBin.path, "./ztunnel/cmd/ztunnel")
		if out, err := cmd.CombinedOutput(); err != nil {
			ztunnelBin.err = fmt.Errorf("building ztunnel: %v\n%s", err, out)
		}
	})
	if ztunnelBin.err != nil {
		t.Fatal(ztunnelBin.err)
	}
	return ztunnelBin.path
}
