package adsc

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/adsc"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// TestIstioDeltaClientWaypoint: Istio's delta client decodes the waypoint field of Services
// and Workloads from istiod-lite as istiod's own ambient index tests expect it for the same
// objects (pilot/pkg/serviceregistry/ambient, addWaypoint and assertWaypointAddressForPod):
// a waypoint whose status lists an IP and a hostname is named by the hostname in the
// Gateway's namespace, HBONE port 15008; one with only an IP by a NetworkAddress; a pod
// labelled use-waypoint none, the waypoint's own pod and Service, and anything bound to a
// waypoint that is not ready carry no field.
func TestIstioDeltaClientWaypoint(t *testing.T) {
	for _, scope := range []string{"adsc", "delta", "default"} {
		if s := istiolog.FindScope(scope); s != nil {
			s.SetOutputLevel(istiolog.WarnLevel)
		}
	}
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	ctx := t.Context()
	gws, err := gatewayclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"})

	// Waypoints as istiod's tests make them (addWaypointSpecificAddressForClient): an HBONE
	// listener on 15008, istio.io/waypoint-for, status IP then hostname once ready.
	gateway := func(name, tt string, addrs ...gatewayv1.GatewayStatusAddress) {
		t.Helper()
		gw, err := gws.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"istio.io/waypoint-for": tt}},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) == 0 {
			return
		}
		gw.Status.Addresses = addrs
		if _, err := gws.GatewayV1().Gateways(ns).UpdateStatus(ctx, gw, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ip := func(v string) gatewayv1.GatewayStatusAddress {
		return gatewayv1.GatewayStatusAddress{Type: ptr.To(gatewayv1.IPAddressType), Value: v}
	}
	host := func(v string) gatewayv1.GatewayStatusAddress {
		return gatewayv1.GatewayStatusAddress{Type: ptr.To(gatewayv1.HostnameAddressType), Value: v}
	}
	wpHost := "waypoint." + ns + ".svc.cluster.local"
	gateway("waypoint", "all", ip("10.96.77.1"), host(wpHost))
	gateway("ip-only", "service", ip("10.96.77.2"))
	gateway("pending", "all")

	service := func(name string, lbls map[string]string) {
		t.Helper()
		if _, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	service("web", nil)
	service("legacy", map[string]string{"istio.io/use-waypoint": "ip-only"})
	service("waiting", map[string]string{"istio.io/use-waypoint": "pending"})
	// A waypoint's own Service (istiod-lite's deployer makes "waypoint" itself when it runs).
	service("waypoint-own", map[string]string{"gateway.istio.io/managed": "istio.io-mesh-controller"})
	pod := func(name, podIP string, lbls map[string]string) {
		t.Helper()
		p, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls},
			Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "x"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podIP, PodIPs: []corev1.PodIP{{IP: podIP}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if _, err := c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod("web-0", "10.32.0.1", map[string]string{"app": "web"})
	pod("opt-out", "10.32.0.2", map[string]string{"app": "web", "istio.io/use-waypoint": "none"})
	pod("waypoint-0", "10.32.0.9", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none"})

	byHostname := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: wpHost}}}
	byIP := &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr("10.96.77.2").AsSlice()}}}
	svc := func(name string) string { return ns + "/" + name + "." + ns + ".svc.cluster.local" }
	uid := func(name string) string { return "Kubernetes//Pod/" + ns + "/" + name }
	want := map[string]*workloadapi.GatewayAddress{
		svc("web"): byHostname, svc("legacy"): byIP, svc("waiting"): nil, svc("waypoint-own"): nil,
		uid("web-0"): byHostname, uid("opt-out"): nil, uid("waypoint-0"): nil,
	}

	istiodtest.CreateSA(t, c, m.NS, "ztunnel")
	token := istiodtest.SAToken(t, c, m.NS, "ztunnel", "istio-ca", nil)
	var (
		mu     sync.Mutex
		theirs = map[string]*workloadapi.Address{}
	)
	client := adsc.NewDelta(m.GRPCAddr, &adsc.DeltaADSConfig{Config: adsc.Config{
		ClientName: "istio-adsc", Namespace: m.NS, Workload: "ztunnel-waypoint-interop", NodeType: "ztunnel", IP: "127.0.0.1",
		GrpcOpts: istiodtest.DialOptions(m.Istiod, m.Root, token),
	}},
		adsc.Register(func(_ adsc.HandlerContext, name, _ string, a *workloadapi.Address, ev adsc.Event) {
			mu.Lock()
			defer mu.Unlock()
			if ev == adsc.EventDelete {
				delete(theirs, name)
				return
			}
			theirs[name] = a
		}),
		adsc.Watch[*workloadapi.Address]("*"),
	)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { client.Run(runCtx) })
	defer client.Close()

	field := func(a *workloadapi.Address) *workloadapi.GatewayAddress {
		if w := a.GetWorkload(); w != nil {
			return w.GetWaypoint()
		}
		return a.GetService().GetWaypoint()
	}
	matches := func() (bool, map[string]*workloadapi.GatewayAddress) {
		mu.Lock()
		defer mu.Unlock()
		got := map[string]*workloadapi.GatewayAddress{}
		ok := true
		for name, w := range want {
			a, have := theirs[name]
			if !have {
				ok = false
				continue
			}
			got[name] = field(a)
			if !proto.Equal(got[name], w) {
				ok = false
			}
		}
		return ok, got
	}
	if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		ok, _ := matches()
		return ok, nil
	}); err != nil {
		_, got := matches()
		for name, w := range want {
			if g, ok := got[name]; !ok {
				t.Errorf("%s: not received by Istio's client", name)
			} else if !proto.Equal(g, w) {
				t.Errorf("%s: Istio's client decodes waypoint %v, istiod gives %v", name, g, w)
			}
		}
		t.FailNow()
	}
	for name, w := range want {
		t.Logf("%-70s waypoint %v", name, w)
	}
}
