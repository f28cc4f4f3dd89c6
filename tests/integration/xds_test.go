package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
)

const (
	xdsAddressType       = "type.googleapis.com/istio.workload.Address"
	xdsAuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// xdsView is what an xds.Client has received: resources by type URL and name.
type xdsView struct {
	mu  sync.Mutex
	res map[string]map[string]*xds.Resource
}

func (v *xdsView) apply(typeURL string, ups []*xds.Resource, removals []string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.res[typeURL]
	if m == nil {
		m = map[string]*xds.Resource{}
		v.res[typeURL] = m
	}
	for _, u := range ups {
		m[u.Name] = u
	}
	for _, r := range removals {
		delete(m, r)
	}
	return nil
}

func (v *xdsView) get(typeURL, name string) *xds.Resource {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.res[typeURL][name]
}

// xdsWaitFor polls the view until cond holds (10 s at most) and logs how long it took since
// start.
func xdsWaitFor(t testing.TB, what string, start time.Time, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 2*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("%s: not propagated within 10s", what)
	}
	t.Logf("propagation: %-40s %v", what, time.Since(start).Round(time.Millisecond))
}

func xdsWorkload(r *xds.Resource) *workloadapi.Workload {
	if r == nil {
		return nil
	}
	var a workloadapi.Address
	if r.Resource.UnmarshalTo(&a) != nil {
		return nil
	}
	return a.GetWorkload()
}

// TestXDSPropagation follows changes to Kubernetes objects to an xDS client of istiod-lite.
func TestXDSPropagation(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	istiodtest.CreateSA(t, c, m.NS, "ztunnel")
	conn := istiodtest.XDSConn(t, m.Istiod, m.Root, istiodtest.SAToken(t, c, m.NS, "ztunnel", "istio-ca", nil))
	view := &xdsView{res: map[string]map[string]*xds.Resource{}}
	client, err := xds.NewClient(xds.ClientOptions{Conn: conn, Handler: view.apply, MinBackoff: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	client.Watch(xdsAddressType)
	client.Watch(xdsAuthorizationType)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	ns := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	node := ns + "-node"
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	uid := "Kubernetes//Pod/" + ns + "/app"

	// A pod with an IP arrives.
	pod, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName: node, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "app", Image: "app:test", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: "10.244.7.7", PodIPs: []corev1.PodIP{{IP: "10.244.7.7"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	xdsWaitFor(t, "pod IP+Ready → workload", start, func() bool {
		w := xdsWorkload(view.get(xdsAddressType, uid))
		return w != nil && w.Status == workloadapi.WorkloadStatus_HEALTHY && w.Node == node
	})
	if w := xdsWorkload(view.get(xdsAddressType, uid)); w.TunnelProtocol != workloadapi.TunnelProtocol_NONE {
		t.Errorf("workload before redirection has tunnel %v, want NONE", w.TunnelProtocol)
	}

	// Redirected by the CNI: HBONE.
	start = time.Now()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{"ambient.istio.io/redirection": "enabled"}}})
	if _, err := c.Client.CoreV1().Pods(ns).Patch(ctx, "app", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	xdsWaitFor(t, "redirection annotation → HBONE", start, func() bool {
		w := xdsWorkload(view.get(xdsAddressType, uid))
		return w != nil && w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE
	})

	// A Service selecting it arrives, and the workload lists it.
	start = time.Now()
	if _, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstrFromString("http")},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svcKey := ns + "/web." + ns + ".svc.cluster.local"
	xdsWaitFor(t, "Service → service and workload.services", start, func() bool {
		w := xdsWorkload(view.get(xdsAddressType, uid))
		return view.get(xdsAddressType, svcKey) != nil && w != nil && w.Services[svcKey] != nil
	})
	var svc workloadapi.Address
	if err := view.get(xdsAddressType, svcKey).Resource.UnmarshalTo(&svc); err != nil || svc.GetService() == nil {
		t.Fatalf("service resource: %v %v", &svc, err)
	}
	if ports := xdsWorkload(view.get(xdsAddressType, uid)).Services[svcKey].Ports; len(ports) != 1 || ports[0].ServicePort != 80 || ports[0].TargetPort != 8080 {
		t.Errorf("workload service ports %v, want 80→8080", ports)
	}

	// An AuthorizationPolicy arrives, and the workload it selects references it.
	istio, err := istioclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := istio.SecurityV1().AuthorizationPolicies(ns).Create(ctx, &securityclient.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-ns"},
		Spec: v1beta1.AuthorizationPolicy{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
			Rules:    []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Namespaces: []string{ns}}}}}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	polKey := ns + "/allow-ns"
	xdsWaitFor(t, "AuthorizationPolicy → authorization", start, func() bool {
		w := xdsWorkload(view.get(xdsAddressType, uid))
		return view.get(xdsAuthorizationType, polKey) != nil && w != nil && len(w.AuthorizationPolicies) == 1 && w.AuthorizationPolicies[0] == polKey
	})
	var authz security.Authorization
	if err := view.get(xdsAuthorizationType, polKey).Resource.UnmarshalTo(&authz); err != nil || authz.Scope != security.Scope_WORKLOAD_SELECTOR {
		t.Errorf("authorization %v: %v", &authz, err)
	}

	// Deleting the pod removes the workload.
	start = time.Now()
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "app", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	xdsWaitFor(t, "pod deleted → removal", start, func() bool { return view.get(xdsAddressType, uid) == nil })
	if view.get(xdsAddressType, svcKey) == nil {
		t.Error("the Service went away with its only pod")
	}
}

// TestXDSRefusesUnauthenticated: a stream without a valid istio-ca token ends with
// Unauthenticated.
func TestXDSRefusesUnauthenticated(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	istiodtest.CreateSA(t, c, m.NS, "someone")
	for name, token := range map[string]string{
		"no token":       "",
		"garbage":        "not-a-token",
		"wrong audience": istiodtest.SAToken(t, c, m.NS, "someone", "kubernetes", nil),
	} {
		t.Run(name, func(t *testing.T) {
			conn := istiodtest.XDSConn(t, m.Istiod, m.Root, "")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			}
			stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
			if err == nil {
				err = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdsAddressType, ResourceNamesSubscribe: []string{"*"}})
			}
			// Send reports io.EOF when the server has already ended the stream (it refuses
			// before reading): the status is what Recv returns then.
			if err == nil || errors.Is(err, io.EOF) {
				_, err = stream.Recv()
			}
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("stream error %v, want %s", err, codes.Unauthenticated)
			}
			t.Log(fmt.Sprint(err))
		})
	}
}
