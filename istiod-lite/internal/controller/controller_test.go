package controller

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

func TestTypeURLs(t *testing.T) {
	for url, m := range map[string]proto.Message{AddressType: &workloadapi.Address{}, AuthorizationType: &security.Authorization{}} {
		if want := "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()); url != want {
			t.Errorf("type URL %q, want %q", url, want)
		}
	}
}

type pushes struct {
	mu  sync.Mutex
	got map[string]int
}

func (p *pushes) Push(typeURL string, _ []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got[typeURL]++
}

func pod(ns, name, ip string, lbls, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls, Annotations: annotations},
		Spec:       corev1.PodSpec{ServiceAccountName: "sa", NodeName: "node-1"},
		Status: corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		}},
	}
}

// runController starts a controller over informers of kube and istio (opts.Kube and
// opts.Istio are set here) and opts.Gateway if set, waits until it is ready, and stops
// everything when t ends.
func runController(t *testing.T, kube kubernetes.Interface, istio istioclient.Interface, opts Options) (*Controller, context.Context) {
	t.Helper()
	opts.Kube = informers.NewSharedInformerFactory(kube, 0)
	opts.Istio = istioinformers.NewSharedInformerFactory(istio, 0)
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	opts.Kube.Start(ctx.Done())
	opts.Istio.Start(ctx.Done())
	if opts.Gateway != nil {
		opts.Gateway.Start(ctx.Done())
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		opts.Kube.Shutdown()
		opts.Istio.Shutdown()
		if opts.Gateway != nil {
			opts.Gateway.Shutdown()
		}
	})
	<-c.Ready()
	return c, ctx
}

func TestSnapshot(t *testing.T) {
	// Istio's generated fake clientset does not implement watch-list.
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		pod("mesh", "a", "10.0.0.1", map[string]string{"app": "a"}, map[string]string{"ambient.istio.io/redirection": "enabled"}),
		pod("plain", "b", "10.0.0.2", map[string]string{"app": "b"}, nil),
		pod("mesh", "pending", "", nil, nil),
		func() *corev1.Pod {
			p := pod("plain", "host", "192.168.1.10", map[string]string{"app": "host"}, nil)
			p.Spec.HostNetwork = true
			return p
		}(),
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "svc"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "a"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "bad"}, Spec: corev1.ServiceSpec{ClusterIP: "not-an-ip"}},
	)
	istio := istiofake.NewSimpleClientset(
		&securityclient.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "allow-a"},
			Spec: v1beta1.AuthorizationPolicy{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "a"}},
				Rules:    []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Namespaces: []string{"mesh"}}}}}},
			},
		},
		&securityclient.AuthorizationPolicy{ // bad port: skipped, the rest still served
			ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "bad-port"},
			Spec:       v1beta1.AuthorizationPolicy{Rules: []*v1beta1.Rule{{To: []*v1beta1.Rule_To{{Operation: &v1beta1.Operation{Ports: []string{"x"}}}}}}},
		},
	)
	p := &pushes{got: map[string]int{}}
	c, ctx := runController(t, kube, istio, Options{Pusher: p, Debounce: 5 * time.Millisecond})

	all := func(typeURL string) map[string]*xds.Resource {
		d, err := c.Sources()[typeURL].Generate(ctx, &xdsserver.Request{TypeURL: typeURL, Wildcard: true})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]*xds.Resource{}
		for _, r := range d.Upserts {
			m[r.Name] = r
		}
		return m
	}
	addrs := all(AddressType)
	if len(addrs) != 4 {
		t.Fatalf("addresses %v, want pods a, b, host and Service svc", keys(addrs))
	}
	workload := func(name string) *workloadapi.Workload {
		t.Helper()
		r, ok := addrs[name]
		if !ok {
			t.Fatalf("no address %q in %v", name, keys(addrs))
		}
		var a workloadapi.Address
		if err := r.Resource.UnmarshalTo(&a); err != nil {
			t.Fatal(err)
		}
		return a.GetWorkload()
	}
	a := workload("Kubernetes//Pod/mesh/a")
	if a.TunnelProtocol != workloadapi.TunnelProtocol_HBONE || len(a.Services) != 1 || len(a.AuthorizationPolicies) != 1 || a.AuthorizationPolicies[0] != "mesh/allow-a" {
		t.Errorf("workload a = %v", a)
	}
	if b := workload("Kubernetes//Pod/plain/b"); b.TunnelProtocol != workloadapi.TunnelProtocol_NONE {
		t.Errorf("workload b outside the mesh = %v, want tunnel NONE", b)
	}
	if h := workload("Kubernetes//Pod/plain/host"); h.NetworkMode != workloadapi.NetworkMode_HOST_NETWORK || h.TunnelProtocol != workloadapi.TunnelProtocol_NONE {
		t.Errorf("host-network pod = %v, want network mode HOST_NETWORK without HBONE", h)
	}
	if _, ok := addrs["mesh/svc.mesh.svc.cluster.local"]; !ok {
		t.Errorf("no Service address in %v", keys(addrs))
	}
	if authz := all(AuthorizationType); len(authz) != 1 || authz["mesh/allow-a"] == nil {
		t.Errorf("authorizations %v, want mesh/allow-a only", keys(authz))
	}
	if len(c.idx.skipped) != 2 {
		t.Errorf("skipped %v, want the bad Service and the bad policy", c.idx.skipped)
	}

	// A change is rebuilt and pushed; the versions of unchanged resources stay.
	before := p.got[AddressType]
	if err := kube.CoreV1().Pods("mesh").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := p.got[AddressType]
		p.mu.Unlock()
		if n > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no push after deleting a pod")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d, err := c.Sources()[AddressType].Generate(ctx, &xdsserver.Request{TypeURL: AddressType, Wildcard: true, Have: map[string]string{
		"Kubernetes//Pod/mesh/a":  addrs["Kubernetes//Pod/mesh/a"].Version,
		"Kubernetes//Pod/plain/b": addrs["Kubernetes//Pod/plain/b"].Version,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Removals) != 1 || d.Removals[0] != "Kubernetes//Pod/mesh/a" {
		t.Errorf("removals %v, want pod a", d.Removals)
	}
	for _, u := range d.Upserts {
		if u.Name == "Kubernetes//Pod/plain/b" {
			t.Errorf("unchanged pod b resent")
		}
	}
}

func keys(m map[string]*xds.Resource) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
