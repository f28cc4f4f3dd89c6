package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
)

// TestHelmUninstall removes the four releases (in the reverse order of install, as a user
// would) while enrolled pods run: the pods keep running, unrestarted and unenrolled, and
// reach each other without the mesh; a new pod starts (no CNI chain entry left to fail its
// ADD); and no node keeps a redirection program attached to a pod, a pin, or the plugin's
// chain entry, binary, kubeconfig or token. Before the uninstall the same checks must see
// all of these, so they cannot pass by looking in the wrong place.
//
// It runs last (this file sorts last) and leaves the mesh uninstalled.
func TestHelmUninstall(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, ClientNode: "node1"})
	e.mustEcho(t, ns, 3, "http://echo/")
	before, err := e.k.Pods(ctx(t), ns, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range e.nodeNames() {
		s := e.nodeMeshState(t, node)
		t.Logf("%s with the mesh: %s", node, s)
		if s.links == 0 || len(s.pins) == 0 || len(s.files) == 0 || !s.chained {
			t.Fatalf("%s: the mesh's traces are not all visible while it is installed (%s): the checks below would prove nothing", node, s)
		}
	}

	start := time.Now()
	if err := e.k.Uninstall(ctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm uninstall of the 4 releases took %s", time.Since(start).Round(100*time.Millisecond))
	// helm deletes the workloads; their pods end within their grace periods.
	gone := eventually(t, time.Minute, "the mesh's pods gone", func() error {
		if out := e.kubectl(t, "-n", mesh.SystemNamespace, "get", "pods", "-o", "name"); strings.TrimSpace(out) != "" {
			return fmt.Errorf("pods left in %s:\n%s", mesh.SystemNamespace, out)
		}
		return nil
	})
	t.Logf("the mesh's pods were gone %s after helm returned", gone.Round(100*time.Millisecond))

	after, err := e.k.Pods(ctx(t), ns, "")
	if err != nil {
		t.Fatal(err)
	}
	samePods(t, before, after)
	if !mesh.AllReady(after) {
		t.Errorf("pods not Ready after the uninstall: %s", mesh.Describe(after))
	}
	for _, p := range after {
		if p.Enrolled() {
			// The agent unenrolls the pod, but helm deletes the chart's RBAC with the
			// DaemonSet, so the agent may no longer patch the annotation away.
			t.Logf("pod %s still carries %s=%s after the uninstall (stale: its redirection is checked below)",
				p.Name, mesh.AnnotationRedirection, p.Annotations[mesh.AnnotationRedirection])
		}
	}
	took := eventually(t, 30*time.Second, "the pods reaching each other without the mesh", func() error {
		for _, p := range after {
			if p.Labels["app"] != "echo" {
				continue
			}
			if r, err := e.echo(t, ns, 2, "http://"+p.IP+":8080/"); err != nil || r.Codes["200"] != 2 {
				return fmt.Errorf("client -> %s (%s on %s): codes %v, %v", p.IP, p.Name, p.Node, r.Codes, err)
			}
		}
		_, err := e.echo(t, ns, 4, "http://echo/")
		return err
	})
	t.Logf("traffic without the mesh works %s after the uninstall", took.Round(100*time.Millisecond))

	// A new pod on each node: its CNI ADD runs the chain as it is now.
	var fresh strings.Builder
	for _, node := range e.nodeNames() {
		fmt.Fprintf(&fresh, `---
apiVersion: v1
kind: Pod
metadata: {name: fresh-%[1]s, labels: {app: fresh}}
spec:
  nodeSelector: {kubernetes.io/hostname: %[1]s}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: ambient-lite.local/echo:dev
    imagePullPolicy: IfNotPresent
    args: ["--port=8080"]
    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
`, node)
	}
	if _, err := e.k.Apply(ctx(t), ns, fresh.String()); err != nil {
		t.Fatal(err)
	}
	newPods, err := e.k.WaitPods(ctx(t), ns, "app=fresh", 90*time.Second, "a new Ready pod on each node", func(p []mesh.Pod) bool {
		return len(p) == len(e.nodes) && mesh.NoneEnrolled(p)
	})
	if err != nil {
		events, _ := e.k.Kubectl(ctx(t), "-n", ns, "get", "events", "--field-selector", "type=Warning")
		t.Errorf("new pods after the uninstall: %v\n%s", err, events)
	}
	for _, p := range newPods {
		if p.Ready {
			e.mustEcho(t, ns, 1, "http://"+p.IP+":8080/")
		}
	}

	for _, node := range e.nodeNames() {
		s := e.nodeMeshState(t, node)
		t.Logf("%s after the uninstall: %s", node, s)
		if s.links != 0 {
			t.Errorf("%s: %d sk_lookup programs still attached to pod network namespaces", node, s.links)
		}
		if len(s.pins) != 0 {
			t.Errorf("%s: pins left under /sys/fs/bpf/ambient-lite: %v", node, s.pins)
		}
		if s.chained {
			t.Errorf("%s: the CNI config still chains ambient-lite-cni:\n%s", node, s.conf)
		}
		if len(s.files) != 0 {
			t.Errorf("%s: the plugin's files are left: %v", node, s.files)
		}
	}
}

// nodeState is what of the mesh one node holds.
type nodeState struct {
	links   int      // sk_lookup links attached to the node's pod network namespaces
	pins    []string // entries under /sys/fs/bpf/ambient-lite
	chained bool     // a CNI config file names the plugin
	conf    string   // the CNI config files' contents
	files   []string // the plugin's binary, kubeconfig, token and socket that exist
}

func (s nodeState) String() string {
	return fmt.Sprintf("%d sk_lookup links on pod netns, %d pins, chained=%v, plugin files %v", s.links, len(s.pins), s.chained, s.files)
}

// The plugin's files on a node (cni/internal/install, the cni chart's paths).
var pluginFiles = []string{
	"/opt/cni/bin/ambient-lite-cni",
	"/etc/cni/net.d/ZZZ-ambient-lite-kubeconfig",
	"/var/run/ambient-lite/cni/token",
	"/var/run/ambient-lite/cni/plugin.sock",
}

// nodeMeshState looks into node's mount namespace (its bpffs, CNI directories and pods'
// network namespaces) and at the kernel's BPF links.
func (e *env) nodeMeshState(t *testing.T, node string) nodeState {
	t.Helper()
	var s nodeState
	if out := strings.TrimSpace(e.onNode(t, node, "ls -A /sys/fs/bpf/ambient-lite 2>/dev/null || true")); out != "" {
		s.pins = strings.Fields(out)
	}
	s.conf = e.onNode(t, node, "for f in /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist; do [ -f \"$f\" ] && echo \"== $f\" && cat \"$f\"; done; true")
	s.chained = strings.Contains(s.conf, `"ambient-lite-cni"`)
	for _, f := range pluginFiles {
		if strings.TrimSpace(e.onNode(t, node, "[ -e "+f+" ] && echo yes || true")) == "yes" {
			s.files = append(s.files, f)
		}
	}
	inodes := map[uint64]bool{}
	for _, l := range strings.Split(strings.TrimSpace(e.onNode(t, node, "for f in /var/run/netns/*; do [ -e \"$f\" ] && stat -L -c %i \"$f\"; done; true")), "\n") {
		if ino, err := strconv.ParseUint(strings.TrimSpace(l), 10, 64); err == nil {
			inodes[ino] = true
		}
	}
	out, err := exec.CommandContext(ctx(t), "bpftool", "-j", "link", "show").Output()
	if err != nil {
		t.Fatalf("bpftool link show: %v", err)
	}
	var links []struct {
		Type       string `json:"type"`
		NetnsIno   uint64 `json:"netns_ino"`
		AttachType string `json:"attach_type"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("bpftool link show: %v", err)
	}
	for _, l := range links {
		if l.Type == "netns" && inodes[l.NetnsIno] {
			s.links++
		}
	}
	return s
}
