package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
)

// localcluster drives the command as the Makefile does, with its own cluster dir and TMPDIR.
type localcluster struct {
	t      *testing.T
	exe    string
	dir    string
	tmp    string
	binDir string
}

func newLocalcluster(t *testing.T) *localcluster {
	t.Helper()
	binDir, err := cluster.ResolveBinDir("")
	if err != nil {
		testenv.SkipOrFail(t, err.Error())
	}
	exe := filepath.Join(t.TempDir(), "localcluster")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("building localcluster: %v\n%s", err, out)
	}
	return &localcluster{t: t, exe: exe, dir: filepath.Join(t.TempDir(), "cluster"), tmp: t.TempDir(), binDir: binDir}
}

func (l *localcluster) run(args ...string) (stdout string, err error) {
	l.t.Helper()
	cmd := exec.Command(l.exe, append([]string{args[0], "--dir", l.dir}, args[1:]...)...)
	cmd.Env = append(os.Environ(), cluster.EnvBinDir+"="+l.binDir, "TMPDIR="+l.tmp)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	l.t.Logf("localcluster %s: %s", strings.Join(args, " "), strings.TrimSpace(errOut.String()))
	if err != nil {
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), err
}

func (l *localcluster) kubectl(args ...string) (string, error) {
	l.t.Helper()
	cmd := exec.Command(filepath.Join(l.binDir, "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(l.dir, "kubeconfig"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (l *localcluster) mustKubectl(args ...string) string {
	l.t.Helper()
	out, err := l.kubectl(args...)
	if err != nil {
		l.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestClusterWithNodes is the test bed's acceptance test: `make cluster-up NODES=2` gives two
// Ready nodes and CoreDNS without touching the host's network namespace; Istio's echo runs
// spread over both nodes and answers a client pod across nodes, through a ClusterIP Service
// and by every DNS form of its name, with its pod name as hostname; `kubectl exec` and `logs`
// work; `make cluster-down` leaves nothing behind, and a second cluster-up works.
func TestClusterWithNodes(t *testing.T) {
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin)
	l := newLocalcluster(t)
	t.Cleanup(func() { _, _ = l.run("down") })

	before, err := cluster.HostNetworkState()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := l.run("up", "--nodes", "2"); err != nil {
		t.Fatalf("up --nodes 2: %v", err)
	}
	t.Logf("cluster-up with 2 nodes took %s (target < 90 s with cached binaries and images)", time.Since(start).Round(10*time.Millisecond))
	if during, err := cluster.HostNetworkState(); err != nil {
		t.Fatal(err)
	} else if d := lineDiff(before, during); d != "" {
		t.Errorf("the host's network namespace changed while the cluster runs:\n%s", d)
	}
	nodes := l.mustKubectl("get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}`)
	if strings.TrimSpace(nodes) != "node1=True node2=True" {
		t.Errorf("nodes = %q, want node1 and node2 Ready", nodes)
	}

	checkEcho(t, l)

	st := readState(t, l.dir)
	if _, err := l.run("down"); err != nil {
		t.Fatalf("down: %v", err)
	}
	checkNothingLeft(t, l, st)
	if after, err := cluster.HostNetworkState(); err != nil {
		t.Fatal(err)
	} else if d := lineDiff(before, after); d != "" {
		t.Errorf("the host's network namespace differs after down:\n%s", d)
	}

	// A second cluster over the same directory, after the first one's down.
	start = time.Now()
	if _, err := l.run("up", "--nodes", "2"); err != nil {
		t.Fatalf("second up --nodes 2: %v", err)
	}
	t.Logf("second cluster-up took %s", time.Since(start).Round(10*time.Millisecond))
	if out := l.mustKubectl("get", "nodes", "-o", "name"); strings.Fields(out)[0] != "node/node1" || len(strings.Fields(out)) != 2 {
		t.Errorf("second cluster's nodes = %q", out)
	}
	st = readState(t, l.dir)
	if _, err := l.run("down"); err != nil {
		t.Fatalf("second down: %v", err)
	}
	checkNothingLeft(t, l, st)
}

// checkEcho deploys Istio's echo and a client and checks pod networking, Services, DNS,
// hostnames, exec and logs.
func checkEcho(t *testing.T, l *localcluster) {
	t.Helper()
	if _, err := l.run("images", "echo"); err != nil {
		t.Fatalf("loading the echo image: %v", err)
	}
	const ns = "echo-test"
	l.mustKubectl("create", "namespace", ns)
	l.mustKubectl("-n", ns, "apply", "-f", "testdata/echo.yaml")
	if out, err := l.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		desc, _ := l.kubectl("-n", ns, "describe", "pods")
		t.Fatalf("pods not Ready: %v\n%s\n%s", err, out, desc)
	}
	var pods struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct{ NodeName string }
			Status   struct{ PodIP string }
		}
	}
	if err := json.Unmarshal([]byte(l.mustKubectl("-n", ns, "get", "pods", "-o", "json")), &pods); err != nil {
		t.Fatal(err)
	}
	var clientNode string
	echoes := map[string]string{} // pod name -> IP
	echoNodes := map[string]string{}
	for _, p := range pods.Items {
		if p.Metadata.Name == "client" {
			clientNode = p.Spec.NodeName
			continue
		}
		echoes[p.Metadata.Name] = p.Status.PodIP
		echoNodes[p.Metadata.Name] = p.Spec.NodeName
	}
	if len(echoes) != 2 || len(distinct(echoNodes)) != 2 {
		t.Fatalf("echo pods %v on nodes %v, want 2 pods on 2 nodes", echoes, echoNodes)
	}

	// Pod to pod, to the echo pod on the other node; the response names the pod.
	for name, ip := range echoes {
		if echoNodes[name] == clientNode {
			continue
		}
		host := echoHostname(t, l, ns, "http://"+ip+":8080/")
		if host != name {
			t.Errorf("echo at %s (node %s) answered with hostname %q, want its pod name %s", ip, echoNodes[name], host, name)
		}
	}
	// The ClusterIP Service, by address and by every DNS form of its name (search path).
	clusterIP := strings.TrimSpace(l.mustKubectl("-n", ns, "get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"))
	for _, target := range []string{clusterIP, "echo", "echo." + ns, "echo." + ns + ".svc.cluster.local"} {
		host := echoHostname(t, l, ns, "http://"+target+"/")
		if _, ok := echoes[host]; !ok {
			t.Errorf("echo Service as %s answered with hostname %q, want one of %v", target, host, keysOf(echoes))
		}
	}
	// The kubernetes Service reaches the apiserver from a pod.
	out, err := l.kubectl("-n", ns, "exec", "client", "--", "client", "--count=1", "-k", "https://kubernetes.default/version")
	if err != nil || !strings.Contains(out, "StatusCode=200") || !strings.Contains(out, "gitVersion") {
		t.Errorf("client -> https://kubernetes.default/version: %v\n%s", err, out)
	}
	// A name outside the cluster does not exist (and fails fast).
	if out, err := l.kubectl("-n", ns, "exec", "client", "--", "nslookup", "example.com"); err == nil || !strings.Contains(out, "NXDOMAIN") {
		t.Errorf("nslookup example.com = %v\n%s; want NXDOMAIN", err, out)
	}
	// kubectl port-forward to the client pod: the test talks to a loopback port only.
	if host := portForwardHostname(t, l, ns, "client"); host != "client" {
		t.Errorf("through kubectl port-forward the echo server said hostname %q, want client", host)
	}
	// kubectl logs reaches the kubelet too.
	for name := range echoes {
		if logs := l.mustKubectl("-n", ns, "logs", name); !strings.Contains(logs, "Creating Server") {
			t.Errorf("kubectl logs %s = %q, want the echo server's start-up lines", name, logs)
		}
	}
}

// echoHostname asks the echo client in the client pod to call url once and returns the
// Hostname the echo server reported.
func echoHostname(t *testing.T, l *localcluster, ns, url string) string {
	t.Helper()
	out, err := l.kubectl("-n", ns, "exec", "client", "--", "client", "--count=1", "--timeout=5s", url)
	if err != nil || !strings.Contains(out, "StatusCode=200") {
		t.Errorf("client -> %s: %v\n%s", url, err, out)
		return ""
	}
	for _, line := range strings.Split(out, "\n") {
		if _, v, ok := strings.Cut(line, "Hostname="); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Errorf("client -> %s: no Hostname in\n%s", url, out)
	return ""
}

// portForwardHostname runs `kubectl port-forward pod/POD :8080`, calls the echo server through
// the loopback port kubectl picked, and returns the hostname it reported.
func portForwardHostname(t *testing.T, l *localcluster, ns, pod string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(l.binDir, "kubectl"), "-n", ns, "port-forward", "--address=127.0.0.1", "pod/"+pod, ":8080")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(l.dir, "kubeconfig"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// "Forwarding from 127.0.0.1:NNNNN -> 8080"
	line, err := bufio.NewReader(stdout).ReadString('\n')
	fields := strings.Fields(line)
	if err != nil || len(fields) < 3 || fields[0] != "Forwarding" {
		t.Errorf("kubectl port-forward printed %q (%v), want its Forwarding line", line, err)
		return ""
	}
	addr := fields[2]
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Errorf("GET through port-forward %s: %v", addr, err)
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, "Hostname="); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Errorf("GET through port-forward: no Hostname in %q", body)
	return ""
}

// clusterState is what state.json records of a cluster with nodes.
type clusterState struct {
	Processes []struct {
		Name string
		PID  int
	}
	Resources struct {
		Netns   []string
		Mounts  []string
		Cgroups []string
	}
}

func readState(t *testing.T, dir string) clusterState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st clusterState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Resources.Netns) != 4 || len(st.Resources.Cgroups) != 1 {
		t.Fatalf("state records netns %v and cgroups %v; want switch, control plane and 2 nodes, and one cgroup tree", st.Resources.Netns, st.Resources.Cgroups)
	}
	return st
}

