package waypoint

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
)

// harness runs a Deployer against fake clientsets. The Kubernetes one supports server-side
// apply; the Gateway API one cannot track Gateways with field management (Gateway is also
// registered as v1beta1), so status applies are emulated by applyStatus.
type harness struct {
	kube *kubefake.Clientset
	gw   *gatewayfake.Clientset
	mu   sync.Mutex
	// writes counts create/update/patch/apply actions per resource (and subresource).
	writes map[string]int
}

func startDeployer(t *testing.T, kubeObjs []runtime.Object, gwObjs []runtime.Object) *harness {
	t.Helper()
	h := &harness{kube: kubefake.NewClientset(kubeObjs...), gw: gatewayfake.NewSimpleClientset(), writes: map[string]int{}}
	ctx0 := context.Background()
	for _, o := range gwObjs {
		var err error
		switch o := o.(type) {
		case *gatewayv1.Gateway:
			_, err = h.gw.GatewayV1().Gateways(o.Namespace).Create(ctx0, o, metav1.CreateOptions{})
		case *gatewayv1.GatewayClass:
			_, err = h.gw.GatewayV1().GatewayClasses().Create(ctx0, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	count := func(a k8stesting.Action) (bool, runtime.Object, error) {
		switch a.GetVerb() {
		case "create", "update", "patch":
			h.mu.Lock()
			r := a.GetResource().Resource
			if a.GetSubresource() != "" {
				r += "/" + a.GetSubresource()
			}
			h.writes[r]++
			h.mu.Unlock()
		}
		return false, nil, nil
	}
	h.gw.PrependReactor("patch", "*", applyStatus(h.gw.Tracker()))
	// The fake informers miss events between their list and their watch: Run starts once
	// every watch is open.
	watching := map[string]bool{}
	watched := func(a k8stesting.Action) (bool, watch.Interface, error) {
		h.mu.Lock()
		watching[a.GetResource().Resource] = true
		h.mu.Unlock()
		return false, nil, nil
	}
	h.kube.PrependWatchReactor("*", watched)
	h.gw.PrependWatchReactor("*", watched)
	h.kube.PrependReactor("*", "*", count)
	h.gw.PrependReactor("*", "*", count)
	kf := informers.NewSharedInformerFactory(h.kube, 0)
	gf := gatewayinformers.NewSharedInformerFactory(h.gw, 0)
	d, err := New(Options{
		Kube: h.kube, Gateway: h.gw, KubeInformers: kf, GatewayInformers: gf,
		Render: testRender, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		Now: func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kf.Start(ctx.Done())
	gf.Start(ctx.Done())
	eventually(t, "the informers' watches", func(context.Context) (bool, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(watching) == 6, nil
	})
	done := make(chan error)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		kf.Shutdown()
		gf.Shutdown()
	})
	return h
}

// quiesce waits until no write happened for 300 ms.
func (h *harness) quiesce(t *testing.T) {
	t.Helper()
	total := func() (n int) {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.writes {
			n += c
		}
		return n
	}
	last := -1
	eventually(t, "no more writes", func(context.Context) (bool, error) {
		n := total()
		if n == last {
			return true, nil
		}
		last = n
		time.Sleep(300 * time.Millisecond)
		return false, nil
	})
}

func (h *harness) writeCount(resource string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.writes[resource]
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func gateway(name, class string) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns1", UID: types.UID("uid-" + name), Generation: 1},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: gatewayv1.ObjectName(class),
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: PortHBONE, Protocol: ProtocolHBONE}},
		},
	}
}

func findCond(conds []metav1.Condition, typ string) metav1.Condition {
	for _, c := range conds {
		if c.Type == typ {
			return c
		}
	}
	return metav1.Condition{}
}

