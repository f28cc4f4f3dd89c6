package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
)

// TestEnrollment labels a namespace whose pods already run: they are enrolled without a
// restart and their traffic goes through ztunnel with mTLS; removing the label unenrolls
// them, again without a restart, and their traffic bypasses ztunnel.
func TestEnrollment(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{ClientNode: "node1"})
	before, err := e.k.Pods(ctx(t), ns, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range before {
		if p.Enrolled() {
			t.Fatalf("pod %s enrolled before the namespace is labelled", p.Name)
		}
	}
	fromNS := map[string]string{"source_workload_namespace": ns}
	e.mustEcho(t, ns, 3, "http://echo/")
	if n := e.connections(t, fromNS); n != 0 {
		t.Errorf("ztunnel counted %v connections from %s outside the mesh, want 0", n, ns)
	}

	labelled := time.Now()
	e.kubectl(t, "label", "namespace", ns, mesh.LabelDataplaneMode+"="+mesh.DataplaneModeAmbient)
	after, err := e.k.WaitPods(ctx(t), ns, "", time.Minute, "every pod enrolled", mesh.AllEnrolled)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("enrolled %s after the label: %s", time.Since(labelled).Round(10*time.Millisecond), mesh.Describe(after))
	samePods(t, before, after)
	e.mustEcho(t, ns, 5, "http://echo/")
	mtls, err := e.k.TCPConnections(ctx(t), map[string]string{"source_workload_namespace": ns, "connection_security_policy": "mutual_tls",
		"source_principal": fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/client", ns)})
	if err != nil {
		t.Fatal(err)
	}
	reporters := map[string]bool{}
	for _, s := range mtls {
		reporters[s.Labels["reporter"]] = true
	}
	if !reporters["source"] || !reporters["destination"] {
		t.Errorf("mutual_tls connections from %s's client reported by %v, want by the source and the destination ztunnel", ns, reporters)
	}

	unlabelled := time.Now()
	e.kubectl(t, "label", "namespace", ns, mesh.LabelDataplaneMode+"-")
	off, err := e.k.WaitPods(ctx(t), ns, "", time.Minute, "every pod unenrolled", mesh.NoneEnrolled)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("unenrolled %s after the label went: %s", time.Since(unlabelled).Round(10*time.Millisecond), mesh.Describe(off))
	samePods(t, before, off)
	count := e.connections(t, fromNS)
	e.mustEcho(t, ns, 5, "http://echo/")
	if n := e.connections(t, fromNS); n != count {
		t.Errorf("ztunnel counted %v new connections from %s after unenrollment, want none", n-count, ns)
	}
}

// samePods fails t unless after holds the pods of before, none restarted.
func samePods(t *testing.T, before, after []mesh.Pod) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("pods before: %s; after: %s", mesh.Describe(before), mesh.Describe(after))
	}
	for i := range before {
		b, a := before[i], after[i]
		if a.UID != b.UID || a.StartedAt != b.StartedAt || a.Restarts != b.Restarts {
			t.Errorf("pod %s: uid %s -> %s, started %s -> %s, restarts %d -> %d; want the same pod, not restarted",
				b.Name, b.UID, a.UID, b.StartedAt, a.StartedAt, b.Restarts, a.Restarts)
		}
	}
}
