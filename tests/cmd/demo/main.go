// Command demo is `make demo`: it brings up (or reuses) the 2-node local cluster, builds and
// loads the images, installs the mesh with its four Helm charts, starts a demo app outside
// the mesh, enrolls the running pods with a namespace label, and then proves, with the
// commands it runs and their output, what the mesh does: mTLS with SPIFFE identities in
// ztunnel's metrics, an AuthorizationPolicy denying and then allowing the client, and a
// waypoint splitting HTTP traffic 90/10 with an HTTPRoute. Every step is a check: the demo
// fails, naming the step and where the logs are, when the evidence is absent.
//
// It leaves the cluster up and prints how to reach and stop it.
//
//	demo [--dir DIR] [--bin-dir DIR] [--localcluster PATH] [--since UNIX_NANOS]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
	"github.com/ambient-lite/ambient-lite/tests/images"
)

// The demo's namespace and the images it needs besides those cluster-up loads.
const (
	ns              = "demo"
	clientPrincipal = "spiffe://cluster.local/ns/demo/sa/client"
	echoPrincipal   = "spiffe://cluster.local/ns/demo/sa/echo"
)

var meshImages = []string{images.Ztunnel, images.IstiodLit, images.CNI, images.Echo, images.Waypoint}

func main() {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	dir := fs.String("dir", filepath.Join(os.TempDir(), "ambient-lite-cluster"), "the local cluster's directory (make cluster-up's CLUSTER_DIR)")
	binDir := fs.String("bin-dir", "", "pinned tools: kubectl, helm, the cluster binaries (default: $"+cluster.EnvBinDir+" or the repository's .bin)")
	lc := fs.String("localcluster", "", "the localcluster command (default: out/bin/localcluster)")
	since := fs.Int64("since", 0, "when `make demo` started (Unix nanoseconds), to count setup and builds in the total")
	_ = fs.Parse(os.Args[1:])

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	d, err := newDemo(*dir, *binDir, *lc, *since)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	if err := d.run(ctx); err != nil {
		os.Exit(1)
	}
}

type demo struct {
	k            *mesh.Kube
	root         string
	dir          string
	binDir       string
	localcluster string
	logDir       string
	start        time.Time
	out          io.Writer
	step         int
	digests      map[string]string // image digests by catalog name (loadImages)
}

func newDemo(dir, binDir, lc string, since int64) (*demo, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	if binDir, err = cluster.ResolveBinDir(binDir); err != nil {
		return nil, fmt.Errorf("%v (run `make setup`)", err)
	}
	if lc == "" {
		lc = filepath.Join(root, "out", "bin", "localcluster")
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	start := time.Now()
	if since > 0 {
		start = time.Unix(0, since)
	}
	d := &demo{root: root, dir: dir, binDir: binDir, localcluster: lc, start: start, out: os.Stdout,
		logDir: filepath.Join(root, "out", "demo-logs")}
	d.k = &mesh.Kube{Kubeconfig: filepath.Join(dir, "kubeconfig"), BinDir: binDir, HelmHome: filepath.Join(dir, "helm"),
		Echo: func(cmdline string) { fmt.Fprintf(d.out, "    $ %s\n", cmdline) }}
	return d, nil
}

func (d *demo) elapsed() string {
	return fmt.Sprintf("[%6.1fs]", time.Since(d.start).Seconds())
}

// shown shows a command's output and passes its error on.
func (d *demo) shown(out string, err error) error {
	d.show(out)
	return err
}

// show prints command output (or any text) indented under the command.
func (d *demo) show(text string) {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return
	}
	for _, l := range strings.Split(text, "\n") {
		fmt.Fprintf(d.out, "      %s\n", l)
	}
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "    # "+format+"\n", args...)
}

type step struct {
	name string
	run  func(ctx context.Context) error
}

