package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
)

// TestRolloutRestartZtunnel restarts the ztunnel DaemonSet (`kubectl rollout restart`):
// afterwards new connections work and a new pod is enrolled; what a long-lived connection
// through the old ztunnels saw is measured and logged.
func TestRolloutRestartZtunnel(t *testing.T) {
	testRolloutRestart(t, "ztunnel", "app=ztunnel")
}

// TestRolloutRestartNodeAgent does the same for the CNI node agent's DaemonSet.
func TestRolloutRestartNodeAgent(t *testing.T) {
	testRolloutRestart(t, "istio-cni-node", "k8s-app=istio-cni-node")
}

// longConn is a pod on node1 holding one TCP connection to echo's TCP port on node2, sending
// "ping" every 200 ms; the echo server sends each back, and the pod's log (with the
// kubelet's timestamps) records every answer, and when the connection ended. A connection
// that gets no answer at all is retried ("no answer, retrying"): a new pod's first
// connection can fail (see measureLongConn).
var longConn = node1Client("longconn", `while :; do
  (while :; do echo ping; sleep 0.2; done) | nc echo 9090 | while read -r l; do touch /tmp/up; echo "$l"; done
  if [ -e /tmp/up ]; then echo "connection closed"; break; fi
  echo "no answer, retrying"; sleep 0.5
done
sleep 3600`)

// node1Client is a pod named name on node1, as the client's ServiceAccount, running the
// shell script in Istio's echo image.
func node1Client(name, script string) string {
	return `apiVersion: v1
kind: Pod
metadata: {name: ` + name + `}
spec:
  serviceAccountName: client
  nodeSelector: {kubernetes.io/hostname: node1}
  terminationGracePeriodSeconds: 1
  containers:
  - name: nc
    image: ambient-lite.local/echo:dev
    imagePullPolicy: IfNotPresent
    command: [sh, -c, ` + strconv.Quote(script) + `]
`
}

func testRolloutRestart(t *testing.T, ds, selector string) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	if _, err := e.k.Apply(ctx(t), ns, longConn); err != nil {
		t.Fatal(err)
	}
	if _, err := e.k.WaitPods(ctx(t), ns, "", time.Minute, "longconn running and enrolled", func(p []mesh.Pod) bool {
		for _, x := range p {
			if x.Name == "longconn" {
				return x.Enrolled() && x.Phase == "Running"
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the long-lived connection answering", func() error {
		logs := e.kubectl(t, "-n", ns, "logs", "longconn")
		if n := strings.Count(logs, "ping"); n < 5 {
			return fmt.Errorf("%d pings answered so far; its log:\n%s", n, logs)
		}
		return nil
	})
	old, err := e.k.Pods(ctx(t), mesh.SystemNamespace, selector)
	if err != nil {
		t.Fatal(err)
	}

	restart := time.Now()
	e.kubectl(t, "-n", mesh.SystemNamespace, "rollout", "restart", "daemonset/"+ds)
	e.kubectl(t, "-n", mesh.SystemNamespace, "rollout", "status", "daemonset/"+ds, "--timeout=3m")
	rolledOut := time.Since(restart)
	for _, p := range old {
		e.kubectl(t, "-n", mesh.SystemNamespace, "wait", "--for=delete", "pod/"+p.Name, "--timeout=2m")
	}
	oldGone := time.Since(restart)
	firstOK := eventually(t, 30*time.Second, "a new connection after the restart", func() error {
		r, err := e.echo(t, ns, 1, "http://echo/")
		if err != nil || r.Codes["200"] != 1 {
			return fmt.Errorf("codes %v, %v", r.Codes, err)
		}
		return nil
	})
	e.mustEcho(t, ns, 5, "http://echo/")
	t.Logf("%s: rollout done %s after the restart, old pods gone at %s; new connections work %s after that",
		ds, rolledOut.Round(100*time.Millisecond), oldGone.Round(100*time.Millisecond), firstOK.Round(100*time.Millisecond))

	// Three more seconds of pings after the old pods are gone and new connections work.
	time.Sleep(3 * time.Second)
	logs := e.kubectl(t, "-n", ns, "logs", "longconn", "--timestamps")
	t.Logf("long-lived connection through the %s restart: %s", ds, measureLongConn(t, logs, restart, restart.Add(oldGone)))

	// A pod created after the restart is enrolled by the new agent and served by the new ztunnel.
	e.kubectl(t, "-n", ns, "scale", "deployment/echo", "--replicas=2")
	echoes, err := e.k.WaitPods(ctx(t), ns, "app=echo", time.Minute, "2 enrolled echo pods", func(p []mesh.Pod) bool {
		return len(p) == 2 && mesh.AllEnrolled(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range echoes {
		e.mustEcho(t, ns, 1, "http://"+p.IP+":8080/")
	}
	if open := !strings.Contains(logs, "connection closed"); open {
		time.Sleep(time.Second)
		if strings.Contains(e.kubectl(t, "-n", ns, "logs", "longconn"), "connection closed") {
			t.Logf("the long-lived connection, open through the restart, closed when echo got a second endpoint")
		}
	}
}

// measureLongConn reads longconn's timestamped log and says what the connection saw: answers
// before, during (restart to old pods gone) and after the restart, the longest silence, and
// whether and when it ended.
func measureLongConn(t *testing.T, logs string, restart, done time.Time) string {
	t.Helper()
	var pings []time.Time
	var exited string
	var exitedAt time.Time
	retries := 0
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		ts, text, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			continue
		}
		switch {
		case text == "ping":
			pings = append(pings, at)
		case text == "connection closed":
			exited, exitedAt = text, at
		case text == "no answer, retrying":
			retries++
		}
	}
	if len(pings) == 0 {
		return "no answer at all: " + logs
	}
	var before, during, after int
	var gap time.Duration
	var gapAt time.Time
	for i, p := range pings {
		switch {
		case p.Before(restart):
			before++
		case p.Before(done):
			during++
		default:
			after++
		}
		if i > 0 && p.Sub(pings[i-1]) > gap {
			gap, gapAt = p.Sub(pings[i-1]), pings[i-1]
		}
	}
	fate := "it stayed open"
	if exited != "" {
		fate = fmt.Sprintf("it was closed %s after the restart began", exitedAt.Sub(restart).Round(100*time.Millisecond))
	}
	if retries > 0 {
		fate += fmt.Sprintf(" (before it, the new pod's first %d connection(s) got no answer)", retries)
	}
	return fmt.Sprintf("%s; answers: %d before, %d during (restart to old pods gone, %s), %d after; longest silence %s from %s after the restart",
		fate, before, during, done.Sub(restart).Round(100*time.Millisecond), after, gap.Round(10*time.Millisecond),
		gapAt.Sub(restart).Round(100*time.Millisecond))
}
