package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
)

// firstConns is a pod on node1 that, right as its container starts, connects to echo's TCP
// port 8 times 300 ms apart and prints 1 for each connection that got its line echoed back,
// 0 for one that did not ("answers: 1 1 1 1 1 1 1 1").
func firstConns(name string) string {
	return node1Client(name, `a=""
for i in 1 2 3 4 5 6 7 8; do
  if echo hi | nc -w 2 echo 9090 | grep -q hi; then a="$a 1"; else a="$a 0"; fi
  sleep 0.3
done
echo "answers:$a"
sleep 3600`)
}

// TestNewPodFirstConnection: a newly enrolled pod's very first outbound connection, made as
// its container starts (its netns may reach ztunnel over ZDS before its workload reaches it
// over xDS), is carried, not accepted and closed: ztunnel waits for the pod's workload.
func TestNewPodFirstConnection(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	names := []string{"first-a", "first-b", "first-c"}
	for _, n := range names {
		if _, err := e.k.Apply(ctx(t), ns, firstConns(n)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		var logs string
		eventually(t, time.Minute, n+"'s answers", func() error {
			var err error
			if logs, err = e.k.Kubectl(ctx(t), "-n", ns, "logs", n); err != nil {
				return err
			}
			if !strings.Contains(logs, "answers:") {
				return fmt.Errorf("no answers yet; its log:\n%s", logs)
			}
			return nil
		})
		t.Logf("%s %s", n, strings.TrimSpace(logs))
		if strings.Contains(logs, " 0") {
			t.Errorf("%s: a connection got no answer (%s)", n, strings.TrimSpace(logs))
		}
	}
}

// TestLongConnSurvivesScaleUp: a long-lived connection from node1 to echo's only pod on
// node2 stays open while echo scales to two replicas (a new endpoint of the Service, a
// workload update, a newly enrolled pod on node2), as in Istio.
func TestLongConnSurvivesScaleUp(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	if _, err := e.k.Apply(ctx(t), ns, longConn); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the long-lived connection answering", func() error {
		logs, err := e.k.Kubectl(ctx(t), "-n", ns, "logs", "longconn")
		if err != nil {
			return err
		}
		if n := strings.Count(logs, "ping"); n < 5 {
			return fmt.Errorf("%d pings answered so far; its log:\n%s", n, logs)
		}
		return nil
	})
	start := time.Now()
	e.kubectl(t, "-n", ns, "scale", "deployment/echo", "--replicas=2")
	echoes, err := e.k.WaitPods(ctx(t), ns, "app=echo", time.Minute, "2 enrolled echo pods", func(p []mesh.Pod) bool {
		return len(p) == 2 && mesh.AllEnrolled(p) && mesh.AllReady(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range echoes {
		e.mustEcho(t, ns, 1, "http://"+p.IP+":8080/")
	}
	time.Sleep(3 * time.Second)
	logs := e.kubectl(t, "-n", ns, "logs", "longconn", "--timestamps")
	t.Logf("long-lived connection through the scale-up: %s", measureLongConn(t, logs, start, time.Now()))
	if strings.Contains(logs, "connection closed") {
		t.Fatalf("the long-lived connection closed when echo scaled from 1 to 2")
	}

	// A policy that now denies the client closes the open connection (over HBONE, at the
	// destination's ztunnel), as Istio's ztunnel does; the scale-up above did not.
	denyAt := time.Now()
	if _, err := e.k.Apply(ctx(t), ns, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-longconn}
spec:
  selector:
    matchLabels: {app: echo}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/`+ns+`/sa/client"]
`); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the long-lived connection closed by the DENY", func() error {
		logs, err := e.k.Kubectl(ctx(t), "-n", ns, "logs", "longconn")
		if err != nil {
			return err
		}
		if !strings.Contains(logs, "connection closed") {
			return fmt.Errorf("still open; its log ends:\n%s", tail(logs, 5))
		}
		return nil
	})
	t.Logf("the DENY closed the long-lived connection %v after it was applied", time.Since(denyAt).Round(100*time.Millisecond))
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