func (d *demo) run(ctx context.Context) error {
	steps := []step{
		{"a 2-node local cluster (make cluster-up NODES=2)", d.clusterUp},
		{"images built and loaded into both nodes: " + strings.Join(meshImages, ", "), d.loadImages},
		{"Gateway API CRDs established (for the waypoint)", d.gatewayAPI},
		{"the mesh installed with helm: base, istiod-lite, cni, ztunnel", d.installCharts},
		{"demo app in namespace demo, outside the mesh: echo v1 and v2, a client", d.appOutsideMesh},
		{"kubectl label namespace demo istio.io/dataplane-mode=ambient: running pods enrolled, no restart", d.enroll},
		{"traffic is mTLS between SPIFFE identities (ztunnel metrics)", d.mtls},
		{"AuthorizationPolicy: DENY the client, then ALLOW it", d.policy},
		{"waypoint (Gateway class istio-waypoint) with an HTTPRoute splitting echo 90/10 over v1/v2", d.waypoint},
	}
	fmt.Fprintf(d.out, "%s Ambient Lite demo: %d steps (cluster in %s)\n", d.elapsed(), len(steps), d.dir)
	for i, s := range steps {
		d.step = i + 1
		fmt.Fprintf(d.out, "%s step %d/%d: %s\n", d.elapsed(), d.step, len(steps), s.name)
		stepStart := time.Now()
		sctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
		err := s.run(sctx)
		cancel()
		took := time.Since(stepStart).Round(100 * time.Millisecond)
		if err != nil {
			fmt.Fprintf(d.out, "%s FAILED step %d/%d after %s: %s\n", d.elapsed(), d.step, len(steps), took, s.name)
			d.show(err.Error())
			d.failureLogs()
			return err
		}
		fmt.Fprintf(d.out, "%s ok     step %d/%d in %s\n", d.elapsed(), d.step, len(steps), took)
	}
	total := time.Since(d.start).Round(100 * time.Millisecond)
	fmt.Fprintf(d.out, `%s demo complete in %s (everything from make demo on; a warm re-run's target is under 4 min)

The cluster stays up with the mesh and the demo app. Reach it with:

  export KUBECONFIG=%s
  kubectl -n demo get pods,gateway,httproute -o wide
  kubectl -n demo exec deploy/client -- client --count=10 http://echo/

Its state and logs are in %s. Stop it with: make cluster-down
`, d.elapsed(), total, d.k.Kubeconfig, d.dir)
	return nil
}

// failureLogs saves the mesh's and the app's pod logs and says where every log is.
func (d *demo) failureLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = os.RemoveAll(d.logDir)
	files := d.quiet().CollectLogs(ctx, d.logDir, mesh.SystemNamespace, ns)
	fmt.Fprintf(d.out, "\nLogs:\n")
	if len(files) > 0 {
		fmt.Fprintf(d.out, "  pods of %s and %s (kubectl logs, get pods,events): %s/\n", mesh.SystemNamespace, ns, d.logDir)
	}
	fmt.Fprintf(d.out, "  the cluster's control plane, kubelets, containerd and kube-proxy: %s/*.log\n", d.dir)
	fmt.Fprintf(d.out, "  the cluster stays up for a look: export KUBECONFIG=%s; stop it with: make cluster-down\n", d.k.Kubeconfig)
}

// clusterUp starts the cluster, or finds it running, and checks it has two Ready nodes.
func (d *demo) clusterUp(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, d.localcluster, "up", "--dir", d.dir, "--nodes", "2")
	cmd.Env = append(os.Environ(), cluster.EnvBinDir+"="+d.binDir)
	fmt.Fprintf(d.out, "    $ %s up --dir %s --nodes 2\n", filepath.Base(d.localcluster), d.dir)
	out, err := cmd.CombinedOutput()
	d.show(string(out))
	if err != nil {
		return fmt.Errorf("localcluster up: %v", err)
	}
	nodes, err := d.k.Kubectl(ctx, "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}`)
	if err != nil {
		return err
	}
	if strings.TrimSpace(nodes) == "" {
		return fmt.Errorf("the cluster in %s has no nodes (a control plane started with NODES=0?): run `make cluster-down` and `make demo` again", d.dir)
	}
	if strings.TrimSpace(nodes) != "node1=True node2=True" {
		return fmt.Errorf("nodes %q, want node1 and node2 Ready", nodes)
	}
	out2, err := d.k.Kubectl(ctx, "get", "nodes", "-o", "wide")
	d.show(out2)
	return err
}

// loadImages builds the changed images and loads them into both nodes, and keeps their
// digests for the charts' pod annotations.
func (d *demo) loadImages(ctx context.Context) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b := &images.Builder{RepoRoot: d.root, ToolBin: d.binDir, OutDir: filepath.Join(d.root, "out", "images"), Log: log}
	imgs, err := b.Build(ctx, meshImages...)
	if err != nil {
		return err
	}
	if err := cluster.LoadImagesDetached(ctx, d.dir, d.binDir, "", log, meshImages...); err != nil {
		return err
	}
	for _, n := range meshImages {
		d.show(fmt.Sprintf("%-30s %s", imgs[n].Ref, imgs[n].Digest))
	}
	d.digests = map[string]string{}
	for n, img := range imgs {
		d.digests[n] = img.Digest
	}
	return nil
}

func (d *demo) gatewayAPI(ctx context.Context) error {
	d.say("the local cluster installs the Gateway API standard CRDs as a platform would (cluster-up); the base chart's gatewayAPI.enabled stays false")
	out, err := d.k.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/gateways.gateway.networking.k8s.io", "crd/httproutes.gateway.networking.k8s.io", "crd/gatewayclasses.gateway.networking.k8s.io")
	d.show(out)
	return err
}

func (d *demo) installCharts(ctx context.Context) error {
	// A changed image has the same tag (:dev): its digest in a pod annotation makes helm roll
	// the pods that run it, and only those.
	digestAnn := func(img string) string {
		return `string:podAnnotations.ambient-lite\.dev/image-digest=` + strings.TrimPrefix(d.digests[img], "sha256:")[:16]
	}
	opts := mesh.InstallOptions{RepoRoot: d.root, Set: map[string][]string{
		"istiod":    {digestAnn(images.IstiodLit)},
		"istio-cni": {digestAnn(images.CNI)},
		"ztunnel":   {digestAnn(images.Ztunnel)},
	}, OnRelease: func(r mesh.Release, took time.Duration, out string) {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "STATUS:") || strings.HasPrefix(l, "REVISION:") {
				d.show(l)
			}
		}
		fmt.Fprintf(d.out, "%s        %s Ready in %s\n", d.elapsed(), r.Name, took.Round(100*time.Millisecond))
	}}
	if err := d.k.Install(ctx, opts); err != nil {
		return err
	}
	out, err := d.k.Kubectl(ctx, "-n", mesh.SystemNamespace, "get", "pods", "-o", "wide")
	d.show(out)
	return err
}

// request sends count requests from the client to url and returns the client's output.
func (d *demo) request(ctx context.Context, count int, url string) (string, error) {
	return d.k.Exec(ctx, ns, "deploy/client", "client", "--count="+strconv.Itoa(count), "--timeout=5s", url)
}

func (d *demo) appOutsideMesh(ctx context.Context) error {
	// A re-run starts from a namespace outside the mesh again.
	if _, err := d.k.Kubectl(ctx, "get", "namespace", ns); err == nil {
		out, err := d.k.Kubectl(ctx, "delete", "namespace", ns, "--wait", "--timeout=2m")
		d.show(out)
		if err != nil {
			return err
		}
	}
	if err := d.shown(d.k.Kubectl(ctx, "create", "namespace", ns)); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    $ kubectl -n %s apply -f tests/e2e/mesh/testdata/demo-app.yaml\n", ns)
	k := *d.k
	k.Echo = nil
	out, err := k.Apply(ctx, ns, mesh.DemoApp)
	d.show(out)
	if err != nil {
		return err
	}
	if err := d.shown(d.k.Kubectl(ctx, "-n", ns, "wait", "--for=condition=Available", "deployment", "--all", "--timeout=120s")); err != nil {
		return err
	}
	pods, err := d.k.WaitPods(ctx, ns, "", time.Minute, "3 Ready pods", func(p []mesh.Pod) bool { return len(p) == 3 && mesh.AllReady(p) })
	if err != nil {
		return err
	}
	d.podTable(pods)
	for _, p := range pods {
		if p.Enrolled() {
			return fmt.Errorf("pod %s is enrolled before the namespace is labelled", p.Name)
		}
	}
	// ztunnel's counters of namespace demo outlive an earlier run's namespace: what counts is
	// whether they move.
	fromDemo := map[string]string{"source_workload_namespace": ns}
	base, err := d.k.TCPConnections(ctx, fromDemo)
	if err != nil {
		return err
	}
	// kube-proxy programs a new Service a moment after its pods are Ready.
	if err := until(ctx, 30*time.Second, func() (bool, error) {
		out, err := d.tryEcho(ctx)
		return err == nil, fmt.Errorf("client -> echo: %s", strings.TrimSpace(out))
	}); err != nil {
		return err
	}
	out, err = d.request(ctx, 4, "http://echo/")
	if err != nil {
		return err
	}
	d.showEcho(out)
	if r := mesh.ParseEcho(out); r.Codes["200"] != 4 {
		return fmt.Errorf("client -> echo outside the mesh: %v, want 4 times 200", r.Codes)
	}
	conns, err := d.k.TCPConnections(ctx, fromDemo)
	if err != nil {
		return err
	}
	if n := mesh.Sum(conns) - mesh.Sum(base); n != 0 {
		return fmt.Errorf("ztunnel counted %v connections from namespace demo outside the mesh", n)
	}
	d.say("ztunnel counted no connection from namespace demo: the traffic bypasses the mesh")
	return nil
}

