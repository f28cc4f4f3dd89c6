package routestatus

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/l7"
	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
)

var (
	t0 = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 = metav1.NewTime(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC))
)

func svcRef(name string) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr.To[gatewayv1.Group](""), Kind: ptr.To[gatewayv1.Kind]("Service"), Name: gatewayv1.ObjectName(name)}
}

func cond(typ string, status metav1.ConditionStatus, reason string, at metav1.Time) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: reason, ObservedGeneration: 1, LastTransitionTime: at}
}

func parent(ref gatewayv1.ParentReference, controller gatewayv1.GatewayController, conds ...metav1.Condition) gatewayv1.RouteParentStatus {
	return gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: controller, Conditions: conds}
}

func TestMerge(t *testing.T) {
	ours := l7.ControllerName
	const theirs gatewayv1.GatewayController = "example.com/gateway"
	gwRef := gatewayv1.ParentReference{Name: "ingress"}
	accepted := func(at metav1.Time) metav1.Condition { return cond("Accepted", metav1.ConditionTrue, "Accepted", at) }
	resolved := func(at metav1.Time) metav1.Condition {
		return cond("ResolvedRefs", metav1.ConditionTrue, "ResolvedRefs", at)
	}
	notFound := func(at metav1.Time) metav1.Condition {
		return cond("ResolvedRefs", metav1.ConditionFalse, "BackendNotFound", at)
	}
	zero := metav1.Time{}
	tests := []struct {
		name              string
		current, computed []gatewayv1.RouteParentStatus
		want              []gatewayv1.RouteParentStatus
		changed           bool
	}{
		{
			name:     "new status",
			computed: []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(zero), resolved(zero))},
			want:     []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(t1), resolved(t1))},
			changed:  true,
		},
		{
			name:     "unchanged: no write",
			current:  []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(t0), resolved(t0))},
			computed: []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(zero), resolved(zero))},
			want:     []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(t0), resolved(t0))},
		},
		{
			name:     "a status flips: only its transition time moves",
			current:  []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(t0), resolved(t0))},
			computed: []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(zero), notFound(zero))},
			want:     []gatewayv1.RouteParentStatus{parent(svcRef("web"), ours, accepted(t0), notFound(t1))},
			changed:  true,
		},
		{
			name: "other controllers' parents kept in place, ours no longer computed removed, new ones appended",
			current: []gatewayv1.RouteParentStatus{
				parent(svcRef("old"), ours, accepted(t0)),
				parent(gwRef, theirs, accepted(t0)),
				parent(svcRef("web"), ours, accepted(t0), cond("Stale", metav1.ConditionTrue, "Stale", t0)),
			},
			computed: []gatewayv1.RouteParentStatus{
				parent(svcRef("new"), ours, accepted(zero)),
				parent(svcRef("web"), ours, accepted(zero)),
			},
			want: []gatewayv1.RouteParentStatus{
				parent(gwRef, theirs, accepted(t0)),
				parent(svcRef("web"), ours, accepted(t0)),
				parent(svcRef("new"), ours, accepted(t1)),
			},
			changed: true,
		},
		{
			name:    "only other controllers' parents: untouched",
			current: []gatewayv1.RouteParentStatus{parent(gwRef, theirs, accepted(t0))},
			want:    []gatewayv1.RouteParentStatus{parent(gwRef, theirs, accepted(t0))},
		},
		{name: "nothing at all", current: []gatewayv1.RouteParentStatus{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := Merge(tt.current, tt.computed, t1)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parents (-want +got):\n%s", diff)
			}
			if changed != tt.changed {
				t.Errorf("changed = %v, want %v", changed, tt.changed)
			}
		})
	}
}

// TestReconciler: a route to an existing backend gets Accepted and ResolvedRefs, one to a
// missing backend ResolvedRefs=False BackendNotFound; a steady state writes nothing; a
// Service appearing (ServicesChanged) resolves the second route.
func TestReconciler(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	client := gatewayfake.NewSimpleClientset()
	var writes atomic.Int32
	client.PrependReactor("update", "httproutes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" {
			writes.Add(1)
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mkRoute := func(name, backend string) {
		_, err := client.GatewayV1().HTTPRoutes("app").Create(ctx, &gatewayv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name, Generation: 1},
			Spec: gatewayv1.HTTPRouteSpec{
				CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcRef("web")}},
				Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
					BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(backend), Port: ptr.To[gatewayv1.PortNumber](80)}}}}}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	mkRoute("ok", "web")
	mkRoute("missing", "nope")
	web := l7.Service{Namespace: "app", Name: "web", Hostname: "web.app.svc.cluster.local", Ports: []int32{80},
		Waypoint: types.NamespacedName{Namespace: "app", Name: "waypoint"}}
	var services atomic.Pointer[map[types.NamespacedName]l7.Service]
	services.Store(&map[types.NamespacedName]l7.Service{{Namespace: "app", Name: "web"}: web})
	inf := gatewayinformers.NewSharedInformerFactory(client, 0)
	r, err := New(Options{Client: client, Informers: inf, Services: func() map[types.NamespacedName]l7.Service { return *services.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	inf.Start(ctx.Done())
	defer inf.Shutdown()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	condOf := func(name, typ string) metav1.Condition {
		route, err := client.GatewayV1().HTTPRoutes("app").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range route.Status.Parents {
			if p.ControllerName != l7.ControllerName {
				continue
			}
			for _, c := range p.Conditions {
				if c.Type == typ {
					return c
				}
			}
		}
		return metav1.Condition{}
	}
	await := func(what, name, typ string, status metav1.ConditionStatus, reason string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			c := condOf(name, typ)
			if c.Status == status && c.Reason == reason {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: route %s condition %s = %+v, want %s %s", what, name, typ, c, status, reason)
			}
		}
	}
	await("resolvable", "ok", "Accepted", metav1.ConditionTrue, "Accepted")
	await("resolvable", "ok", "ResolvedRefs", metav1.ConditionTrue, "ResolvedRefs")
	await("missing backend", "missing", "Accepted", metav1.ConditionTrue, "Accepted")
	await("missing backend", "missing", "ResolvedRefs", metav1.ConditionFalse, "BackendNotFound")

	// Steady state: the update events of our own writes and a resync of everything write nothing.
	time.Sleep(100 * time.Millisecond)
	before := writes.Load()
	r.ServicesChanged()
	time.Sleep(100 * time.Millisecond)
	if n := writes.Load() - before; n != 0 {
		t.Errorf("%d status writes in a steady state, want none", n)
	}

	services.Store(&map[types.NamespacedName]l7.Service{
		{Namespace: "app", Name: "web"}:  web,
		{Namespace: "app", Name: "nope"}: {Namespace: "app", Name: "nope", Hostname: "nope.app.svc.cluster.local", Ports: []int32{80}},
	})
	r.ServicesChanged()
	await("backend created", "missing", "ResolvedRefs", metav1.ConditionTrue, "ResolvedRefs")
	if n := writes.Load() - before; n != 1 {
		t.Errorf("%d status writes after one backend appeared, want 1", n)
	}
}
