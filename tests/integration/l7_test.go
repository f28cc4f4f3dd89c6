package integration

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
)

const xdsRouteType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

// waypointNode is the node a waypoint pod sends (waypoint/README.md, the contract).
func waypointNode(t *testing.T, ns, pod, gateway string) *xds.Node {
	t.Helper()
	meta, err := structpb.NewStruct(map[string]any{"NAME": pod, "NAMESPACE": ns, "GATEWAY_NAME": gateway, "INSTANCE_IPS": "10.244.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	return &xds.Node{ID: fmt.Sprintf("waypoint~10.244.9.9~%s.%s~%s.svc.cluster.local", pod, ns, ns), Metadata: meta}
}

// startXDS runs an xDS client of m with token and node, watching typeURLs, until t ends.
func startXDS(t *testing.T, m istiodtest.Mesh, token string, node *xds.Node, typeURLs ...string) *xdsView {
	t.Helper()
	view := &xdsView{res: map[string]map[string]*xds.Resource{}}
	client, err := xds.NewClient(xds.ClientOptions{
		Conn: istiodtest.XDSConn(t, m.Istiod, m.Root, token), Node: node, Handler: view.apply,
		MinBackoff: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range typeURLs {
		client.Watch(u)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return view
}

func (v *xdsView) names(typeURL string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for n := range v.res[typeURL] {
		out = append(out, n)
	}
	return out
}

// weightedClusters are the weighted clusters of the first route of rc's virtual host for
// port 80 that has any.
func weightedClusters(r *xds.Resource) map[string]uint32 {
	if r == nil {
		return nil
	}
	rc := &routev3.RouteConfiguration{}
	if r.Resource.UnmarshalTo(rc) != nil {
		return nil
	}
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			if wcs := rt.GetRoute().GetWeightedClusters().GetClusters(); len(wcs) > 0 {
				out := map[string]uint32{}
				for _, wc := range wcs {
					out[wc.GetName()] = wc.GetWeight().GetValue()
				}
				return out
			}
		}
	}
	return nil
}

// TestWaypointL7Config runs istiod-lite against the real apiserver with a waypoint Gateway
// made ready (its deployer's objects and a hand-made ready EndpointSlice), a Service bound to
// it by istio.io/use-waypoint and HTTPRoutes attached to that Service. An xDS client
// authenticated as the waypoint's ServiceAccount gets the Service's RouteConfiguration with
// the 80/20 split and the Gateway's own, and the new weights when the route changes; a client
// with another ServiceAccount naming the same Gateway gets none; a ztunnel client gets only
// addresses. The routes' status: Accepted and ResolvedRefs, or ResolvedRefs=False
// BackendNotFound for a missing backend.
func TestWaypointL7Config(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	gws, err := gatewayclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ns := c.Namespace(t, nil)
	poll := func(what string, cond func(ctx context.Context) (bool, error)) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 20*time.Second, true, cond); err != nil {
			t.Fatalf("waiting for %s: %v\nistiod-lite log:\n%s", what, err, m.Log())
		}
	}

	if _, err := gws.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("the deployer's ServiceAccount and Service", func(ctx context.Context) (bool, error) {
		_, e1 := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		_, e2 := c.Client.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return e1 == nil && e2 == nil, nil
	})
	// Ready as the kubelet would make it: a ready endpoint (this control plane has no nodes).
	if _, err := c.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint-ready", Labels: map[string]string{
			discoveryv1.LabelServiceName: "waypoint", discoveryv1.LabelManagedBy: "integration-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("mesh"), Port: ptr.To[int32](15008), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.9.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("the waypoint Gateway's status address", func(ctx context.Context) (bool, error) {
		g, err := gws.GatewayV1().Gateways(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && len(g.Status.Addresses) > 0, err
	})

	for _, s := range []struct {
		name   string
		labels map[string]string
	}{{"web", map[string]string{"istio.io/use-waypoint": "waypoint"}}, {"web-v2", nil}} {
		if _, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Labels: s.labels},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": s.name},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	backend := func(name string, weight int32) gatewayv1.HTTPBackendRef {
		return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
			BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr.To[gatewayv1.PortNumber](80)},
			Weight:                 ptr.To(weight)}}
	}
	parents := gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{
		Group: ptr.To[gatewayv1.Group](""), Kind: ptr.To[gatewayv1.Kind]("Service"), Name: "web", Port: ptr.To[gatewayv1.PortNumber](80)}}}
	split, err := gws.GatewayV1().HTTPRoutes(ns).Create(ctx, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "split"},
		Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: parents,
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{backend("web", 80), backend("web-v2", 20)}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gws.GatewayV1().HTTPRoutes(ns).Create(ctx, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "missing-backend"},
		Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: parents,
			Rules: []gatewayv1.HTTPRouteRule{{
				Matches:     []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/missing")}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backend("nope", 1)},
			}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The waypoint (its ServiceAccount's token), an intruder naming the same Gateway with
	// another account of the namespace, and ztunnel.
	istiodtest.CreateSA(t, c, ns, "intruder")
	istiodtest.CreateSA(t, c, m.NS, "ztunnel")
	start := time.Now()
	waypoint := startXDS(t, m, istiodtest.SAToken(t, c, ns, "waypoint", "istio-ca", nil), waypointNode(t, ns, "waypoint-0", "waypoint"), xdsAddressType, xdsRouteType)
	intruder := startXDS(t, m, istiodtest.SAToken(t, c, ns, "intruder", "istio-ca", nil), waypointNode(t, ns, "waypoint-1", "waypoint"), xdsAddressType, xdsRouteType)
	ztunnel := startXDS(t, m, istiodtest.SAToken(t, c, m.NS, "ztunnel", "istio-ca", nil), nil, xdsAddressType)

	webKey := ns + "/web." + ns + ".svc.cluster.local"
	gwKey := "gateway/" + ns + "/waypoint"
	v1 := "outbound|80||web." + ns + ".svc.cluster.local"
	v2 := "outbound|80||web-v2." + ns + ".svc.cluster.local"
	xdsWaitFor(t, "RouteConfiguration 80/20", start, func() bool {
		w := weightedClusters(waypoint.get(xdsRouteType, webKey))
		return w[v1] == 80 && w[v2] == 20 && waypoint.get(xdsRouteType, gwKey) != nil
	})
	if names := waypoint.names(xdsRouteType); len(names) != 2 {
		t.Errorf("the waypoint has RouteConfigurations %v, want %s and %s", names, webKey, gwKey)
	}

	split, err = gws.GatewayV1().HTTPRoutes(ns).Get(ctx, split.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	split.Spec.Rules[0].BackendRefs = []gatewayv1.HTTPBackendRef{backend("web", 50), backend("web-v2", 50)}
	start = time.Now()
	if _, err := gws.GatewayV1().HTTPRoutes(ns).Update(ctx, split, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	xdsWaitFor(t, "RouteConfiguration 50/50", start, func() bool {
		w := weightedClusters(waypoint.get(xdsRouteType, webKey))
		return w[v1] == 50 && w[v2] == 50
	})

	routeCond := func(name, typ string) metav1.Condition {
		r, err := gws.GatewayV1().HTTPRoutes(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Status.Parents {
			if p.ControllerName == "istio.io/gateway-controller" && string(p.ParentRef.Name) == "web" {
				for _, c := range p.Conditions {
					if c.Type == typ && c.ObservedGeneration == r.Generation {
						return c
					}
				}
			}
		}
		return metav1.Condition{}
	}
	for _, want := range []struct {
		route, typ, reason string
		status             metav1.ConditionStatus
	}{
		{"split", "Accepted", "Accepted", metav1.ConditionTrue},
		{"split", "ResolvedRefs", "ResolvedRefs", metav1.ConditionTrue},
		{"split", "ResolvedWaypoints", "ResolvedWaypoints", metav1.ConditionTrue},
		{"missing-backend", "Accepted", "Accepted", metav1.ConditionTrue},
		{"missing-backend", "ResolvedRefs", "BackendNotFound", metav1.ConditionFalse},
	} {
		poll(fmt.Sprintf("HTTPRoute %s %s=%s %s", want.route, want.typ, want.status, want.reason), func(context.Context) (bool, error) {
			c := routeCond(want.route, want.typ)
			return c.Status == want.status && c.Reason == want.reason, nil
		})
	}

	// Both other clients have been answered (their addresses arrived) long after the
	// waypoint got its configuration: neither got any RouteConfiguration.
	for _, v := range []struct {
		name string
		view *xdsView
	}{{"intruder", intruder}, {"ztunnel", ztunnel}} {
		xdsWaitFor(t, v.name+" addresses", start, func() bool { return v.view.get(xdsAddressType, webKey) != nil })
		if names := v.view.names(xdsRouteType); len(names) != 0 {
			t.Errorf("%s got RouteConfigurations %v, want none", v.name, names)
		}
	}
	if !strings.Contains(m.Log(), "route configuration withheld from xDS stream") {
		t.Errorf("istiod-lite did not log why the intruder got nothing:\n%s", m.Log())
	}
}
