package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
	"github.com/ambient-lite/ambient-lite/tests/images"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
)

// envClusterDir names a running detached cluster (make cluster-up NODES=2) to test instead
// of starting one.
const envClusterDir = "E2E_CLUSTER_DIR"

// ztunnelGrace is the ztunnel chart's terminationGracePeriodSeconds here: its drain (one
// second less) bounds how long a rollout restart keeps an old ztunnel, so the restart tests
// stay short. The chart's default is 30.
const ztunnelGrace = "10"

// e2eImages are loaded into the nodes (cluster start loads pause and coredns).
var e2eImages = []string{images.Echo, images.Ztunnel, images.IstiodLit, images.CNI}

// hostTools are what the suite runs on the machine itself.
var hostTools = []string{"tcpdump", "bpftool", "nsenter"}

// env is the package's cluster with the mesh installed.
type env struct {
	k     *mesh.Kube
	root  string
	c     *cluster.Cluster // nil when E2E_CLUSTER_DIR names a running cluster
	nodes map[string]nodeNS
}

// nodeNS are a node's namespaces, as the host reaches them.
type nodeNS struct {
	Netns string // network namespace file
	Mnt   string // mount namespace file
}

var shared struct {
	once sync.Once
	e    *env
	err  error
	skip string
}

// timings are every test's duration, printed by TestMain.
var timings struct {
	sync.Mutex
	rows []string
}

func TestMain(m *testing.M) {
	start := time.Now()
	code := m.Run()
	if shared.e != nil && shared.e.c != nil {
		stop := time.Now()
		if err := shared.e.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the e2e cluster:", err)
			if code == 0 {
				code = 1
			}
		}
		timings.rows = append(timings.rows, fmt.Sprintf("%-40s %s", "(cluster stop)", time.Since(stop).Round(100*time.Millisecond)))
	}
	if len(timings.rows) > 0 {
		fmt.Printf("e2e timings:\n  %s\n  %-40s %s\n", strings.Join(timings.rows, "\n  "), "total", time.Since(start).Round(100*time.Millisecond))
	}
	os.Exit(code)
}

// record logs how long t took, for TestMain's summary, and the mesh's logs since t
// started if it failed.
func record(t *testing.T, e *env) {
	start := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			e.logMesh(t, start)
		}
		d := time.Since(start).Round(100 * time.Millisecond)
		t.Logf("%s took %s", t.Name(), d)
		timings.Lock()
		timings.rows = append(timings.rows, fmt.Sprintf("%-40s %s", t.Name(), d))
		timings.Unlock()
	})
}

// mustEnv returns the cluster with the mesh, starting it on first use, and records t's time.
func mustEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin, testenv.CapBPF)
	shared.once.Do(func() { shared.e, shared.skip, shared.err = start() })
	if shared.skip != "" {
		testenv.SkipOrFail(t, shared.skip)
	}
	if shared.err != nil {
		t.Fatalf("setting up the e2e cluster: %v", shared.err)
	}
	record(t, shared.e)
	return shared.e
}

// start brings up the cluster (or finds E2E_CLUSTER_DIR's), loads the images and installs
// the charts. A non-empty skip says what the machine lacks.
func start() (e *env, skip string, err error) {
	binDir, err := cluster.ResolveBinDir("")
	if err != nil {
		return nil, err.Error(), nil
	}
	for _, tool := range []string{"kubectl", "helm"} {
		if _, err := os.Stat(filepath.Join(binDir, tool)); err != nil {
			return nil, fmt.Sprintf("%s is not in %s (run `make setup`)", tool, binDir), nil
		}
	}
	for _, tool := range hostTools {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, tool + " is not installed (run `make setup`)", nil
		}
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e = &env{root: root, nodes: map[string]nodeNS{}}
	phase := func(name string, since time.Time) {
		timings.Lock()
		timings.rows = append(timings.rows, fmt.Sprintf("%-40s %s", "("+name+")", time.Since(since).Round(100*time.Millisecond)))
		timings.Unlock()
	}

	t0 := time.Now()
	var kubeconfig, dir string
	if dir = os.Getenv(envClusterDir); dir != "" {
		if e.nodes, kubeconfig, err = runningCluster(dir); err != nil {
			return nil, "", err
		}
		if err := cluster.LoadImagesDetached(ctx, dir, binDir, "", log, e2eImages...); err != nil {
			return nil, "", err
		}
		phase("images into "+dir, t0)
	} else {
		c, err := cluster.Start(ctx, cluster.Options{Nodes: 2, SkipCRDs: true, Log: log})
		if errors.Is(err, cluster.ErrNoBinaries) {
			return nil, err.Error(), nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("starting a 2-node cluster: %w", err)
		}
		e.c, kubeconfig, dir = c, c.Kubeconfig, c.Dir
		for _, n := range c.Nodes {
			ns := nodeNS{Netns: "/run/netns/al-" + c.ID + "-" + n, Mnt: filepath.Join(c.Dir, "ns", n+".mnt")}
			for _, f := range []string{ns.Netns, ns.Mnt} {
				if _, err := os.Stat(f); err != nil {
					_ = c.Stop()
					return nil, "", fmt.Errorf("node %s: %w (has tests/cluster's layout changed?)", n, err)
				}
			}
			e.nodes[n] = ns
		}
		phase("cluster start, 2 nodes", t0)
		t1 := time.Now()
		if err := c.LoadImages(ctx, e2eImages...); err != nil {
			_ = c.Stop()
			return nil, "", err
		}
		phase("images", t1)
	}
	e.k = &mesh.Kube{Kubeconfig: kubeconfig, BinDir: binDir, HelmHome: filepath.Join(dir, "helm-e2e")}
	t2 := time.Now()
	err = e.k.Install(ctx, mesh.InstallOptions{RepoRoot: root, Set: map[string][]string{
		// Debug logs every refused connection: what a failed test prints (logMesh).
		"ztunnel": {"terminationGracePeriodSeconds=" + ztunnelGrace, "logLevel=debug"},
	}})
	if err != nil {
		if e.c != nil {
			_ = e.c.Stop()
		}
		return nil, "", err
	}
	phase("helm install of the 4 charts", t2)
	return e, "", nil
}

