package netns

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"istio.io/istio/pkg/zdsapi"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/pkg/zds"
	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// inpodMesh is two nodes running ztunnel in in-pod mode, each with a stand-in CNI node
// agent (a pkg/zds Server) and pods whose netns carry the CNI's real eBPF redirection.
type inpodMesh struct {
	*mesh
	legacy       string // a pod outside the mesh, on node A
	agentA       *zds.Server
	agentB       *zds.Server
	startA       func() (*exec.Cmd, *testenv.Buffer)
	clientNetns  *os.File
	serverNetns  *os.File
	clientWL     zds.Workload
	serverWL     zds.Workload
	serverSeenBy chan string // remote address of each connection the server accepted
}

// newInpodMesh builds the topology. With netfilterClient the client pod is captured as by
// Istio's CNI (nftables REDIRECT to :15001) instead of by the eBPF redirection.
func newInpodMesh(t *testing.T, netfilterClient bool) *inpodMesh {
	t.Helper()
	tp := New(t)
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin, testenv.CapBPF)
	m := &inpodMesh{mesh: &mesh{tp: tp, nodeA: tp.Namespace("node-a"), nodeB: tp.Namespace("node-b"),
		client: tp.Namespace("client"), server: tp.Namespace("server")}, legacy: tp.Namespace("legacy")}
	tp.Link(m.nodeA, "eth0", "10.0.0.1/24", m.nodeB, "eth0", "10.0.0.2/24")
	tp.Link(m.client, "eth0", "10.10.1.2/24", m.nodeA, "vclient", "10.10.1.1/24")
	tp.Link(m.legacy, "eth0", "10.10.3.2/24", m.nodeA, "vlegacy", "10.10.3.1/24")
	tp.Link(m.server, "eth0", "10.10.2.2/24", m.nodeB, "vserver", "10.10.2.1/24")
	tp.Forwarding(m.nodeA)
	tp.Forwarding(m.nodeB)
	tp.Route(m.client, "default", "10.10.1.1")
	tp.Route(m.legacy, "default", "10.10.3.1")
	tp.Route(m.server, "default", "10.10.2.1")
	tp.Route(m.nodeA, "10.10.2.0/24", "10.0.0.2")
	tp.Route(m.nodeA, "10.96.0.0/16", "10.0.0.2")
	tp.Route(m.nodeB, "10.10.1.0/24", "10.0.0.1")
	tp.Route(m.nodeB, "10.10.3.0/24", "10.0.0.1")

	// The CNI's redirection in each mesh pod (not in the legacy one).
	pins := privateBPFFS(t)
	installRedirect(t, m.server, pins, "10.10.2.2")
	if netfilterClient {
		nft(t, tp, m.client, `table ip inpod {
	chain output {
		type nat hook output priority -100
		meta l4proto tcp meta mark & 0xfff != 0x539 ip daddr != 127.0.0.0/8 redirect to :15001
	}
}`)
	} else {
		installRedirect(t, m.client, pins, "10.10.1.2")
	}

	// The server reports who connected to it, then echoes.
	m.serverSeenBy = make(chan string, 16)
	tcpServer(t, tp, m.server, "10.10.2.2:8080", func(c net.Conn) {
		select {
		case m.serverSeenBy <- c.RemoteAddr().String():
		default:
		}
		_, _ = io.Copy(c, c)
	})

	dir := t.TempDir()
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ca := testca.Start(t)
	roots, err := os.ReadFile(ca.RootPath)
	if err != nil {
		t.Fatal(err)
	}
	rootsPath, tokenPath, configPath := write("roots.pem", string(roots)), write("token", "test-token"), write("mesh.yaml", meshConfig)
	bin := buildZtunnel(t)
	agent := func(name string) *zds.Server {
		s, err := zds.NewServer(zds.ServerOptions{Path: filepath.Join(dir, name, "ztunnel.sock")})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = s.Run(ctx) }()
		t.Cleanup(func() { cancel(); s.Close(); <-done })
		return s
	}
	m.agentA, m.agentB = agent("agent-a"), agent("agent-b")
	start := func(ns, node string, agent *zds.Server) func() (*exec.Cmd, *testenv.Buffer) {
		return func() (*exec.Cmd, *testenv.Buffer) {
			return startIn(t, tp, ns, "ztunnel on "+node, []string{
				"LOCAL_XDS_PATH=" + configPath, "NODE_NAME=" + node, "CA_ADDRESS=" + ca.Address,
				"CA_SERVER_NAME=" + testca.ServerName, "ROOT_CERT_PATH=" + rootsPath, "TOKEN_PATH=" + tokenPath,
				"LOG_LEVEL=debug", "DRAIN_DURATION=1s", "INPOD_ENABLED=true", "ZDS_PATH=" + agent.Addr(),
			}, bin)
		}
	}
	m.startA = start(m.nodeA, "node-a", m.agentA)
	m.ztunnelA, m.logA = m.startA()
	m.ztunnelB, m.logB = start(m.nodeB, "node-b", m.agentB)()

	open := func(ns string) *os.File {
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	m.clientNetns, m.serverNetns = open(m.client), open(m.server)
	// The node agent's uids are Kubernetes pod uids, not Istio's workload uids: ztunnel finds
	// the workload by <cluster>//Pod/<namespace>/<name>.
	m.clientWL = zds.Workload{UID: "0b5c1c9e-client", Info: &zdsapi.WorkloadInfo{Name: "client", Namespace: "default", ServiceAccount: "sleep"}, Netns: m.clientNetns}
	m.serverWL = zds.Workload{UID: "7d1f0a2b-server", Info: &zdsapi.WorkloadInfo{Name: "server", Namespace: "default", ServiceAccount: "echo"}, Netns: m.serverNetns}
	return m
}

