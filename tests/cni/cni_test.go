package cni

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestEnrollmentThroughCNIChain drives the real CNI chain as a runtime does and checks what
// a platform engineer relies on: enrolled pods' traffic goes through ztunnel (outbound from
// the pod, inbound over HBONE or plaintext), pods outside the mesh are untouched, a label
// enrolls or unenrolls a running pod, and restarting ztunnel or the node agent keeps the
// mesh working with one program per pod.
func TestEnrollmentThroughCNIChain(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	mesh := e.c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	plain := e.c.Namespace(t, nil)
	must := func(p *pod, err error) *pod {
		t.Helper()
		if err != nil {
			t.Fatalf("CNI ADD of %s: %v\nnode agent log:\n%s", p.name, err, e.agent.log.String())
		}
		return p
	}
	server := must(e.addPod(mesh, "server", map[string]string{"app": "server"}))
	client := must(e.addPod(mesh, "client", map[string]string{"app": "client"}))
	outside := must(e.addPod(plain, "outside", map[string]string{"app": "outside"}))
	later := must(e.addPod(plain, "later", map[string]string{"app": "later"}))
	for _, p := range []*pod{server, outside, later} {
		e.serve(p, 8080)
	}

	// Enrollment state right after ADD: one program per enrolled pod, none elsewhere, and
	// the redirection annotation for istiod-lite.
	for p, want := range map[*pod]int{server: 1, client: 1, outside: 0, later: 0} {
		if got := e.programs(p); got != want {
			t.Errorf("%s: %d sk_lookup programs attached, want %d", p.name, got, want)
		}
	}
	e.waitAnnotation(server, true)
	e.waitAnnotation(client, true)
	if got := e.pins(); len(got) != 2 || !slices.Contains(got, server.uid) || !slices.Contains(got, client.uid) {
		t.Errorf("pins %v, want the uids of server and client", got)
	}

	// The primary CNI rewriting its config (as on its own upgrade) is re-chained at once.
	start := time.Now()
	e.writePrimary()
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		_, ok := e.chained()
		return ok, nil
	}); err != nil {
		t.Fatalf("the node agent did not re-chain its plugin after the primary config was rewritten")
	}
	t.Logf("primary config rewritten: re-chained in %s", time.Since(start).Round(time.Millisecond))

	// Outbound from an enrolled pod, to an enrolled pod: HBONE between the in-pod sockets.
	hbone := map[string]string{"reporter": "destination", "destination_workload": "server", "source_workload": "client", "connection_security_policy": "mutual_tls"}
	before := e.metric("istio_tcp_connections_opened_total", hbone)
	greeting := e.eventually(client, server.ip+":8080", "server saw")
	t.Logf("client → server: %q", greeting)
	e.waitMetric("istio_tcp_connections_opened_total", hbone, before)

	// Inbound plaintext from a pod outside the mesh lands on the server's :15006.
	plainIn := map[string]string{"reporter": "destination", "destination_workload": "server", "source_workload": "outside", "connection_security_policy": "unknown"}
	before = e.metric("istio_tcp_connections_opened_total", plainIn)
	greeting = e.eventually(outside, server.ip+":8080", "server saw")
	t.Logf("outside → server: %q", greeting)
	e.waitMetric("istio_tcp_connections_opened_total", plainIn, before)

	// A kubelet probe, from the node's address on the pod's link (the bridge, the pod's
	// gateway), bypasses capture: the application answers it directly.
	gateway := strings.TrimSuffix(e.subnet, "0/24") + "1"
	probe := e.eventually(&pod{name: "kubelet", netns: e.node}, server.ip+":8080", "server saw")
	if !strings.HasPrefix(probe, "server saw "+gateway+":") {
		rules, _ := exec.Command("ip", "-n", server.netns, "rule").CombinedOutput()
		dump, _ := exec.Command("bpftool", "map", "dump", "name", "ambient_config").CombinedOutput()
		t.Errorf("probe from the node: %q, want the node's own address %s (not proxied)\nrules:\n%s\nconfig maps:\n%s", probe, gateway, rules, dump)
	}

	// Pods outside the mesh talk directly: the server sees the caller's own address.
	greeting = e.eventually(outside, later.ip+":8080", "later saw")
	if !strings.HasPrefix(greeting, "later saw "+outside.ip+":") {
		t.Errorf("outside → later: %q, want the caller's own address %s (no proxy)", greeting, outside.ip)
	}

	// A label enrolls a running pod, and removing it unenrolls the pod within a second.
	setLabel := func(p *pod, value *string) time.Time {
		t.Helper()
		patch := `{"metadata":{"labels":{"istio.io/dataplane-mode":null}}}`
		if value != nil {
			patch = `{"metadata":{"labels":{"istio.io/dataplane-mode":"` + *value + `"}}}`
		}
		start := time.Now()
		if _, err := e.c.Client.CoreV1().Pods(p.ns).Patch(ctx, p.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		return start
	}
	ambientLabel := "ambient"
	start = setLabel(later, &ambientLabel)
	e.waitPrograms(later, 1, 5*time.Second)
	t.Logf("label added: capture installed in %s", time.Since(start).Round(time.Millisecond))
	e.waitAnnotation(later, true)
	e.eventually(client, later.ip+":8080", "later saw")
	start = setLabel(later, nil)
	e.waitPrograms(later, 0, 5*time.Second)
	removal := time.Since(start)
	t.Logf("label removed: capture removed in %s", removal.Round(time.Millisecond))
	if removal > time.Second {
		t.Errorf("capture removed %s after the label, want within 1 s", removal)
	}
	e.waitAnnotation(later, false)
	e.eventually(outside, later.ip+":8080", "later saw "+outside.ip+":")

	// Restarting ztunnel: the agent replays its pods; the mesh works again, one program each.
	e.ztunnel.stop(syscall.SIGKILL)
	e.startZtunnel()
	e.eventually(client, server.ip+":8080", "server saw")
	// Restarting the node agent: it recovers its pins without duplicates.
	e.agent.stop(syscall.SIGTERM)
	e.startAgent()
	for p, want := range map[*pod]int{server: 1, client: 1, outside: 0, later: 0} {
		if got := e.programs(p); got != want {
			t.Errorf("after the agent restarted, %s has %d sk_lookup programs, want %d", p.name, got, want)
		}
	}
	if got := e.pins(); len(got) != 2 {
		t.Errorf("after the agent restarted, pins %v, want server and client only", got)
	}
	e.eventually(client, server.ip+":8080", "server saw")

	// CNI DEL removes everything.
	for _, p := range []*pod{server, client, outside, later} {
		e.delPod(p)
	}
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return len(e.pins()) == 0, nil
	}); err != nil {
		t.Errorf("pins left after CNI DEL of every pod: %v", e.pins())
	}
}