// runningCluster reads the node namespaces and kubeconfig of the detached cluster in dir.
func runningCluster(dir string) (map[string]nodeNS, string, error) {
	kubeconfig, running, err := cluster.Running(dir)
	if err != nil || !running {
		return nil, "", fmt.Errorf("%s=%s: no running cluster there (%v)", envClusterDir, dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, "", err
	}
	var st struct {
		Resources struct{ Netns []string }
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, "", err
	}
	nodes := map[string]nodeNS{}
	for _, n := range st.Resources.Netns {
		i := strings.LastIndex(n, "-node")
		if i < 0 {
			continue
		}
		name := n[i+1:]
		nodes[name] = nodeNS{Netns: "/run/netns/" + n, Mnt: filepath.Join(dir, "ns", name+".mnt")}
	}
	if len(nodes) != 2 {
		return nil, "", fmt.Errorf("%s=%s: %d nodes, want 2 (make cluster-up NODES=2)", envClusterDir, dir, len(nodes))
	}
	return nodes, kubeconfig, nil
}

// meshLogTail bounds the lines logMesh prints per pod.
const meshLogTail = 300

// logMesh logs what every mesh pod (ztunnel, node agent, istiod-lite) wrote since start, at
// most meshLogTail lines each: a failure in CI then shows what the data plane saw.
func (e *env) logMesh(t *testing.T, start time.Time) {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := e.k.Pods(c, mesh.SystemNamespace, "")
	if err != nil {
		t.Logf("mesh logs: listing pods: %v", err)
		return
	}
	since := start.Add(-time.Second).UTC().Format(time.RFC3339)
	for _, p := range pods {
		out, err := e.k.Kubectl(c, "-n", mesh.SystemNamespace, "logs", p.Name, "--all-containers",
			"--since-time="+since, fmt.Sprintf("--tail=%d", meshLogTail))
		if err != nil {
			out += "\n(" + err.Error() + ")"
		}
		t.Logf("log of %s (node %s) since %s, last %d lines:\n%s", p.Name, p.Node, since, meshLogTail, out)
	}
}

// ctx is a test's context: cancelled when it ends, bounded in time.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	return c
}