// add sends AddWorkload to agent and fails the test on a NACK.
func (m *inpodMesh) add(t *testing.T, agent *zds.Server, w zds.Workload) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agent.Add(ctx, w); err != nil {
		t.Fatalf("adding %s: %v", w.UID, err)
	}
}

// del sends DelWorkload to every ztunnel of agent. A killed ztunnel's connection that the
// agent has not noticed yet fails the first attempt (the agent then drops it), so it tries
// twice; Del is idempotent.
func (m *inpodMesh) del(t *testing.T, agent *zds.Server, uid string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := agent.Del(ctx, uid)
	if err != nil {
		t.Logf("deleting %s: %v (retrying)", uid, err)
		err = agent.Del(ctx, uid)
	}
	if err != nil {
		t.Fatalf("deleting %s: %v", uid, err)
	}
}

// roundTripFrom sends payload from ns to dst and returns the echo.
func (m *inpodMesh) roundTripFrom(ns, dst, payload string, timeout time.Duration) (string, error) {
	var got []byte
	err := m.tp.Do(ns, func() error {
		c, err := net.DialTimeout("tcp", dst, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte(payload)); err != nil {
			return err
		}
		_ = c.(*net.TCPConn).CloseWrite()
		got, err = io.ReadAll(c)
		return err
	})
	return string(got), err
}

// lastSeen drains serverSeenBy and returns the last remote address, or "".
func (m *inpodMesh) lastSeen() string {
	last := ""
	for {
		select {
		case a := <-m.serverSeenBy:
			last = a
		default:
			return last
		}
	}
}

// listening reports whether something listens on port in ns.
func (m *inpodMesh) listening(t *testing.T, ns string, port int) bool {
	t.Helper()
	return strings.Contains(m.tp.Run(ns, "ss", "-Hltn"), fmt.Sprintf(":%d ", port))
}