// eventually dials addr from p until the greeting starts with want (ztunnel may still be
// learning the pods from istiod-lite) and returns it.
func (e *cniEnv) eventually(from *pod, addr, want string) string {
	e.t.Helper()
	var got string
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 15*time.Second, true, func(context.Context) (bool, error) {
		got, last = e.talk(from, addr, 2*time.Second)
		return last == nil && strings.HasPrefix(got, want), nil
	})
	if err != nil {
		e.t.Fatalf("%s → %s: got %q, err %v; want a greeting starting %q", from.name, addr, got, last, want)
	}
	return got
}

func (e *cniEnv) waitMetric(name string, labels map[string]string, before float64) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return e.metric(name, labels) > before, nil
	})
	if err != nil {
		resp, _ := http.Get("http://" + e.ztunnelStats + "/metrics")
		var b []byte
		if resp != nil {
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, name+"{") {
				lines = append(lines, l)
			}
		}
		e.t.Fatalf("ztunnel never counted %s%v above %v; its series:\n%s", name, labels, before, strings.Join(lines, "\n"))
	}
}

func (e *cniEnv) waitPrograms(p *pod, want int, timeout time.Duration) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return e.programs(p) == want, nil
	})
	if err != nil {
		e.t.Fatalf("%s: %d sk_lookup programs, want %d", p.name, e.programs(p), want)
	}
}

func (e *cniEnv) waitAnnotation(p *pod, on bool) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		obj, err := e.c.Client.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return (obj.Annotations["ambient.istio.io/redirection"] == "enabled") == on, nil
	})
	if err != nil {
		e.t.Fatalf("pod %s: redirection annotation never became %v", p.name, on)
	}
}
