package controller

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
)

// TestIncrementalMatchesFullBuild applies a seeded random sequence of changes to every
// watched kind and checks, after each, that the incrementally maintained resources converge
// to what a full translation of the same objects gives, and that each push named exactly
// the resources whose version changed.
func TestIncrementalMatchesFullBuild(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	kube := kubefake.NewClientset()
	istio := istiofake.NewSimpleClientset()
	gateways := gatewayfake.NewSimpleClientset()
	c, ctx := runController(t, kube, istio, Options{Debounce: time.Millisecond, Gateway: gatewayinformers.NewSharedInformerFactory(gateways, 0)})

	namespaces := []string{"istio-system", "a", "b"}
	for _, ns := range namespaces {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	apps := []string{"x", "y", "z"}
	nodes := []string{"node-1", "node-2", "node-3"}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	// useWaypoint labels an object with a random waypoint choice, or none.
	waypointNames := []string{"wp0", "wp1"}
	useWaypoint := func(lbls map[string]string) map[string]string {
		if lbls == nil {
			lbls = map[string]string{}
		}
		switch rng.IntN(5) {
		case 0:
			lbls["istio.io/use-waypoint"] = pick(waypointNames)
		case 1:
			lbls["istio.io/use-waypoint"] = pick(waypointNames)
			lbls["istio.io/use-waypoint-namespace"] = pick(namespaces[1:])
		case 2:
			lbls["istio.io/use-waypoint"] = "none"
		}
		return lbls
	}
	podUID := func(ns, name string) types.UID { return types.UID(ns + "-" + name) }
	ops := []struct {
		name string
		do   func() error
	}{
		{"pod upsert", func() error {
			ns, name := pick(namespaces[1:]), fmt.Sprintf("p%d", rng.IntN(6))
			p := pod(ns, name, fmt.Sprintf("10.0.%d.%d", rng.IntN(2), rng.IntN(250)+1), useWaypoint(map[string]string{"app": pick(apps)}), nil)
			if rng.IntN(6) == 0 {
				p.Labels["gateway.networking.k8s.io/gateway-name"] = pick(waypointNames) // a waypoint's instance
			}
			if rng.IntN(2) == 0 {
				p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
			}
			if rng.IntN(5) == 0 {
				p.Status.PodIP = "" // not yet a workload
			}
			p.Spec.NodeName = pick(nodes)
			p.UID = podUID(ns, name)
			return upsert(ctx, kube.CoreV1().Pods(ns), p)
		}},
		{"pod delete", func() error {
			return ignoreMissing(kube.CoreV1().Pods(pick(namespaces[1:])).Delete(ctx, fmt.Sprintf("p%d", rng.IntN(6)), metav1.DeleteOptions{}))
		}},
		{"namespace label", func() error {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pick(namespaces[1:]), Labels: useWaypoint(nil)}}
			if rng.IntN(2) == 0 {
				ns.Labels["istio.io/dataplane-mode"] = "ambient"
			}
			if rng.IntN(2) == 0 {
				ns.Labels["team"] = "blue" // admitted by waypoints with a namespace selector
			}
			_, err := kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
			return err
		}},
		{"service upsert", func() error {
			ns, name := pick(namespaces[1:]), fmt.Sprintf("s%d", rng.IntN(3))
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: useWaypoint(nil)},
				Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.0.%d", rng.IntN(250)+1), Selector: map[string]string{"app": pick(apps)},
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
			}
			if rng.IntN(2) == 0 {
				svc.Spec.Selector = nil // endpoints come from EndpointSlices
			}
			if rng.IntN(3) == 0 {
				svc.Spec.Ports[0].Name = "web" // slice ports named http no longer map
			}
			return upsert(ctx, kube.CoreV1().Services(ns), svc)
		}},
		{"service delete", func() error {
			return ignoreMissing(kube.CoreV1().Services(pick(namespaces[1:])).Delete(ctx, fmt.Sprintf("s%d", rng.IntN(3)), metav1.DeleteOptions{}))
		}},
		{"node upsert", func() error {
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: pick(nodes), Labels: map[string]string{}}}
			for _, l := range []string{corev1.LabelTopologyRegion, corev1.LabelTopologyZone, "topology.istio.io/subzone"} {
				if rng.IntN(2) == 0 {
					n.Labels[l] = fmt.Sprintf("%s-%d", l[len(l)-4:], rng.IntN(2))
				}
			}
			if rng.IntN(3) == 0 {
				n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}} // no locality change
			}
			return upsert(ctx, kube.CoreV1().Nodes(), n)
		}},
		{"node delete", func() error {
			return ignoreMissing(kube.CoreV1().Nodes().Delete(ctx, pick(nodes), metav1.DeleteOptions{}))
		}},
		{"endpointslice upsert", func() error {
			ns, svc := pick(namespaces[1:]), fmt.Sprintf("s%d", rng.IntN(3))
			es := &discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", svc, rng.IntN(2)), Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
			}
			if rng.IntN(6) == 0 {
				es.Labels = nil // not a Service's slice
			}
			for range rng.IntN(4) {
				ep := discoveryv1.Endpoint{
					Addresses:  []string{fmt.Sprintf("192.168.%d.%d", rng.IntN(2), rng.IntN(4)+1)},
					Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(rng.IntN(3) != 0)},
				}
				if rng.IntN(3) != 0 {
					name := fmt.Sprintf("p%d", rng.IntN(6))
					uid := podUID(ns, name)
					if rng.IntN(6) == 0 {
						uid = "stale"
					}
					ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name, UID: uid}
				}
				es.Endpoints = append(es.Endpoints, ep)
			}
			return upsert(ctx, kube.DiscoveryV1().EndpointSlices(ns), es)
		}},
		{"endpointslice delete", func() error {
			ns := pick(namespaces[1:])
			return ignoreMissing(kube.DiscoveryV1().EndpointSlices(ns).Delete(ctx, fmt.Sprintf("s%d-%d", rng.IntN(3), rng.IntN(2)), metav1.DeleteOptions{}))
		}},
		{"policy upsert", func() error {
			ns := pick(namespaces)
			ap := &securityclient.AuthorizationPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("ap%d", rng.IntN(2))},
				Spec: v1beta1.AuthorizationPolicy{
					Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": pick(apps)}},
					Rules:    []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{Namespaces: []string{pick(namespaces)}}}}}},
				},
			}
			if rng.IntN(3) == 0 {
				ap.Spec.Selector = nil
			}
			return upsert(ctx, istio.SecurityV1().AuthorizationPolicies(ns), ap)
		}},
		{"policy delete", func() error {
			return ignoreMissing(istio.SecurityV1().AuthorizationPolicies(pick(namespaces)).Delete(ctx, fmt.Sprintf("ap%d", rng.IntN(2)), metav1.DeleteOptions{}))
		}},
		{"gateway upsert", func() error {
			ns := pick(namespaces[1:])
			gw := &gatewayv1.Gateway{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pick(waypointNames),
					Labels: map[string]string{"istio.io/waypoint-for": pick([]string{"service", "workload", "all", "none"})}},
				Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint", Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
			}
			switch rng.IntN(3) {
			case 0:
				gw.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: ptr.To(gatewayv1.NamespacesFromAll)}}
			case 1:
				gw.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{
					From: ptr.To(gatewayv1.NamespacesFromSelector), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "blue"}}}}
			}
			if rng.IntN(4) != 0 { // else not ready: no address yet
				gw.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: ptr.To(gatewayv1.HostnameAddressType), Value: fmt.Sprintf("%s.%s.svc.cluster.local", gw.Name, ns)}}
				if rng.IntN(2) == 0 {
					gw.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: ptr.To(gatewayv1.IPAddressType), Value: fmt.Sprintf("10.96.9.%d", rng.IntN(250)+1)}}
				}
			}
			return upsert(ctx, gateways.GatewayV1().Gateways(ns), gw)
		}},
		{"gateway delete", func() error {
			return ignoreMissing(gateways.GatewayV1().Gateways(pick(namespaces[1:])).Delete(ctx, pick(waypointNames), metav1.DeleteOptions{}))
		}},
		{"gateway class", func() error {
			gc := &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: "istio-waypoint"}, Spec: gatewayv1.GatewayClassSpec{ControllerName: "istio.io/mesh-controller"}}
			if rng.IntN(2) == 0 {
				gc.Labels = map[string]string{"istio.io/waypoint-for": pick([]string{"workload", "all"})}
			}
			return upsert(ctx, gateways.GatewayV1().GatewayClasses(), gc)
		}},
		{"peer authentication", func() error {
			ns := pick(namespaces)
			pa := &securityclient.PeerAuthentication{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"},
				Spec:       v1beta1.PeerAuthentication{Mtls: &v1beta1.PeerAuthentication_MutualTLS{Mode: v1beta1.PeerAuthentication_MutualTLS_STRICT}},
			}
			if rng.IntN(3) == 0 {
				return ignoreMissing(istio.SecurityV1().PeerAuthentications(ns).Delete(ctx, "default", metav1.DeleteOptions{}))
			}
			return upsert(ctx, istio.SecurityV1().PeerAuthentications(ns), pa)
		}},
	}
	// Services and slices are upserted more often than deleted, so that slices often belong to
	// a Service without a selector.
	for _, name := range []string{"service upsert", "endpointslice upsert"} {
		for _, op := range ops {
			if op.name == name {
				ops = append(ops, op)
			}
		}
	}
	var seen coverage
	for step := range 300 {
		op := ops[rng.IntN(len(ops))]
		if err := op.do(); err != nil {
			t.Fatalf("step %d (%s): %v", step, op.name, err)
		}
		if step%5 != 4 {
			continue // let some changes pile up into one flush
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			want := newIndex()
			d := newDirty()
			d.all = true
			want.apply(c, d)
			snap := c.snap.Load()
			diffA := versionDiff(snap.byType[AddressType], want.addresses)
			diffZ := versionDiff(snap.byType[AuthorizationType], want.authorizations)
			if diffA == "" && diffZ == "" {
				seen.count(t, c, snap.byType[AddressType])
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("step %d (%s): incremental state differs from a full build:\naddresses: %s\nauthorizations: %s", step, op.name, diffA, diffZ)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	if seen.sliceWorkloads == 0 || seen.unhealthySlice == 0 || seen.located == 0 || seen.slicesBoundPods == 0 ||
		seen.serviceWaypoints == 0 || seen.workloadWaypoints == 0 {
		t.Errorf("the random changes never reached every feature: %+v", seen)
	}
	t.Logf("coverage: %+v", seen)
}

// coverage counts, over the checked states, the features the random changes must reach for
// the comparison to mean anything.
type coverage struct {
	sliceWorkloads, unhealthySlice, located, slicesBoundPods int
	serviceWaypoints, workloadWaypoints                      int
}

func (c *coverage) count(t *testing.T, ctrl *Controller, addrs map[string]*xds.Resource) {
	t.Helper()
	for _, r := range addrs {
		var a workloadapi.Address
		if err := r.Resource.UnmarshalTo(&a); err != nil {
			t.Fatal(err)
		}
		if a.GetService().GetWaypoint() != nil {
			c.serviceWaypoints++
		}
		w := a.GetWorkload()
		if w.GetWaypoint() != nil {
			c.workloadWaypoints++
		}
		switch {
		case w == nil:
		case strings.Contains(w.Uid, "/EndpointSlice/"):
			c.sliceWorkloads++
			if w.Status == workloadapi.WorkloadStatus_UNHEALTHY {
				c.unhealthySlice++
			}
		default:
			if w.Locality != nil {
				c.located++
			}
			for key := range w.Services {
				ns, name := splitKey(key)
				if svc, err := ctrl.services.Services(ns).Get(strings.SplitN(name, ".", 2)[0]); err == nil && len(svc.Spec.Selector) == 0 {
					c.slicesBoundPods++
				}
			}
		}
	}
}

func versionDiff(got, want map[string]*xds.Resource) string {
	if maps.EqualFunc(got, want, func(a, b *xds.Resource) bool { return a.Version == b.Version }) {
		return ""
	}
	out := ""
	for name, r := range want {
		if g, ok := got[name]; !ok {
			out += " missing " + name
		} else if g.Version != r.Version {
			out += " stale " + name
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			out += " extra " + name
		}
	}
	return out
}

type client[T any] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

func upsert[T any](ctx context.Context, c client[T], obj T) error {
	if _, err := c.Update(ctx, obj, metav1.UpdateOptions{}); err == nil {
		return nil
	}
	_, err := c.Create(ctx, obj, metav1.CreateOptions{})
	return err
}

func ignoreMissing(err error) error {
	if err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }
