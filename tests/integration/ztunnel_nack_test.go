package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// TestZtunnelNACKKeepsState: istiod-lite and ztunnel disagree on the mesh root namespace (a
// misconfiguration), so a mesh-wide policy reaches ztunnel with scope GLOBAL from a namespace
// it does not take for the root. ztunnel NACKs that update, istiod-lite logs the NACK with
// its detail, and ztunnel keeps its last good state and goes on accepting later updates.
func TestZtunnelNACKKeepsState(t *testing.T) {
	c := cluster.Shared(t)
	ctx := context.Background()
	root := c.Namespace(t, nil)
	m := istiodtest.StartMesh(t, c, "--root-namespace="+root) // ztunnel keeps the default, istio-system
	node := "node-" + m.NS
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	admin := startZtunnel(t, c, m, node)
	dump, waitDump := configDump(t, admin)
	istio, err := istioclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	app := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	createPod := func(name, ip string) {
		t.Helper()
		pod, err := c.Client.CoreV1().Pods(app).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{Name: "web", Image: "web:test"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if _, err := c.Client.CoreV1().Pods(app).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	policy := func(ns, name string, selector map[string]string) {
		t.Helper()
		ap := &securityclient.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1beta1.AuthorizationPolicy{Rules: []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{
				Namespaces: []string{app}}}}}}},
		}
		if selector != nil {
			ap.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
		}
		if _, err := istio.SecurityV1().AuthorizationPolicies(ns).Create(ctx, ap, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	createPod("web-1", "10.244.9.1")
	policy(app, "allow-web", map[string]string{"app": "web"})
	waitDump("the pod and its policy", func(d string) bool {
		return strings.Contains(d, "/Pod/"+app+"/web-1") && strings.Contains(d, "allow-web")
	})
	good := dump()

	// The mesh-wide policy: GLOBAL from istiod-lite's root, which ztunnel refuses.
	policy(root, "mesh-wide", nil)
	err = wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(m.Log(), "xds response rejected (NACK)") && strings.Contains(m.Log(), "mesh-wide"), nil
	})
	if err != nil {
		t.Fatalf("istiod-lite logged no NACK naming the mesh-wide policy; its log:\n%s", m.Log())
	}
	for _, line := range strings.Split(m.Log(), "\n") {
		if strings.Contains(line, "NACK") {
			t.Logf("istiod-lite: %s", line)
		}
	}
	d := dump()
	if !strings.Contains(d, "/Pod/"+app+"/web-1") || !strings.Contains(d, "allow-web") || strings.Contains(d, "mesh-wide") {
		t.Fatalf("after the NACK ztunnel should keep exactly its last good state; before:\n%.2000s\nafter:\n%.2000s", good, d)
	}

	// Later updates still apply: a new pod (Address) and a new valid policy (Authorization,
	// whose response leaves out the rejected version).
	createPod("web-2", "10.244.9.2")
	waitDump("a pod created after the NACK", func(d string) bool { return strings.Contains(d, "/Pod/"+app+"/web-2") })
	if err := istio.SecurityV1().AuthorizationPolicies(root).Delete(ctx, "mesh-wide", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	policy(app, "allow-web-2", map[string]string{"app": "web"})
	waitDump("a policy created after the NACK", func(d string) bool {
		return strings.Contains(d, "allow-web-2") && strings.Contains(d, "allow-web") && !strings.Contains(d, "mesh-wide")
	})
}