// podTable prints name, node, IP, UID, start time, restarts and the redirection annotation.
func (d *demo) podTable(pods []mesh.Pod) {
	var b strings.Builder
	fmt.Fprintf(&b, "%-26s %-6s %-12s %-10s %-21s %-9s %s\n", "POD", "NODE", "IP", "UID", "STARTED", "RESTARTS", "REDIRECTION")
	for _, p := range pods {
		red := p.Annotations[mesh.AnnotationRedirection]
		if red == "" {
			red = "-"
		}
		fmt.Fprintf(&b, "%-26s %-6s %-12s %-10s %-21s %-9d %s\n", p.Name, p.Node, p.IP, p.UID[:8], p.StartedAt, p.Restarts, red)
	}
	d.show(b.String())
}

// showEcho prints the echo client's lines that matter: status, version, hostname.
func (d *demo) showEcho(out string) {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "StatusCode=") || strings.Contains(l, "ServiceVersion=") || strings.Contains(l, "Hostname=") {
			keep = append(keep, l)
		}
	}
	d.show(strings.Join(keep, "\n"))
}

func (d *demo) enroll(ctx context.Context) error {
	before, err := d.k.Pods(ctx, ns, "")
	if err != nil {
		return err
	}
	out, err := d.k.Kubectl(ctx, "label", "namespace", ns, mesh.LabelDataplaneMode+"="+mesh.DataplaneModeAmbient)
	d.show(out)
	if err != nil {
		return err
	}
	labelled := time.Now()
	after, err := d.k.WaitPods(ctx, ns, "", time.Minute, "every pod enrolled", mesh.AllEnrolled)
	if err != nil {
		return err
	}
	d.say("every pod has %s=%s %s after the label", mesh.AnnotationRedirection, mesh.RedirectionEnabled, time.Since(labelled).Round(10*time.Millisecond))
	fmt.Fprintf(d.out, "    $ kubectl -n demo get pods (name, node, IP, uid, started, restarts, %s)\n", mesh.AnnotationRedirection)
	d.podTable(after)
	if len(after) != len(before) {
		return fmt.Errorf("%d pods before the label, %d after", len(before), len(after))
	}
	for i := range after {
		if after[i].UID != before[i].UID || after[i].StartedAt != before[i].StartedAt || after[i].Restarts != before[i].Restarts {
			return fmt.Errorf("pod %s changed: before %+v, after %+v; want the same pod, not restarted", after[i].Name, before[i], after[i])
		}
	}
	d.say("same pods (uid, start time), no restart")
	return nil
}

// quiet is the demo's Kube without echoing the commands it runs, for retries and log
// collection.
func (d *demo) quiet() *mesh.Kube {
	q := *d.k
	q.Echo = nil
	return &q
}