// kubectl runs kubectl and fails t on error.
func (e *env) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.k.Kubectl(ctx(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// app describes the test app of one namespace: Istio's echo (HTTP 8080 behind Service port
// 80, TCP echo on 9090) and a client Deployment.
type app struct {
	// Enrolled labels the namespace istio.io/dataplane-mode=ambient from the start.
	Enrolled bool
	// EchoNode pins the single echo replica to a node; empty runs two replicas, one per node.
	EchoNode string
	// ClientNode pins the client; empty lets the scheduler choose.
	ClientNode string
	// NoEcho deploys the client only.
	NoEcho bool
}

var appTemplate = template.Must(template.New("app").Parse(`apiVersion: v1
kind: ServiceAccount
metadata: {name: echo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
{{- if not .NoEcho}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: {{if .EchoNode}}1{{else}}2{{end}}
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      serviceAccountName: echo
      terminationGracePeriodSeconds: 1
      {{- if .EchoNode}}
      nodeSelector: {kubernetes.io/hostname: {{.EchoNode}}}
      {{- else}}
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchLabels: {app: echo}
            topologyKey: kubernetes.io/hostname
      {{- end}}
      containers:
      - name: echo
        image: ambient-lite.local/echo:dev
        imagePullPolicy: IfNotPresent
        args: ["--port=8080", "--tcp=9090", "--version=v1"]
        ports:
        - {name: http, containerPort: 8080}
        - {name: tcp, containerPort: 9090}
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp, port: 9090, targetPort: 9090}
{{- end}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  replicas: 1
  selector:
    matchLabels: {app: client}
  template:
    metadata:
      labels: {app: client}
    spec:
      serviceAccountName: client
      terminationGracePeriodSeconds: 1
      {{- if .ClientNode}}
      nodeSelector: {kubernetes.io/hostname: {{.ClientNode}}}
      {{- end}}
      containers:
      - name: client
        image: ambient-lite.local/echo:dev
        imagePullPolicy: IfNotPresent
        args: ["--port=8080"]
`))

// deploy creates a namespace named after t (deleted when t ends) with the app in it, and
// waits until every pod is Ready (and enrolled, with Enrolled).
func (e *env) deploy(t *testing.T, a app) string {
	t.Helper()
	base := strings.Trim(strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())), "-")
	if len(base) > 40 {
		base = base[:40]
	}
	ns := base + "-" + utilrand.String(4)
	e.kubectl(t, "create", "namespace", ns)
	t.Cleanup(func() {
		if _, err := e.k.Kubectl(context.Background(), "delete", "namespace", ns, "--wait=false"); err != nil {
			t.Logf("deleting namespace %s: %v", ns, err)
		}
	})
	if a.Enrolled {
		e.kubectl(t, "label", "namespace", ns, mesh.LabelDataplaneMode+"="+mesh.DataplaneModeAmbient)
	}
	var b bytes.Buffer
	if err := appTemplate.Execute(&b, a); err != nil {
		t.Fatal(err)
	}
	if _, err := e.k.Apply(ctx(t), ns, b.String()); err != nil {
		t.Fatal(err)
	}
	want := 3
	if a.EchoNode != "" {
		want = 2
	}
	if a.NoEcho {
		want = 1
	}
	cond := mesh.AllReady
	if a.Enrolled {
		cond = mesh.AllEnrolled
	}
	if _, err := e.k.WaitPods(ctx(t), ns, "", 2*time.Minute, fmt.Sprintf("%d pods Ready", want), func(p []mesh.Pod) bool {
		return len(p) == want && cond(p)
	}); err != nil {
		t.Fatal(err)
	}
	if !a.NoEcho {
		// kube-proxy programs a new Service a moment after its pods are Ready.
		eventually(t, 30*time.Second, "the client reaching echo", func() error {
			_, err := e.echo(t, ns, 1, "http://echo/")
			return err
		})
	}
	return ns
}

// echo sends count requests from ns's client to url and returns the parsed answers; err is
// the client's failure (some request failed), with its output.
func (e *env) echo(t *testing.T, ns string, count int, url string) (mesh.EchoResult, error) {
	t.Helper()
	out, err := e.k.Exec(ctx(t), ns, "deploy/client", "client", fmt.Sprintf("--count=%d", count), "--timeout=3s", url)
	return mesh.ParseEcho(out), err
}

// mustEcho is echo that fails t unless every request got a 200.
func (e *env) mustEcho(t *testing.T, ns string, count int, url string) mesh.EchoResult {
	t.Helper()
	r, err := e.echo(t, ns, count, url)
	if err != nil || r.Codes["200"] != count {
		t.Fatalf("%d requests from %s's client to %s: codes %v, err %v", count, ns, url, r.Codes, err)
	}
	return r
}

// eventually retries f every 500 ms until it returns nil or timeout passes, and returns
// how long that took, failing t with f's last error.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := f()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// connections sums ztunnel's opened-connection counters whose labels include match.
func (e *env) connections(t *testing.T, match map[string]string) float64 {
	t.Helper()
	s, err := e.k.TCPConnections(ctx(t), match)
	if err != nil {
		t.Fatal(err)
	}
	return mesh.Sum(s)
}

// onNode runs a shell script in node's network and mount namespaces and returns its output.
func (e *env) onNode(t *testing.T, node, script string) string {
	t.Helper()
	ns, ok := e.nodes[node]
	if !ok {
		t.Fatalf("no node %s (have %v)", node, e.nodes)
	}
	out, err := exec.CommandContext(ctx(t), "nsenter", "--net="+ns.Netns, "--mount="+ns.Mnt, "--", "/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("on %s: %s: %v\n%s", node, script, err, out)
	}
	return string(out)
}

// nodeNames returns the nodes, sorted.
func (e *env) nodeNames() []string {
	var out []string
	for n := range e.nodes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
