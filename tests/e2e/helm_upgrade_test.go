package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
)

// TestHelmUpgrade changes a value of the installed ztunnel release (logLevel info -> debug)
// with `helm upgrade --reuse-values`: the release's revision goes up, every ztunnel pod
// runs with the new value, and enrolled traffic works afterwards.
func TestHelmUpgrade(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{Enrolled: true, EchoNode: "node2", ClientNode: "node1"})
	revision := func() string {
		return strings.TrimSpace(e.kubectl(t, "-n", mesh.SystemNamespace, "get", "secret", "-l", "owner=helm,name=ztunnel,status=deployed",
			"-o", "jsonpath={.items[0].metadata.labels.version}"))
	}
	before := revision()
	start := time.Now()
	if _, err := e.k.Upgrade(ctx(t), e.root, "ztunnel", "logLevel=debug"); err != nil {
		t.Fatal(err)
	}
	e.kubectl(t, "-n", mesh.SystemNamespace, "rollout", "status", "daemonset/ztunnel", "--timeout=3m")
	t.Logf("helm upgrade ztunnel --set logLevel=debug: revision %s -> %s, rolled out in %s", before, revision(), time.Since(start).Round(100*time.Millisecond))
	if after := revision(); after == before {
		t.Errorf("the ztunnel release's revision stayed %s", before)
	}
	pods, err := e.k.WaitPods(ctx(t), mesh.SystemNamespace, "app=ztunnel", 2*time.Minute, "2 Ready ztunnels", func(p []mesh.Pod) bool {
		return len(p) == 2 && mesh.AllReady(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		level := e.kubectl(t, "-n", mesh.SystemNamespace, "get", "pod", p.Name,
			"-o", `jsonpath={.spec.containers[0].env[?(@.name=="LOG_LEVEL")].value}`)
		if level != "debug" {
			t.Errorf("ztunnel pod %s on %s runs with LOG_LEVEL=%q, want debug", p.Name, p.Node, level)
		}
	}
	eventually(t, 30*time.Second, "enrolled traffic after the upgrade", func() error {
		_, err := e.echo(t, ns, 3, "http://echo/")
		return err
	})
	e.mustEcho(t, ns, 5, "http://echo/")
}
