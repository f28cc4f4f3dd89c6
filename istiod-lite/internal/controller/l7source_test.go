package controller

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

func waypointStream(t *testing.T, id uint64, gateway, namespace, pod string, principal any) *xdsserver.StreamInfo {
	t.Helper()
	fields := map[string]any{}
	for k, v := range map[string]string{"GATEWAY_NAME": gateway, "NAMESPACE": namespace, "NAME": pod} {
		if v != "" {
			fields[k] = v
		}
	}
	meta, err := structpb.NewStruct(fields)
	if err != nil {
		t.Fatal(err)
	}
	return &xdsserver.StreamInfo{ID: id, NodeID: "waypoint~10.0.0.9~" + pod + "." + namespace + "~" + namespace + ".svc.cluster.local", Metadata: meta, Principal: principal}
}

func TestEntitled(t *testing.T) {
	wps := map[string]*waypointConfig{
		"app/waypoint": {serviceAccount: "waypoint"},
		"app/custom":   {serviceAccount: "custom-sa"},
	}
	caller := func(ns, sa, pod string) caserver.Caller {
		return caserver.Caller{Namespace: ns, ServiceAccount: sa, PodName: pod}
	}
	tests := []struct {
		name             string
		gateway, ns, pod string
		principal        any
		want             string // waypoint key, or "" for none
		err              string
	}{
		{"the waypoint's ServiceAccount", "waypoint", "app", "waypoint-0", caller("app", "waypoint", ""), "app/waypoint", ""},
		{"pointer principal", "waypoint", "app", "", &caserver.Caller{Namespace: "app", ServiceAccount: "waypoint"}, "app/waypoint", ""},
		{"pod-bound token of the named pod", "waypoint", "app", "waypoint-0", caller("app", "waypoint", "waypoint-0"), "app/waypoint", ""},
		{"ServiceAccount named by annotation", "custom", "app", "", caller("app", "custom-sa", ""), "app/custom", ""},
		{"not a waypoint (ztunnel)", "", "istio-system", "ztunnel-x", caller("istio-system", "ztunnel", ""), "", "not a waypoint"},
		{"no namespace", "waypoint", "", "", caller("app", "waypoint", ""), "", "no NAMESPACE"},
		{"unauthenticated", "waypoint", "app", "", nil, "", "not authenticated"},
		{"another namespace's account", "waypoint", "app", "", caller("other", "waypoint", ""), "", "of another namespace"},
		{"another waypoint's account", "waypoint", "app", "", caller("app", "custom-sa", ""), "", "not as the waypoint's ServiceAccount waypoint"},
		{"the default name when an annotation renames it", "custom", "app", "", caller("app", "custom", ""), "", "not as the waypoint's ServiceAccount custom-sa"},
		{"workload account", "waypoint", "app", "", caller("app", "default", ""), "", "not as the waypoint's ServiceAccount"},
		{"unknown Gateway", "nope", "app", "", caller("app", "nope", ""), "", "no such waypoint Gateway"},
		{"token of another pod", "waypoint", "app", "waypoint-0", caller("app", "waypoint", "waypoint-1"), "", "token pod waypoint-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := entitled(waypointStream(t, 1, tt.gateway, tt.ns, tt.pod, tt.principal), wps)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || w != nil {
					t.Fatalf("entitled = %v, %v; want an error containing %q", w, err, tt.err)
				}
				return
			}
			if err != nil || w != wps[tt.want] {
				t.Fatalf("entitled = %v, %v; want %s", w, err, tt.want)
			}
		})
	}
	if _, err := entitled(&xdsserver.StreamInfo{}, wps); !errors.Is(err, errNotWaypoint) {
		t.Errorf("a stream without metadata: %v, want errNotWaypoint", err)
	}
}

// namePushes records the names pushed per type URL.
type namePushes struct {
	mu  sync.Mutex
	got map[string]map[string]struct{}
}

func (p *namePushes) Push(typeURL string, names []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.got[typeURL] == nil {
		p.got[typeURL] = map[string]struct{}{}
	}
	for _, n := range names {
		p.got[typeURL][n] = struct{}{}
	}
}

// take returns the names pushed for typeURL since the last take, sorted.
func (p *namePushes) take(typeURL string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Sorted(maps.Keys(p.got[typeURL]))
	delete(p.got, typeURL)
	return out
}

