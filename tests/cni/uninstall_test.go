package cni

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRestartKeepsUninstallRemoves is issue 12 on one node, against the real apiserver: the
// node agent stopped while its DaemonSet exists (kubectl rollout restart) leaves the mesh in
// place and a pod created during the gap waits for the next agent and is enrolled; stopped
// once its DaemonSet is deleted (helm uninstall), it leaves no program, pin, chain entry,
// kubeconfig, token or plugin binary on the node, and the pods it had enrolled talk
// directly, ztunnel gone.
func TestRestartKeepsUninstallRemoves(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ns := e.mesh.NS

	// The agent's DaemonSet, as the cni chart makes it (scheduled nowhere: the agent is
	// this test's process), and the permission to read it.
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-cni-node", Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "istio-cni-node"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"k8s-app": "istio-cni-node"}},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"ambient-lite.test/no-such-node": "true"},
					Containers:   []corev1.Container{{Name: "node-agent", Image: "cni:test"}},
				},
			},
		},
	}
	if _, err := e.c.Client.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "cni-agent-self", Namespace: ns},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}}}}
	if _, err := e.c.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "cni-agent-self", Namespace: ns},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "cni-agent", Namespace: ns}},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "cni-agent-self"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.agent.stop(syscall.SIGTERM) // started without knowing its DaemonSet: it keeps everything
	e.agent.env = append(e.agent.env, "POD_NAMESPACE="+ns, "DAEMONSET_NAME=istio-cni-node")
	e.startAgent()
	e.agent.waitLog("found the agent's DaemonSet: when the agent stops, it uninstalls the mesh from the node only if the DaemonSet is gone", 10*time.Second)

	mesh := e.c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	plain := e.c.Namespace(t, nil)
	must := func(p *pod, err error) *pod {
		t.Helper()
		if err != nil {
			t.Fatalf("CNI ADD of %s: %v\nnode agent log:\n%s", p.name, err, e.agent.log.String())
		}
		return p
	}
	server := must(e.addPod(mesh, "server", nil))
	client := must(e.addPod(mesh, "client", nil))
	outside := must(e.addPod(plain, "outside", nil))
	e.serve(server, 8080)
	e.eventually(client, server.ip+":8080", "server saw")

	// kubectl rollout restart: the DaemonSet stays, so does everything on the node.
	e.agent.stop(syscall.SIGTERM)
	if rec := logged(t, e.agent, "node agent stopping"); rec["mode"] != "keep" {
		t.Fatalf("agent stopped with its DaemonSet present in mode %v, want keep (%v)", rec["mode"], rec["why"])
	}
	if _, ok := e.chained(); !ok {
		t.Fatal("a restart took the plugin out of the CNI config")
	}
	if _, err := os.Stat(e.agentSock); err != nil {
		t.Errorf("a restart removed the plugin's socket file: %v", err)
	}
	for _, p := range []*pod{server, client} {
		if got := e.programs(p); got != 1 {
			t.Errorf("after a restart, %s has %d programs, want 1", p.name, got)
		}
	}
	// A pod created in the gap waits for the next agent, then is enrolled.
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(time.Second)
		e.agent.start()
	}()
	gap := must(e.addPod(mesh, "gap", nil))
	<-restarted
	e.agent.waitLog("node agent ready", 30*time.Second)
	if got := e.programs(gap); got != 1 {
		t.Errorf("the pod created during the restart has %d programs, want 1", got)
	}
	e.waitAnnotation(gap, true)
	e.eventually(client, server.ip+":8080", "server saw")

	// helm uninstall: the DaemonSet goes first.
	if err := e.c.Client.AppsV1().DaemonSets(ns).Delete(ctx, ds.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.agent.stop(syscall.SIGTERM)
	if rec := logged(t, e.agent, "node agent stopping"); rec["mode"] != "uninstall" {
		t.Fatalf("agent stopped with its DaemonSet deleted in mode %v, want uninstall (%v)", rec["mode"], rec["why"])
	}
	logged(t, e.agent, "mesh uninstalled from the node")
	// ztunnel goes too: traffic that still met a redirection would now be dropped.
	e.ztunnel.stop(syscall.SIGTERM)

	for _, p := range []*pod{server, client, gap, outside} {
		if got := e.programs(p); got != 0 {
			t.Errorf("after uninstall, %s has %d sk_lookup programs, want 0", p.name, got)
		}
	}
	if _, err := os.Stat(filepath.Join(e.pinRoot, "ambient-lite")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after uninstall the pin root is still there (%v): %v", err, e.pins())
	}
	list, err := libcni.ConfListFromFile(filepath.Join(e.confDir, "10-bridge.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if !slices.Equal(types, []string{"bridge"}) {
		t.Errorf("after uninstall the CNI config chains %v, want bridge alone", types)
	}
	leftovers := map[string]string{
		"plugin binary":     filepath.Join(e.binDir, "ambient-lite-cni"),
		"plugin kubeconfig": filepath.Join(e.confDir, "ZZZ-ambient-lite-kubeconfig"),
		"plugin token":      filepath.Join(e.dir, "plugin-token"),
		"plugin socket":     e.agentSock,
	}
	for what, path := range leftovers {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after uninstall the %s %s is still there (%v)", what, path, err)
		}
	}
	for _, p := range []*pod{server, client, gap} {
		e.waitAnnotation(p, false)
	}
	// Direct traffic both ways, from a formerly enrolled pod and from outside the mesh.
	if got := e.eventually(client, server.ip+":8080", "server saw"); !strings.Contains(got, client.ip+":") {
		t.Errorf("server saw %q, want the client's own address %s", got, client.ip)
	}
	e.eventually(outside, server.ip+":8080", "server saw "+outside.ip+":")
	e.serve(client, 8081)
	e.eventually(server, client.ip+":8081", "client saw "+server.ip+":")

	// New pods start, in the mesh's namespace too, with the config as the runtime now
	// reads it.
	e.list = list
	for name, ns := range map[string]string{"after-mesh": mesh, "after-plain": plain} {
		p := must(e.addPod(ns, name, nil))
		if got := e.programs(p); got != 0 {
			t.Errorf("pod %s created after uninstall has %d programs, want 0", p.name, got)
		}
	}
}

// logged returns the last JSON line of a process that has exited whose msg is msg.
func logged(t *testing.T, p *process, msg string) map[string]any {
	t.Helper()
	var found map[string]any
	for _, line := range strings.Split(p.log.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			found = rec
		}
	}
	if found == nil {
		t.Fatalf("%s never logged %q; log:\n%s", p.name, msg, p.log.String())
	}
	return found
}
