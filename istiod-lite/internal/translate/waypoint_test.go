package translate

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

func gatewayYAML(t *testing.T, y string) *gatewayv1.Gateway {
	t.Helper()
	gw := &gatewayv1.Gateway{}
	if err := yaml.UnmarshalStrict([]byte(y), gw); err != nil {
		t.Fatal(err)
	}
	return gw
}

// TestGatewayWaypoint covers what GatewayWaypoint takes from a Gateway and what it reports as
// malformed (each problem names the field and value).
func TestGatewayWaypoint(t *testing.T) {
	const head = "metadata: {name: wp, namespace: ns%s}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n"
	gw := func(meta, status string) string {
		return strings.Replace(head, "%s", meta, 1) + status
	}
	hostname := func(ns, h string) *workloadapi.GatewayAddress {
		return &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
			Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: h}}}
	}
	ip := func(b ...byte) *workloadapi.GatewayAddress {
		return &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Address{
			Address: &workloadapi.NetworkAddress{Network: "net1", Address: b}}}
	}
	class := &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: "istio-waypoint", Labels: map[string]string{LabelWaypointFor: "workload"},
		Annotations: map[string]string{annotationInboundBinding: "NONE"}}}
	tests := []struct {
		name        string
		gateway     string
		class       *gatewayv1.GatewayClass
		wantNil     bool
		wantAddr    *workloadapi.GatewayAddress
		wantType    string
		wantBinding *workloadapi.ApplicationTunnel
		wantProblem string // substring of the only problem; "" for none
	}{
		{name: "no status: not ready", gateway: gw("", ""), wantNil: true},
		{name: "hostname preferred over IP", gateway: gw("", "status: {addresses: [{type: IPAddress, value: 10.1.2.3}, {type: Hostname, value: wp.ns.svc.cluster.local}]}"),
			wantAddr: hostname("ns", "wp.ns.svc.cluster.local"), wantType: "service"},
		{name: "IP with network", gateway: gw("", "status: {addresses: [{type: IPAddress, value: 10.1.2.3}]}"), wantAddr: ip(10, 1, 2, 3), wantType: "service"},
		{name: "IPv6", gateway: gw("", "status: {addresses: [{type: IPAddress, value: 'fd00::1'}]}"),
			wantAddr: ip(0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1), wantType: "service"},
		{name: "bad IP skipped, next used", gateway: gw("", "status: {addresses: [{type: IPAddress, value: nope}, {type: IPAddress, value: 10.1.2.4}]}"),
			wantAddr: ip(10, 1, 2, 4), wantType: "service", wantProblem: `status address "nope" is not an IP address`},
		{name: "only a bad IP: dropped", gateway: gw("", "status: {addresses: [{type: IPAddress, value: nope}]}"), wantNil: true,
			wantProblem: `status address "nope" is not an IP address`},
		{name: "class label and annotation", gateway: gw("", "status: {addresses: [{type: Hostname, value: h}]}"), class: class,
			wantAddr: hostname("ns", "h"), wantType: "workload", wantBinding: &workloadapi.ApplicationTunnel{}},
		{name: "gateway label overrides class", gateway: gw(", labels: {istio.io/waypoint-for: all}", "status: {addresses: [{type: Hostname, value: h}]}"), class: class,
			wantAddr: hostname("ns", "h"), wantType: "all", wantBinding: &workloadapi.ApplicationTunnel{}},
		{name: "unknown waypoint-for", gateway: gw(", labels: {istio.io/waypoint-for: everything}", "status: {addresses: [{type: Hostname, value: h}]}"),
			wantAddr: hostname("ns", "h"), wantType: "everything", wantProblem: `label istio.io/waypoint-for="everything" is not service, workload, all or none`},
		{name: "binding PROXY with port", gateway: gw(", annotations: {ambient.istio.io/waypoint-inbound-binding: PROXY/15088}", "status: {addresses: [{type: Hostname, value: h}]}"),
			wantAddr: hostname("ns", "h"), wantType: "service", wantBinding: &workloadapi.ApplicationTunnel{Protocol: workloadapi.ApplicationTunnel_PROXY, Port: 15088}},
		{name: "binding bad protocol ignored", gateway: gw(", annotations: {ambient.istio.io/waypoint-inbound-binding: HTTP}", "status: {addresses: [{type: Hostname, value: h}]}"),
			wantAddr: hostname("ns", "h"), wantType: "service", wantProblem: `protocol "HTTP" is not NONE or PROXY`},
		{name: "binding bad format ignored", gateway: gw(", annotations: {ambient.istio.io/waypoint-inbound-binding: PROXY/1/2}", "status: {addresses: [{type: Hostname, value: h}]}"),
			wantAddr: hostname("ns", "h"), wantType: "service", wantProblem: `is not <protocol> or <protocol>/<port>`},
		{name: "binding bad port is port 0", gateway: gw(", annotations: {ambient.istio.io/waypoint-inbound-binding: PROXY/x}", "status: {addresses: [{type: Hostname, value: h}]}"),
			wantAddr: hostname("ns", "h"), wantType: "service", wantBinding: &workloadapi.ApplicationTunnel{Protocol: workloadapi.ApplicationTunnel_PROXY},
			wantProblem: `port "x" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, problems := GatewayWaypoint(gatewayYAML(t, tt.gateway), tt.class, Options{Network: "net1"})
			switch {
			case tt.wantProblem == "" && len(problems) > 0:
				t.Errorf("problems %q, want none", problems)
			case tt.wantProblem != "" && (len(problems) == 0 || !strings.Contains(problems[0], tt.wantProblem)):
				t.Errorf("problems %q, want one containing %q", problems, tt.wantProblem)
			}
			if tt.wantNil {
				if w != nil {
					t.Fatalf("waypoint %+v, want none", w)
				}
				return
			}
			if w == nil {
				t.Fatal("no waypoint")
			}
			if w.Key() != "ns/wp" || !proto.Equal(w.Address, tt.wantAddr) || w.TrafficType != tt.wantType || !proto.Equal(w.Binding, tt.wantBinding) {
				t.Errorf("waypoint %s address %v type %q binding %v; want address %v type %q binding %v",
					w.Key(), w.Address, w.TrafficType, w.Binding, tt.wantAddr, tt.wantType, tt.wantBinding)
			}
		})
	}
}

// TestWaypointBindingErrors: a waypoint asked for and not used is an error naming it and why;
// one not asked for, opted out of, or inherited from the namespace for the wrong traffic is not.
func TestWaypointBindingErrors(t *testing.T) {
	mk := func(name, tt string, from gatewayv1.FromNamespaces) *Waypoint {
		return &Waypoint{Namespace: "infra", Name: name, TrafficType: tt, from: from,
			Address: &workloadapi.GatewayAddress{HboneMtlsPort: 15008}}
	}
	wps := Waypoints{}
	for _, w := range []*Waypoint{
		mk("svc", WaypointForService, gatewayv1.NamespacesFromAll),
		mk("wl", WaypointForWorkload, gatewayv1.NamespacesFromAll),
		mk("private", WaypointForAll, gatewayv1.NamespacesFromSame),
	} {
		wps[w.Key()] = w
	}
	ns := func(lbls map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: lbls}}
	}
	use := func(name string) map[string]string {
		return map[string]string{LabelUseWaypoint: name, LabelUseWaypointNamespace: "infra"}
	}
	tests := []struct {
		name      string
		obj       map[string]string // the object's labels
		ns        *corev1.Namespace
		service   bool
		wantKey   string // bound waypoint, "" for none
		wantErr   error
		wantInErr string
	}{
		{name: "nothing asked", ns: ns(nil), service: true},
		{name: "service bound", obj: use("svc"), ns: ns(nil), service: true, wantKey: "infra/svc"},
		{name: "service: missing waypoint", obj: use("gone"), ns: ns(nil), service: true, wantErr: ErrWaypointNotReady, wantInErr: "infra/gone"},
		{name: "service: workload-only waypoint", obj: use("wl"), ns: ns(nil), service: true, wantErr: ErrWaypointTrafficType, wantInErr: `istio.io/waypoint-for="workload"`},
		{name: "service: other namespace denied", obj: use("private"), ns: ns(nil), service: true, wantErr: ErrWaypointAttachmentDenied},
		{name: "service: namespace's missing waypoint", ns: ns(use("gone")), service: true, wantErr: ErrWaypointNotReady},
		{name: "service: none overrides namespace", obj: map[string]string{LabelUseWaypoint: "none"}, ns: ns(use("gone")), service: true},
		{name: "workload bound", obj: use("wl"), ns: ns(nil), wantKey: "infra/wl"},
		{name: "workload: own label to service-only waypoint", obj: use("svc"), ns: ns(nil), wantErr: ErrWaypointTrafficType},
		{name: "workload: namespace's service-only waypoint is fine", ns: ns(use("svc"))},
		{name: "workload: pod label overrides namespace", obj: use("wl"), ns: ns(use("svc")), wantKey: "infra/wl"},
		{name: "workload: unknown namespace", obj: use("wl"), wantKey: "infra/wl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			meta := metav1.ObjectMeta{Name: "x", Namespace: "app", Labels: tt.obj}
			var (
				w   *Waypoint
				err error
			)
			if tt.service {
				svc := &corev1.Service{ObjectMeta: meta}
				w, err = ServiceWaypoint(svc, tt.ns, wps)
				s := &workloadapi.Service{}
				if berr := BindServiceWaypoint(s, svc, tt.ns, wps); !errors.Is(berr, tt.wantErr) || !proto.Equal(s.Waypoint, w.GetAddress()) {
					t.Errorf("BindServiceWaypoint: waypoint %v error %v, want %v and %v", s.Waypoint, berr, w.GetAddress(), err)
				}
			} else {
				var tunnel *workloadapi.ApplicationTunnel
				w, tunnel, err = WorkloadWaypoint(&corev1.Pod{ObjectMeta: meta}, tt.ns, wps)
				if tunnel != nil {
					t.Errorf("application tunnel %v for a pod that is no waypoint's", tunnel)
				}
			}
			if got := ""; w != nil {
				got = w.Key()
				if got != tt.wantKey {
					t.Errorf("bound to %s, want %q", got, tt.wantKey)
				}
			} else if tt.wantKey != "" {
				t.Errorf("bound to nothing, want %s", tt.wantKey)
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if tt.wantInErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantInErr)) {
				t.Errorf("error %v does not name %q", err, tt.wantInErr)
			}
		})
	}
}

func TestBindServiceWaypointIngressLabel(t *testing.T) {
	wps := Waypoints{"app/wp": {Namespace: "app", Name: "wp", TrafficType: WaypointForService, from: gatewayv1.NamespacesFromSame,
		Address: &workloadapi.GatewayAddress{HboneMtlsPort: 15008}}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "app", Labels: map[string]string{
		LabelUseWaypoint: "wp", labelIngressUseWaypoint: "yes please"}}}
	s := &workloadapi.Service{}
	err := BindServiceWaypoint(s, svc, nil, wps)
	if err == nil || !strings.Contains(err.Error(), `istio.io/ingress-use-waypoint="yes please" is not a boolean`) {
		t.Errorf("error %v, want one naming the bad label", err)
	}
	if s.Waypoint == nil || s.IngressUseWaypoint {
		t.Errorf("service %v: want the waypoint bound and ingress_use_waypoint false", s)
	}
}