func TestDeployerCreatesClassAndAccepts(t *testing.T) {
	h := startDeployer(t, nil, nil)
	eventually(t, "the GatewayClass, Accepted", func(ctx context.Context) (bool, error) {
		gc, err := h.gw.GatewayV1().GatewayClasses().Get(ctx, ClassName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if gc.Spec.ControllerName != ControllerName || ptr.Deref(gc.Spec.Description, "") != ClassDescription {
			t.Fatalf("GatewayClass spec = %+v", gc.Spec)
		}
		c := findCond(gc.Status.Conditions, "Accepted")
		return c.Status == metav1.ConditionTrue && c.Reason == "Accepted", nil
	})
}

func TestDeployerLeavesUsersClassSpec(t *testing.T) {
	desc := "mine"
	h := startDeployer(t, nil, []runtime.Object{&gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: ClassName},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: ControllerName, Description: &desc},
	}})
	eventually(t, "the class Accepted", func(ctx context.Context) (bool, error) {
		gc, err := h.gw.GatewayV1().GatewayClasses().Get(ctx, ClassName, metav1.GetOptions{})
		return err == nil && findCond(gc.Status.Conditions, "Accepted").Status == metav1.ConditionTrue, err
	})
	gc, _ := h.gw.GatewayV1().GatewayClasses().Get(context.Background(), ClassName, metav1.GetOptions{})
	if *gc.Spec.Description != "mine" || h.writeCount("gatewayclasses") != 0 {
		t.Errorf("the existing class was rewritten: %+v, %d writes", gc.Spec, h.writeCount("gatewayclasses"))
	}
}