// checkNothingLeft checks that no process, netns, mount, cgroup, directory or temporary file
// of the cluster remains.
func checkNothingLeft(t *testing.T, l *localcluster, st clusterState) {
	t.Helper()
	for _, p := range st.Processes {
		if _, err := os.Stat("/proc/" + strconv.Itoa(p.PID)); err == nil && !isZombie(p.PID) {
			t.Errorf("%s (pid %d) still runs after down", p.Name, p.PID)
		}
	}
	for _, p := range processesMentioning(t, l.dir) {
		t.Errorf("process still runs after down: %s", p)
	}
	for _, cg := range st.Resources.Cgroups {
		if left, _ := filepath.Glob("/sys/fs/cgroup/*" + cg); len(left) > 0 {
			t.Errorf("cgroups remain after down: %v", left)
		}
		for _, p := range processesInCgroup(t, cg) {
			t.Errorf("process %s still in cgroup %s after down", p, cg)
		}
	}
	for _, n := range st.Resources.Netns {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			t.Errorf("netns %s remains after down", n)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, l.dir) || strings.Contains(line, "/ambient-lite/") {
			t.Errorf("mount remains after down: %s", line)
		}
	}
	if _, err := os.Stat(l.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster dir %s remains after down (stat err %v)", l.dir, err)
	}
	if left, err := os.ReadDir(l.tmp); err != nil || len(left) > 0 {
		t.Errorf("temporary files remain after down: %v (err %v)", left, err)
	}
}

// processesInCgroup lists live processes whose cgroup (in any hierarchy) is under cg.
func processesInCgroup(t *testing.T, cg string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || isZombie(pid) {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err == nil && bytes.Contains(b, []byte(":"+cg+"/")) {
			out = append(out, e.Name())
		}
	}
	return out
}

// lineDiff lists the lines only in a ("-") or only in b ("+"), or "" if they hold the same.
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out strings.Builder
	for l, n := range count {
		for ; n > 0; n-- {
			out.WriteString("- " + l + "\n")
		}
		for ; n < 0; n++ {
			out.WriteString("+ " + l + "\n")
		}
	}
	return out.String()
}

func distinct(m map[string]string) map[string]bool {
	out := map[string]bool{}
	for _, v := range m {
		out[v] = true
	}
	return out
}

func keysOf(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