// tryEcho is one request client -> echo, not echoed (the demo shows the one that counts):
// `kubectl exec deploy/client -- client --count=1 --timeout=3s http://echo/`.
func (d *demo) tryEcho(ctx context.Context) (string, error) {
	return d.quiet().Exec(ctx, ns, "deploy/client", "client", "--count=1", "--timeout=3s", "http://echo/")
}

// connKey names one counter of istio_tcp_connections_opened_total in the demo's output.
func connKey(s mesh.Sample) string {
	return fmt.Sprintf("node=%s reporter=%s connection_security_policy=%q\n  source_principal=%q destination_principal=%q destination_workload=%q",
		s.Labels["node"], s.Labels["reporter"], s.Labels["connection_security_policy"],
		s.Labels["source_principal"], s.Labels["destination_principal"], s.Labels["destination_workload"])
}

func (d *demo) mtls(ctx context.Context) error {
	inDemo := map[string]string{"source_workload_namespace": ns, "destination_workload_namespace": ns}
	base, err := d.k.TCPConnections(ctx, inDemo)
	if err != nil {
		return err
	}
	before := map[string]float64{}
	for _, s := range base {
		before[connKey(s)] += s.Value
	}
	out, err := d.request(ctx, 10, "http://echo/")
	if err != nil {
		return err
	}
	if r := mesh.ParseEcho(out); r.Codes["200"] != 10 {
		return fmt.Errorf("client -> echo in the mesh: %v, want 10 times 200", r.Codes)
	}
	d.say("10 requests client -> echo: 200")
	conns, err := d.k.TCPConnections(ctx, inDemo)
	if err != nil {
		return err
	}
	d.say("istio_tcp_connections_opened_total of namespace demo that these requests moved, as each node's ztunnel reports it:")
	var b strings.Builder
	reporters := map[string]bool{}
	for _, s := range conns {
		added := s.Value - before[connKey(s)]
		if added <= 0 {
			continue
		}
		fmt.Fprintf(&b, "%s  +%v\n", connKey(s), added)
		if s.Labels["connection_security_policy"] != "mutual_tls" {
			return fmt.Errorf("a connection of namespace demo is not mutual_tls: %v", s.Labels)
		}
		if s.Labels["source_principal"] == clientPrincipal && s.Labels["destination_principal"] == echoPrincipal {
			reporters[s.Labels["reporter"]+"@"+s.Labels["node"]] = true
		}
	}
	d.show(b.String())
	if !reporters["source@node1"] || !reporters["destination@node2"] {
		return fmt.Errorf("want the client's connections reported by node1's ztunnel as source and node2's as destination, mutual_tls, %s -> %s; got %v", clientPrincipal, echoPrincipal, reporters)
	}
	d.say("node1's ztunnel (client side) and node2's (echo side) both report mutual_tls between %s and %s", clientPrincipal, echoPrincipal)
	return nil
}

const denyPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-deny-client
spec:
  selector:
    matchLabels: {app: echo}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client"]
`

const allowPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-allow-client
spec:
  selector:
    matchLabels: {app: echo}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client"]
`