func TestDeployerWaypoint(t *testing.T) {
	h := startDeployer(t, nil, []runtime.Object{gateway("waypoint", ClassName)})
	ctx := context.Background()
	var dep struct{ ok bool }
	eventually(t, "the ServiceAccount, Deployment and Service", func(ctx context.Context) (bool, error) {
		_, e1 := h.kube.CoreV1().ServiceAccounts("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		d, e2 := h.kube.AppsV1().Deployments("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		_, e3 := h.kube.CoreV1().Services("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		dep.ok = e2 == nil && d.Spec.Template.Spec.Containers[0].Image == testRender.Image
		return e1 == nil && dep.ok && e3 == nil, nil
	})
	d, _ := h.kube.AppsV1().Deployments("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
	if len(d.OwnerReferences) != 1 || d.OwnerReferences[0].Kind != "Gateway" || d.OwnerReferences[0].Name != "waypoint" {
		t.Errorf("owner references = %+v", d.OwnerReferences)
	}
	if len(d.ManagedFields) == 0 || d.ManagedFields[0].Manager != FieldManager || d.ManagedFields[0].Operation != metav1.ManagedFieldsOperationApply {
		t.Errorf("managed fields = %+v, want an Apply by %s", d.ManagedFields, FieldManager)
	}
	eventually(t, "Accepted, not yet Programmed", func(ctx context.Context) (bool, error) {
		gw, err := h.gw.GatewayV1().Gateways("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		acc, prog := findCond(gw.Status.Conditions, "Accepted"), findCond(gw.Status.Conditions, "Programmed")
		return acc.Status == metav1.ConditionTrue && prog.Status == metav1.ConditionFalse && prog.Reason == "AddressNotAssigned" &&
			len(gw.Status.Addresses) == 0 && len(gw.Status.Listeners) == 1, nil
	})

	// The apiserver allocates the ClusterIP; a ready endpoint appears.
	svc, _ := h.kube.CoreV1().Services("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "10.96.0.20", []string{"10.96.0.20"}
	if _, err := h.kube.CoreV1().Services("ns1").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.kube.DiscoveryV1().EndpointSlices("ns1").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "waypoint-x", Namespace: "ns1", Labels: map[string]string{discoveryv1.LabelServiceName: "waypoint"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("mesh"), Port: ptr.To[int32](15008)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Programmed with addresses", func(ctx context.Context) (bool, error) {
		gw, err := h.gw.GatewayV1().Gateways("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		a := gw.Status.Addresses
		return findCond(gw.Status.Conditions, "Programmed").Status == metav1.ConditionTrue && len(a) == 2 &&
			a[0].Value == "10.96.0.20" && *a[0].Type == gatewayv1.IPAddressType &&
			a[1].Value == "waypoint.ns1.svc.cluster.local" && *a[1].Type == gatewayv1.HostnameAddressType, nil
	})

	// A label on the Gateway is copied to its objects; the status does not change.
	h.quiesce(t) // events of the last writes may still be on their way
	statusWrites := h.writeCount("gateways/status")
	gw, _ := h.gw.GatewayV1().Gateways("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
	gw.Labels = map[string]string{"touch": "1"}
	if _, err := h.gw.GatewayV1().Gateways("ns1").Update(ctx, gw, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the label copied to the Deployment", func(ctx context.Context) (bool, error) {
		d, err := h.kube.AppsV1().Deployments("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && d.Labels["touch"] == "1", err
	})
	h.quiesce(t)
	if got := h.writeCount("gateways/status"); got != statusWrites {
		t.Errorf("gateway status rewritten %d times without a change", got-statusWrites)
	}

	// Steady state: events that change nothing of ours write nothing.
	writes := map[string]int{}
	for _, r := range []string{"serviceaccounts", "deployments", "services", "gateways/status"} {
		writes[r] = h.writeCount(r)
	}
	svc, _ = h.kube.CoreV1().Services("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
	svc.Annotations["example.com/other-controller"] = "x"
	if _, err := h.kube.CoreV1().Services("ns1").Update(ctx, svc, metav1.UpdateOptions{FieldManager: "other"}); err != nil {
		t.Fatal(err)
	}
	h.quiesce(t)
	for r, n := range writes {
		want := n
		if r == "services" {
			want++ // the test's own update
		}
		if got := h.writeCount(r); got != want {
			t.Errorf("%s written %d times in a steady state", r, got-want)
		}
	}
}

func TestDeployerIgnoresOtherClasses(t *testing.T) {
	h := startDeployer(t, nil, []runtime.Object{
		&gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: "other"}, Spec: gatewayv1.GatewayClassSpec{ControllerName: "example.com/gateway"}},
		gateway("ingress", "other"),
		gateway("unknown-class", "nonexistent"),
		gateway("marker", ClassName),
	})
	ctx := context.Background()
	// The marker Gateway is reconciled after the others were queued.
	eventually(t, "the marker waypoint", func(ctx context.Context) (bool, error) {
		_, err := h.kube.AppsV1().Deployments("ns1").Get(ctx, "marker", metav1.GetOptions{})
		return err == nil, nil
	})
	time.Sleep(100 * time.Millisecond)
	deps, _ := h.kube.AppsV1().Deployments("ns1").List(ctx, metav1.ListOptions{})
	if len(deps.Items) != 1 {
		t.Errorf("deployments = %d, want only the waypoint's", len(deps.Items))
	}
	for _, name := range []string{"ingress", "unknown-class"} {
		gw, _ := h.gw.GatewayV1().Gateways("ns1").Get(ctx, name, metav1.GetOptions{})
		if len(gw.Status.Conditions) != 0 {
			t.Errorf("%s got a status: %+v", name, gw.Status.Conditions)
		}
	}
	gc, _ := h.gw.GatewayV1().GatewayClasses().Get(ctx, "other", metav1.GetOptions{})
	if len(gc.Status.Conditions) != 0 {
		t.Errorf("another controller's class got a status: %+v", gc.Status.Conditions)
	}
}

func TestDeployerCustomClassOfItsController(t *testing.T) {
	h := startDeployer(t, nil, []runtime.Object{
		&gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: "my-waypoints"}, Spec: gatewayv1.GatewayClassSpec{ControllerName: ControllerName}},
		gateway("wp", "my-waypoints"),
	})
	eventually(t, "its waypoint", func(ctx context.Context) (bool, error) {
		d, err := h.kube.AppsV1().Deployments("ns1").Get(ctx, "wp", metav1.GetOptions{})
		return err == nil && d.Labels[LabelGatewayClassName] == "my-waypoints", nil
	})
}

func TestDeployerDoesNotTakeOverUsersService(t *testing.T) {
	mine := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: "ns1", Labels: map[string]string{"app": "mine"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	h := startDeployer(t, []runtime.Object{mine}, []runtime.Object{gateway("waypoint", ClassName)})
	eventually(t, "the Deployment", func(ctx context.Context) (bool, error) {
		_, err := h.kube.AppsV1().Deployments("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil, nil
	})
	eventually(t, "a Gateway status", func(ctx context.Context) (bool, error) {
		gw, err := h.gw.GatewayV1().Gateways("ns1").Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && findCond(gw.Status.Conditions, "Programmed").Reason != "", err
	})
	svc, _ := h.kube.CoreV1().Services("ns1").Get(context.Background(), "waypoint", metav1.GetOptions{})
	if svc.Labels["app"] != "mine" || svc.Labels[LabelManaged] != "" || len(svc.Spec.Ports) != 1 || h.writeCount("services") != 0 {
		t.Errorf("the user's Service was changed: %+v", svc)
	}
	gw, _ := h.gw.GatewayV1().Gateways("ns1").Get(context.Background(), "waypoint", metav1.GetOptions{})
	// As istiod: without any endpoint it reports no instances before looking at the ports.
	if p := findCond(gw.Status.Conditions, "Programmed"); p.Status != metav1.ConditionFalse || p.Reason != "AddressNotAssigned" {
		t.Errorf("Programmed = %+v, want False, AddressNotAssigned", p)
	}
}

func TestNewValidates(t *testing.T) {
	kube, gw := kubefake.NewClientset(), gatewayfake.NewClientset()
	full := Options{Kube: kube, Gateway: gw, KubeInformers: informers.NewSharedInformerFactory(kube, 0),
		GatewayInformers: gatewayinformers.NewSharedInformerFactory(gw, 0), Render: testRender}
	tests := []struct {
		name   string
		mutate func(*Options)
		ok     bool
	}{
		{"complete", func(*Options) {}, true},
		{"no image", func(o *Options) { o.Render.Image = "" }, false},
		{"no xds address", func(o *Options) { o.Render.XDSAddress = "" }, false},
		{"no gateway client", func(o *Options) { o.Gateway = nil }, false},
		{"no informers", func(o *Options) { o.KubeInformers = nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := full
			tt.mutate(&o)
			if _, err := New(o); (err == nil) != tt.ok {
				t.Errorf("New: err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// applyStatus emulates a server-side apply of a Gateway's or GatewayClass's status: the applied
// status replaces the current one, and an apply that changes nothing writes nothing (no event),
// as on the apiserver.
func applyStatus(tracker k8stesting.ObjectTracker) k8stesting.ReactionFunc {
	return func(a k8stesting.Action) (bool, runtime.Object, error) {
		p, ok := a.(k8stesting.PatchAction)
		if !ok || p.GetPatchType() != types.ApplyPatchType || p.GetSubresource() != "status" {
			return false, nil, nil
		}
		cur, err := tracker.Get(p.GetResource(), p.GetNamespace(), p.GetName())
		if err != nil {
			return true, nil, err
		}
		var next runtime.Object
		switch cur := cur.(type) {
		case *gatewayv1.Gateway:
			var patch gatewayv1.Gateway
			if err := json.Unmarshal(p.GetPatch(), &patch); err != nil {
				return true, nil, err
			}
			if equality.Semantic.DeepEqual(cur.Status, patch.Status) {
				return true, cur, nil
			}
			o := cur.DeepCopy()
			o.Status = patch.Status
			next = o
		case *gatewayv1.GatewayClass:
			var patch gatewayv1.GatewayClass
			if err := json.Unmarshal(p.GetPatch(), &patch); err != nil {
				return true, nil, err
			}
			if equality.Semantic.DeepEqual(cur.Status, patch.Status) {
				return true, cur, nil
			}
			o := cur.DeepCopy()
			o.Status = patch.Status
			next = o
		default:
			return false, nil, nil
		}
		return true, next, tracker.Update(p.GetResource(), next, p.GetNamespace())
	}
}

// testWriter sends the deployer's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
