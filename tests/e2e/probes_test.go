package e2e

import (
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/e2e/mesh"
)

// TestKubeletProbes enrolls running pods with HTTP readiness and liveness probes that fail
// fast (every second, three or five misses), under PeerAuthentication STRICT: the kubelet's
// probes come from the node in plaintext and must still reach the app, so the pods stay
// Ready and are never restarted; a pod created inside the mesh becomes Ready too.
func TestKubeletProbes(t *testing.T) {
	e := mustEnv(t)
	ns := e.deploy(t, app{NoEcho: true, ClientNode: "node2"})
	if _, err := e.k.Apply(ctx(t), ns, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: probed}
spec:
  replicas: 2
  # One pod per node: a restart replaces them one at a time.
  strategy:
    rollingUpdate: {maxSurge: 0, maxUnavailable: 1}
  selector:
    matchLabels: {app: probed}
  template:
    metadata:
      labels: {app: probed}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchLabels: {app: probed}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: echo
        image: ambient-lite.local/echo:dev
        imagePullPolicy: IfNotPresent
        args: ["--port=8080"]
        # Probes every second: a probe the mesh captures fails every time, refused (STRICT) at
        # once or dropped after the 2 s timeout, so the pod turns unready within 3 to 7 s of
        # the 10 watched. The thresholds only ride out single slow probes on a loaded machine
        # (CI runs other packages beside this one; the default 1 s timeout was missed there).
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
          timeoutSeconds: 2
          failureThreshold: 3
        livenessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
          timeoutSeconds: 2
          failureThreshold: 5
`); err != nil {
		t.Fatal(err)
	}
	before, err := e.k.WaitPods(ctx(t), ns, "app=probed", 2*time.Minute, "2 Ready pods", func(p []mesh.Pod) bool { return len(p) == 2 && mesh.AllReady(p) })
	if err != nil {
		t.Fatal(err)
	}
	e.kubectl(t, "label", "namespace", ns, mesh.LabelDataplaneMode+"="+mesh.DataplaneModeAmbient)
	if _, err := e.k.WaitPods(ctx(t), ns, "app=probed", time.Minute, "both enrolled", mesh.AllEnrolled); err != nil {
		t.Fatal(err)
	}
	// Ten seconds is ten readiness and ten liveness probes per pod.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pods, err := e.k.Pods(ctx(t), ns, "app=probed")
		if err != nil {
			t.Fatal(err)
		}
		if !mesh.AllEnrolled(pods) {
			t.Fatalf("a probed pod is not Ready (or not enrolled) in the mesh: %s", mesh.Describe(pods))
		}
		samePods(t, before, pods)
		time.Sleep(time.Second)
	}
	// A pod created in the mesh: its first probes already pass through the redirection.
	e.kubectl(t, "-n", ns, "rollout", "restart", "deployment/probed")
	e.kubectl(t, "-n", ns, "rollout", "status", "deployment/probed", "--timeout=2m")
	pods, err := e.k.WaitPods(ctx(t), ns, "app=probed", time.Minute, "new pods enrolled and Ready", func(p []mesh.Pod) bool {
		return len(p) == 2 && mesh.AllEnrolled(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Restarts != 0 {
			t.Errorf("new pod %s restarted %d times (liveness failed?)", p.Name, p.Restarts)
		}
	}
	e.mustEcho(t, ns, 2, "http://"+pods[0].IP+":8080/")
}