// until retries f every 500 ms until it reports done or timeout passes.
func until(ctx context.Context, timeout time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := f()
		if done {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err == nil {
				err = errors.New("condition not met")
			}
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (d *demo) policy(ctx context.Context) error {
	d.show(strings.TrimSpace(denyPolicy))
	if err := d.shown(d.k.Apply(ctx, ns, denyPolicy)); err != nil {
		return err
	}
	var last string
	start := time.Now()
	err := until(ctx, 30*time.Second, func() (bool, error) {
		out, err := d.tryEcho(ctx)
		last = out
		return err != nil, fmt.Errorf("the client still gets through: %s", strings.TrimSpace(out))
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    $ kubectl -n demo exec deploy/client -- client --count=1 --timeout=3s http://echo/\n")
	d.show(strings.TrimSpace(last))
	d.say("denied (%s after the apply): node2's ztunnel closes the connection", time.Since(start).Round(100*time.Millisecond))

	if err := d.shown(d.k.Kubectl(ctx, "-n", ns, "delete", "authorizationpolicy", "echo-deny-client")); err != nil {
		return err
	}
	d.show(strings.TrimSpace(allowPolicy))
	if err := d.shown(d.k.Apply(ctx, ns, allowPolicy)); err != nil {
		return err
	}
	start = time.Now()
	err = until(ctx, 30*time.Second, func() (bool, error) {
		out, err := d.tryEcho(ctx)
		last = out
		return err == nil && mesh.ParseEcho(out).Codes["200"] == 1, fmt.Errorf("the client is still refused: %s", strings.TrimSpace(out))
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    $ kubectl -n demo exec deploy/client -- client --count=1 --timeout=3s http://echo/\n")
	d.showEcho(last)
	d.say("allowed (%s after the apply): only the client's identity may reach echo", time.Since(start).Round(100*time.Millisecond))
	// The waypoint forwards with its own identity, which this policy would refuse.
	out, err := d.k.Kubectl(ctx, "-n", ns, "delete", "authorizationpolicy", "echo-allow-client")
	d.show(out)
	return err
}

const waypointGateway = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
`

const splitRoute = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-split
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  rules:
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
`

// splitRequests is how many requests measure the split.
const splitRequests = 200

func (d *demo) waypoint(ctx context.Context) error {
	d.show(strings.TrimSpace(waypointGateway))
	if err := d.shown(d.k.Apply(ctx, ns, waypointGateway)); err != nil {
		return err
	}
	if err := d.shown(d.k.Kubectl(ctx, "-n", ns, "wait", "--for=condition=Programmed", "gateway/waypoint", "--timeout=120s")); err != nil {
		return err
	}
	if err := d.shown(d.k.Kubectl(ctx, "-n", ns, "rollout", "status", "deployment/waypoint", "--timeout=120s")); err != nil {
		return err
	}
	if err := d.shown(d.k.Kubectl(ctx, "-n", ns, "label", "service", "echo", mesh.LabelUseWaypoint+"=waypoint")); err != nil {
		return err
	}
	d.show(strings.TrimSpace(splitRoute))
	if err := d.shown(d.k.Apply(ctx, ns, splitRoute)); err != nil {
		return err
	}
	if err := d.shown(d.k.Kubectl(ctx, "-n", ns, "wait", "--for=jsonpath={.status.parents[0].conditions[?(@.type==\"Accepted\")].status}=True",
		"httproute/echo-split", "--timeout=60s")); err != nil {
		return err
	}
	// The waypoint adds an X-Request-Id to what it forwards; the client sends none.
	err := until(ctx, 60*time.Second, func() (bool, error) {
		out, err := d.tryEcho(ctx)
		return err == nil && strings.Contains(out, "RequestHeader=X-Request-Id:"), fmt.Errorf("requests to echo do not pass the waypoint yet: %s", strings.TrimSpace(out))
	})
	if err != nil {
		return err
	}
	d.say("requests to echo now pass the waypoint (the echo server sees the X-Request-Id it adds)")
	out, err := d.request(ctx, splitRequests, "http://echo/")
	if err != nil {
		return err
	}
	r := mesh.ParseEcho(out)
	var vs []string
	for v := range r.Versions {
		vs = append(vs, v)
	}
	sort.Strings(vs)
	d.say("%d requests: status codes %v", splitRequests, r.Codes)
	for _, v := range vs {
		d.show(fmt.Sprintf("%s: %3d requests (%.1f%%)", v, r.Versions[v], 100*float64(r.Versions[v])/splitRequests))
	}
	v1, v2 := r.Versions["v1"], r.Versions["v2"]
	if r.Codes["200"] != splitRequests || v1+v2 != splitRequests {
		return fmt.Errorf("want %d answers of 200 from v1 or v2, got codes %v versions %v", splitRequests, r.Codes, r.Versions)
	}
	// 10% of 200 is 20 with a standard deviation of 4.2: 5 to 40 holds but for a broken split.
	if v2 < 5 || v2 > 40 {
		return fmt.Errorf("v2 got %d of %d requests, want about 10%% (5 to 40)", v2, splitRequests)
	}
	d.say("the HTTPRoute's 90/10 weights hold: v1 %d, v2 %d of %d", v1, v2, splitRequests)
	return nil
}
