package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

// TestWaypointBinding follows one waypoint through its life: named by the namespace before
// it is ready (no field), ready (Service and Workload get its hostname, its own pod does
// not), narrowed to services, the namespace label removed. Policies bound to it by
// targetRefs never reach ztunnel, and are not reported as skipped.
func TestWaypointBinding(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		pod("app", "web-0", "10.0.0.1", map[string]string{"app": "web"}, map[string]string{"ambient.istio.io/redirection": "enabled"}),
		pod("app", "waypoint-0", "10.0.0.9", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none"}, nil),
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		},
	)
	istio := istiofake.NewSimpleClientset(
		&securityclient.AuthorizationPolicy{ // the waypoint's: an L7 DENY that must not fail closed in ztunnel
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "waypoint-deny-delete"},
			Spec: v1beta1.AuthorizationPolicy{
				TargetRefs: []*typev1beta1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"}},
				Action:     v1beta1.AuthorizationPolicy_DENY,
				Rules:      []*v1beta1.Rule{{To: []*v1beta1.Rule_To{{Operation: &v1beta1.Operation{Methods: []string{"DELETE"}}}}}},
			},
		},
		&securityclient.AuthorizationPolicy{ // targetRefs win over a selector, as in istiod
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "service-paths"},
			Spec: v1beta1.AuthorizationPolicy{
				Selector:   &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
				TargetRefs: []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "web"}},
				Action:     v1beta1.AuthorizationPolicy_DENY,
				Rules:      []*v1beta1.Rule{{To: []*v1beta1.Rule_To{{Operation: &v1beta1.Operation{Paths: []string{"/admin"}}}}}},
			},
		},
	)
	waypoint := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "waypoint", Labels: map[string]string{"istio.io/waypoint-for": "all"}},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}
	// The generated fake does not track objects given to NewSimpleClientset; create it.
	gateways := gatewayfake.NewSimpleClientset()
	waypoint, err := gateways.GatewayV1().Gateways("app").Create(context.Background(), waypoint, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, ctx := runController(t, kube, istio, Options{Debounce: time.Millisecond, Gateway: gatewayinformers.NewSharedInformerFactory(gateways, 0)})

	const (
		svcKey     = "app/web.app.svc.cluster.local"
		webUID     = "Kubernetes//Pod/app/web-0"
		waypointID = "Kubernetes//Pod/app/waypoint-0"
	)
	want := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "app", Hostname: "waypoint.app.svc.cluster.local"}}}
	// waypoints returns the waypoint fields served for the Service, web-0 and waypoint-0.
	waypoints := func() (svc, web, self *workloadapi.GatewayAddress) {
		d, err := c.Sources()[AddressType].Generate(ctx, &xdsserver.Request{TypeURL: AddressType, Wildcard: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range d.Upserts {
			var a workloadapi.Address
			if err := r.Resource.UnmarshalTo(&a); err != nil {
				t.Fatal(err)
			}
			switch r.Name {
			case svcKey:
				svc = a.GetService().GetWaypoint()
			case webUID:
				web = a.GetWorkload().GetWaypoint()
			case waypointID:
				self = a.GetWorkload().GetWaypoint()
			}
		}
		return svc, web, self
	}
	eventually := func(what string, svcWant, webWant *workloadapi.GatewayAddress) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			svc, web, self := waypoints()
			if proto.Equal(svc, svcWant) && proto.Equal(web, webWant) && self == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Service waypoint %v, web-0 %v, waypoint-0 %v; want %v, %v and none", what, svc, web, self, svcWant, webWant)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}

	eventually("no label", nil, nil)
	before := c.snap.Load()
	setNamespaceLabel(t, ctx, kube, "app", "istio.io/use-waypoint", ptr.To("waypoint"))
	// The label changes no resource; wait for the flush that applied it (the atomic snapshot
	// also orders this goroutine's read of the index after that flush's writes).
	for deadline := time.Now().Add(5 * time.Second); c.snap.Load() == before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no flush after labelling the namespace")
		}
	}
	eventually("namespace labelled, waypoint not ready", nil, nil)
	if reason := c.idx.unbound["Service app/web"]; !strings.Contains(reason, "waypoint app/waypoint: waypoint is not ready") {
		t.Errorf("Service app/web asks for a waypoint that is not ready: recorded %q", reason)
	}

	// The deployer reports the address: the waypoint is ready.
	waypoint.Status.Addresses = []gatewayv1.GatewayStatusAddress{
		{Type: ptr.To(gatewayv1.IPAddressType), Value: "10.96.0.99"},
		{Type: ptr.To(gatewayv1.HostnameAddressType), Value: "waypoint.app.svc.cluster.local"},
	}
	waypoint, err = gateways.GatewayV1().Gateways("app").UpdateStatus(ctx, waypoint, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually("waypoint ready (all)", want, want)

	waypoint.Labels["istio.io/waypoint-for"] = "service"
	if _, err := gateways.GatewayV1().Gateways("app").Update(ctx, waypoint, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("waypoint for services only", want, nil)

	setNamespaceLabel(t, ctx, kube, "app", "istio.io/use-waypoint", nil)
	eventually("namespace label removed", nil, nil)

	// The waypoint's policies: nothing for ztunnel, nothing skipped, nothing referenced.
	authz, err := c.Sources()[AuthorizationType].Generate(ctx, &xdsserver.Request{TypeURL: AuthorizationType, Wildcard: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(authz.Upserts) != 0 {
		t.Errorf("ztunnel gets %d authorizations for waypoint policies, want none: %v", len(authz.Upserts), authz.Upserts)
	}
	for object := range c.idx.skipped {
		t.Errorf("skipped %s: %s", object, c.idx.skipped[object])
	}
	d, _ := c.Sources()[AddressType].Generate(ctx, &xdsserver.Request{TypeURL: AddressType, Wildcard: true})
	for _, r := range d.Upserts {
		var a workloadapi.Address
		if err := r.Resource.UnmarshalTo(&a); err == nil && len(a.GetWorkload().GetAuthorizationPolicies()) > 0 {
			t.Errorf("%s references %v, want no policy", r.Name, a.GetWorkload().GetAuthorizationPolicies())
		}
	}
}

// TestWaypointsOptional: without Options.Gateway the controller runs as before and nothing
// gets a waypoint, whatever the labels say.
func TestWaypointsOptional(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: map[string]string{"istio.io/use-waypoint": "waypoint"}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}},
	)
	c, ctx := runController(t, kube, istiofake.NewSimpleClientset(), Options{Debounce: time.Millisecond})
	d, err := c.Sources()[AddressType].Generate(ctx, &xdsserver.Request{TypeURL: AddressType, Wildcard: true})
	if err != nil || len(d.Upserts) != 1 {
		t.Fatalf("addresses %v, %v; want the Service", d, err)
	}
	var a workloadapi.Address
	if err := d.Upserts[0].Resource.UnmarshalTo(&a); err != nil || a.GetService() == nil || a.GetService().Waypoint != nil {
		t.Errorf("service %v (%v), want one without waypoint", &a, err)
	}
}

// setNamespaceLabel sets (or, with nil, removes) one label of a namespace.
func setNamespaceLabel(t *testing.T, ctx context.Context, kube *kubefake.Clientset, name, key string, value *string) {
	t.Helper()
	ns, err := kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if value == nil {
		delete(ns.Labels, key)
	} else {
		ns.Labels[key] = *value
	}
	if _, err := kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