// TestWaypointRouteConfiguration: two waypoints in one namespace, a Service bound to each,
// an HTTPRoute splitting one Service's traffic 80/20 and a policy targeting one Gateway. Each
// waypoint's stream gets exactly its Services' RouteConfigurations and its Gateway's; a
// stream whose identity does not match gets nothing; an HTTPRoute change pushes only the
// route's Service, a rebinding only the rebound Service; the Gateway policy is in every
// virtual host of its waypoint and in none of the other's.
func TestWaypointRouteConfiguration(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	svc := func(name, waypoint string) *corev1.Service {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: map[string]string{"web": "10.96.0.1", "web-v2": "10.96.0.2", "api": "10.96.0.3"}[name], Selector: map[string]string{"app": name},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "admin", Port: 9090, Protocol: corev1.ProtocolTCP}}},
		}
		if waypoint != "" {
			s.Labels = map[string]string{"istio.io/use-waypoint": waypoint}
		}
		return s
	}
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		svc("web", "wp-a"), svc("web-v2", ""), svc("api", "wp-b"),
	)
	istio := istiofake.NewSimpleClientset(&securityclient.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "deny-delete"},
		Spec: v1beta1.AuthorizationPolicy{
			TargetRefs: []*typev1beta1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "wp-a"}},
			Action:     v1beta1.AuthorizationPolicy_DENY,
			Rules:      []*v1beta1.Rule{{To: []*v1beta1.Rule_To{{Operation: &v1beta1.Operation{Methods: []string{"DELETE"}}}}}},
		},
	})
	gateways := gatewayfake.NewSimpleClientset()
	ctx := context.Background()
	for _, name := range []string{"wp-a", "wp-b"} {
		gw, err := gateways.GatewayV1().Gateways("app").Create(ctx, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		gw.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: ptr.To(gatewayv1.HostnameAddressType), Value: name + ".app.svc.cluster.local"}}
		if _, err := gateways.GatewayV1().Gateways("app").UpdateStatus(ctx, gw, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	route := &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "split"},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Group: ptr.To[gatewayv1.Group](""), Kind: ptr.To[gatewayv1.Kind]("Service"), Name: "web"}}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{
				{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "web", Port: ptr.To[gatewayv1.PortNumber](80)}, Weight: ptr.To[int32](80)}},
				{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: "web-v2", Port: ptr.To[gatewayv1.PortNumber](80)}, Weight: ptr.To[int32](20)}},
			}}},
		},
	}
	route, err := gateways.GatewayV1().HTTPRoutes("app").Create(ctx, route, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := &namePushes{got: map[string]map[string]struct{}{}}
	c, ctx := runController(t, kube, istio, Options{Debounce: time.Millisecond, Pusher: p, Gateway: gatewayinformers.NewSharedInformerFactory(gateways, 0)})

	const (
		web    = "app/web.app.svc.cluster.local"
		api    = "app/api.app.svc.cluster.local"
		webV2  = "app/web-v2.app.svc.cluster.local"
		gwA    = "gateway/app/wp-a"
		gwB    = "gateway/app/wp-b"
		webV1C = "outbound|80||web.app.svc.cluster.local"
		webV2C = "outbound|80||web-v2.app.svc.cluster.local"
	)
	streamA := waypointStream(t, 1, "wp-a", "app", "wp-a-0", caserver.Caller{Namespace: "app", ServiceAccount: "wp-a"})
	streamB := waypointStream(t, 2, "wp-b", "app", "wp-b-0", caserver.Caller{Namespace: "app", ServiceAccount: "wp-b"})
	// B's account asking for A's configuration.
	impostor := waypointStream(t, 3, "wp-a", "app", "wp-b-0", caserver.Caller{Namespace: "app", ServiceAccount: "wp-b"})
	ztunnel := waypointStream(t, 4, "", "istio-system", "ztunnel-x", caserver.Caller{Namespace: "istio-system", ServiceAccount: "ztunnel"})

	// get answers a wildcard request of a stream holding have, told changed (nil: anything).
	get := func(info *xdsserver.StreamInfo, have map[string]string, changed []string) *xdsserver.Delta {
		t.Helper()
		d, err := c.Sources()[RouteType].Generate(ctx, &xdsserver.Request{Stream: info, TypeURL: RouteType, Wildcard: true, Have: have, Changed: changed})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	decode := func(d *xdsserver.Delta) map[string]*routev3.RouteConfiguration {
		t.Helper()
		out := map[string]*routev3.RouteConfiguration{}
		for _, r := range d.Upserts {
			rc := &routev3.RouteConfiguration{}
			if err := r.Resource.UnmarshalTo(rc); err != nil {
				t.Fatalf("%s: %v", r.Name, err)
			}
			out[r.Name] = rc
		}
		return out
	}
	weights := func(rc *routev3.RouteConfiguration) map[string]uint32 {
		out := map[string]uint32{}
		for _, vh := range rc.GetVirtualHosts() {
			if !strings.HasSuffix(vh.GetName(), ":80") {
				continue
			}
			for _, wc := range vh.GetRoutes()[0].GetRoute().GetWeightedClusters().GetClusters() {
				out[wc.GetName()] = wc.GetWeight().GetValue()
			}
		}
		return out
	}

	a := decode(get(streamA, nil, nil))
	if got := slices.Sorted(maps.Keys(a)); !slices.Equal(got, []string{web, gwA}) {
		t.Fatalf("waypoint wp-a gets %v, want [%s %s]", got, web, gwA)
	}
	if w := weights(a[web]); w[webV1C] != 80 || w[webV2C] != 20 || len(w) != 2 {
		t.Errorf("web's port 80 weighted clusters %v, want %s 80 and %s 20", w, webV1C, webV2C)
	}
	for name, rc := range a { // the Gateway's policy in every virtual host of wp-a
		if len(rc.GetVirtualHosts()) == 0 {
			t.Errorf("%s has no virtual host", name)
		}
		for _, vh := range rc.GetVirtualHosts() {
			if _, ok := vh.GetTypedPerFilterConfig()["istio.authz.deny"]; !ok {
				t.Errorf("%s virtual host %s: no istio.authz.deny (keys %v)", name, vh.GetName(), slices.Collect(maps.Keys(vh.GetTypedPerFilterConfig())))
			}
		}
	}
	b := decode(get(streamB, nil, nil))
	if got := slices.Sorted(maps.Keys(b)); !slices.Equal(got, []string{api, gwB}) {
		t.Fatalf("waypoint wp-b gets %v, want [%s %s]", got, api, gwB)
	}
	for name, rc := range b {
		for _, vh := range rc.GetVirtualHosts() {
			if len(vh.GetTypedPerFilterConfig()) != 0 {
				t.Errorf("%s virtual host %s has policies %v, want none (the policy targets wp-a)", name, vh.GetName(), slices.Collect(maps.Keys(vh.GetTypedPerFilterConfig())))
			}
		}
	}
	for _, s := range []struct {
		name string
		info *xdsserver.StreamInfo
	}{{"B's identity naming wp-a", impostor}, {"ztunnel", ztunnel}, {"no identity", waypointStream(t, 5, "wp-a", "app", "", nil)}} {
		if d := get(s.info, nil, nil); len(d.Upserts) != 0 || len(d.Removals) != 0 {
			t.Errorf("%s: gets %d resources and %d removals, want nothing", s.name, len(d.Upserts), len(d.Removals))
		}
		// What such a stream somehow holds is removed.
		if d := get(s.info, map[string]string{web: "x"}, nil); len(d.Upserts) != 0 || !slices.Equal(d.Removals, []string{web}) {
			t.Errorf("%s holding %s: upserts %d, removals %v; want its removal only", s.name, web, len(d.Upserts), d.Removals)
		}
	}
	if _, ok := c.snap.Load().byType[AddressType][webV2]; !ok {
		t.Errorf("the backend Service web-v2 is not served as an address")
	}

	have := func(d *xdsserver.Delta) map[string]string {
		out := map[string]string{}
		for _, r := range d.Upserts {
			out[r.Name] = r.Version
		}
		return out
	}
	haveA, haveB := have(get(streamA, nil, nil)), have(get(streamB, nil, nil))
	// awaitPush waits until names were pushed for RouteType, then checks that nothing else was.
	awaitPush := func(what string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		var got []string
		for {
			p.mu.Lock()
			n := len(p.got[RouteType])
			p.mu.Unlock()
			if n >= len(want) || time.Now().After(deadline) {
				time.Sleep(20 * time.Millisecond) // later flushes of the same change, if any
				got = p.take(RouteType)
				break
			}
			time.Sleep(time.Millisecond)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: pushed %v, want %v", what, got, want)
		}
	}

	// The HTTPRoute changes: only web is pushed; A gets the new weights, B nothing.
	p.take(RouteType)
	route.Spec.Rules[0].BackendRefs[0].Weight = ptr.To[int32](50)
	route.Spec.Rules[0].BackendRefs[1].Weight = ptr.To[int32](50)
	route.ResourceVersion = "2"
	if _, err := gateways.GatewayV1().HTTPRoutes("app").Update(ctx, route, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPush("HTTPRoute weights changed", web)
	dA := get(streamA, haveA, []string{web})
	if got := decode(dA); len(got) != 1 || weights(got[web])[webV1C] != 50 || weights(got[web])[webV2C] != 50 {
		t.Errorf("after the change wp-a gets %v (weights %v), want web at 50/50", slices.Collect(maps.Keys(got)), weights(got[web]))
	}
	if d := get(streamB, haveB, []string{web}); len(d.Upserts) != 0 || len(d.Removals) != 0 {
		t.Errorf("wp-b told of the change: %d upserts, removals %v; want nothing", len(d.Upserts), d.Removals)
	}
	maps.Copy(haveA, have(dA))

	// api moves from wp-b to wp-a: only api is pushed; A gains it, B loses it.
	api2 := svc("api", "wp-a")
	if _, err := kube.CoreV1().Services("app").Update(ctx, api2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitPush("api rebound to wp-a", api)
	if got := decode(get(streamA, haveA, []string{api})); len(got) != 1 || got[api] == nil {
		t.Errorf("after rebinding wp-a gets %v, want %s", slices.Collect(maps.Keys(got)), api)
	}
	if d := get(streamB, haveB, []string{api}); len(d.Upserts) != 0 || !slices.Equal(d.Removals, []string{api}) {
		t.Errorf("after rebinding wp-b gets %d upserts and removals %v, want the removal of %s", len(d.Upserts), d.Removals, api)
	}
}