// TestInPodMode: ztunnel in in-pod mode, fed by a stand-in node agent over ZDS, opens its
// listeners inside the pods' network namespaces (captured by the CNI's real sk_lookup
// redirection), carries pod-to-pod traffic over HBONE with mTLS from the client pod's
// netns, takes PERMISSIVE plaintext on :15006, fails closed after DelWorkload, survives a
// restart (the agent replays), and leaks no fd or goroutine per pod.
func TestInPodMode(t *testing.T) {
	m := newInpodMesh(t, false)

	// Not ready until the node agent's snapshot: no agent connection yet counts.
	for _, a := range []*zds.Server{m.agentA, m.agentB} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := a.WaitConnected(ctx); err != nil {
			t.Fatalf("ztunnel never connected to the node agent: %v", err)
		}
		cancel()
	}
	m.waitReady(t, m.nodeA)
	m.waitReady(t, m.nodeB)
	for _, ns := range []string{m.client, m.server} {
		if m.listening(t, ns, 15001) || m.listening(t, ns, 15008) {
			t.Fatalf("listeners in %s before any AddWorkload", ns)
		}
	}
	for _, port := range []int{15001, 15006, 15008} {
		if m.listening(t, m.nodeA, port) {
			t.Errorf("in-pod ztunnel listens on node port %d", port)
		}
	}
	// B's baseline, once its start-up work is done (the prefetched certificate holds a CA
	// connection open).
	waitFor(t, 10*time.Second, "ztunnel B's certificate", func() bool { return strings.Contains(m.logB.String(), "issued certificate") })
	time.Sleep(200 * time.Millisecond)
	baseFDsB, baseGoB := fdCount(t, m.ztunnelB.Process.Pid), goroutines(t, m.tp, m.nodeB)

	// Before the pod is added the redirection fails closed.
	if _, err := m.roundTripFrom(m.client, "10.10.2.2:8080", "x", time.Second); err == nil {
		t.Fatal("client reached the server with no ztunnel listener in its netns")
	}

	m.add(t, m.agentA, m.clientWL)
	m.add(t, m.agentB, m.serverWL)
	for _, ns := range []string{m.client, m.server} {
		for _, port := range []int{15001, 15006, 15008} {
			if !m.listening(t, ns, port) {
				t.Fatalf("nothing listens on :%d in %s after AddWorkload", port, ns)
			}
		}
	}

	// Client pod → its in-pod :15001 → HBONE from its netns → server pod's :15008 → server.
	m.lastSeen()
	for _, dst := range []string{"10.10.2.2:8080", "10.96.0.20:80"} {
		got, err := m.roundTripFrom(m.client, dst, "hello-"+dst, 5*time.Second)
		if err != nil || got != "hello-"+dst {
			t.Fatalf("client → %s: %q, %v", dst, got, err)
		}
	}
	// ztunnel B connects to the server from inside the server's netns: its own address.
	if seen := m.lastSeen(); !strings.HasPrefix(seen, "10.10.2.2:") {
		t.Errorf("server saw a connection from %q, want from its own address (ztunnel in its netns)", seen)
	}
	metricsA := m.get(t, m.nodeA, "http://127.0.0.1:15020/metrics")
	metricsB := m.get(t, m.nodeB, "http://127.0.0.1:15020/metrics")
	for _, want := range []string{`reporter="source"`, `source_principal="spiffe://cluster.local/ns/default/sa/sleep"`, `connection_security_policy="mutual_tls"`} {
		if !strings.Contains(metricsA, want) {
			t.Errorf("ztunnel A metrics lack %s", want)
		}
	}
	for _, want := range []string{`reporter="destination"`, `source_principal="spiffe://cluster.local/ns/default/sa/sleep"`,
		`destination_principal="spiffe://cluster.local/ns/default/sa/echo"`, `connection_security_policy="mutual_tls"`} {
		if !strings.Contains(metricsB, want) {
			t.Errorf("ztunnel B metrics lack %s", want)
		}
	}

	// A pod outside the mesh reaches the server through its in-pod :15006 (PERMISSIVE).
	got, err := m.roundTripFrom(m.legacy, "10.10.2.2:8080", "plain", 5*time.Second)
	if err != nil || got != "plain" {
		t.Fatalf("legacy → server: %q, %v", got, err)
	}
	if seen := m.lastSeen(); !strings.HasPrefix(seen, "10.10.2.2:") {
		t.Errorf("server saw the plaintext connection from %q, want it through ztunnel (from its own address)", seen)
	}
	if b := m.get(t, m.nodeB, "http://127.0.0.1:15020/metrics"); !strings.Contains(b, `connection_security_policy="unknown"`) {
		t.Logf("ztunnel B metrics after plaintext:\n%.3000s", b)
	}

	// Restart ztunnel A: killed outright; the new one gets the client pod replayed.
	_ = m.ztunnelA.Process.Signal(syscall.SIGKILL)
	_ = m.ztunnelA.Wait()
	m.ztunnelA, m.logA = m.startA()
	m.waitReady(t, m.nodeA)
	if ws := m.agentA.Workloads(); len(ws) != 1 || ws[0] != m.clientWL.UID {
		t.Fatalf("agent A holds %v", ws)
	}
	if got, err := m.roundTripFrom(m.client, "10.10.2.2:8080", "after-restart", 5*time.Second); err != nil || got != "after-restart" {
		t.Fatalf("client → server after ztunnel restart: %q, %v", got, err)
	}

	// Del: the client's listeners go, and its traffic fails closed (no unproxied path).
	m.del(t, m.agentA, m.clientWL.UID)
	for _, port := range []int{15001, 15006, 15008} {
		if m.listening(t, m.client, port) {
			t.Errorf(":%d still open in the client netns after DelWorkload", port)
		}
	}
	m.lastSeen()
	if got, err := m.roundTripFrom(m.client, "10.10.2.2:8080", "leak", time.Second); err == nil {
		t.Errorf("client reached the server after DelWorkload: %q", got)
	}
	if seen := m.lastSeen(); seen != "" {
		t.Errorf("server accepted a connection from %s after the client's DelWorkload", seen)
	}

	// Per-pod resources: add and delete the client again on the restarted ztunnel A, and
	// delete the server from B; fds and goroutines come back to where they were.
	time.Sleep(1500 * time.Millisecond) // the drain period (1s) of the deleted pod
	fdsA, goA := fdCount(t, m.ztunnelA.Process.Pid), goroutines(t, m.tp, m.nodeA)
	m.add(t, m.agentA, m.clientWL)
	if got, err := m.roundTripFrom(m.client, "10.10.2.2:8080", "again", 5*time.Second); err != nil || got != "again" {
		t.Fatalf("client → server after re-adding it: %q, %v", got, err)
	}
	m.del(t, m.agentA, m.clientWL.UID)
	m.del(t, m.agentB, m.serverWL.UID)
	settled := func(what string, pid int, ns string, fds, gos int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		var f, g int
		for time.Now().Before(deadline) {
			f, g = fdCount(t, pid), goroutines(t, m.tp, ns)
			if f <= fds && g <= gos {
				t.Logf("%s: %d fds (baseline %d), %d goroutines (baseline %d)", what, f, fds, g, gos)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("%s leaks: %d fds (baseline %d), %d goroutines (baseline %d)", what, f, fds, g, gos)
	}
	settled("ztunnel A after Add+Del of the client", m.ztunnelA.Process.Pid, m.nodeA, fdsA, goA)
	settled("ztunnel B after Del of every pod", m.ztunnelB.Process.Pid, m.nodeB, baseFDsB, baseGoB)
}

// TestInPodNetfilterCapture: a pod captured by netfilter (Istio's CNI) rather than by the
// eBPF redirection: capture.Register finds no program, ztunnel says so and serves anyway,
// taking the original destination from SO_ORIGINAL_DST.
func TestInPodNetfilterCapture(t *testing.T) {
	m := newInpodMesh(t, true)
	m.waitReady(t, m.nodeA)
	m.waitReady(t, m.nodeB)
	m.add(t, m.agentA, m.clientWL)
	m.add(t, m.agentB, m.serverWL)
	if !strings.Contains(m.logA.String(), "no eBPF redirection") {
		t.Error("ztunnel A did not log that the client pod has no eBPF redirection")
	}
	for _, dst := range []string{"10.10.2.2:8080", "10.96.0.20:80"} {
		got, err := m.roundTripFrom(m.client, dst, "nf-"+dst, 5*time.Second)
		if err != nil || got != "nf-"+dst {
			t.Fatalf("client → %s: %q, %v", dst, got, err)
		}
	}
	metricsA := m.get(t, m.nodeA, "http://127.0.0.1:15020/metrics")
	for _, want := range []string{`reporter="source"`, `source_principal="spiffe://cluster.local/ns/default/sa/sleep"`, `connection_security_policy="mutual_tls"`} {
		if !strings.Contains(metricsA, want) {
			t.Errorf("ztunnel A metrics lack %s", want)
		}
	}
}
