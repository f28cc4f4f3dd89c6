package meshstate

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"
)

// waypointStore is a mesh with waypoints, in the workload API's forms: echo's Service names
// its waypoint by VIP (as istiod does), db's pod by hostname, solo's pod by a waypoint
// workload's IP; broken and down name a waypoint that is missing or has no healthy pod.
func waypointStore(t *testing.T) *Store {
	t.Helper()
	ip := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	byIP := func(s string) *workloadapi.GatewayAddress {
		return &workloadapi.GatewayAddress{HboneMtlsPort: 15008,
			Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{Address: ip(s)}}}
	}
	byName := func(ns, host string) *workloadapi.GatewayAddress {
		return &workloadapi.GatewayAddress{HboneMtlsPort: 15008,
			Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: ns, Hostname: host}}}
	}
	svcs := func(keys ...string) map[string]*workloadapi.PortList {
		m := map[string]*workloadapi.PortList{}
		for _, k := range keys {
			m[k] = &workloadapi.PortList{}
		}
		return m
	}
	hbone := workloadapi.TunnelProtocol_HBONE
	workloads := []*workloadapi.Workload{
		{Uid: "client", Namespace: "default", ServiceAccount: "sleep", Addresses: [][]byte{ip("10.10.1.2")}, TunnelProtocol: hbone, Node: "node-a"},
		{Uid: "echo-1", Namespace: "default", ServiceAccount: "echo", Addresses: [][]byte{ip("10.10.2.2")}, TunnelProtocol: hbone, Node: "node-b",
			Services: svcs("default/echo.default.svc.cluster.local")},
		{Uid: "db-1", Namespace: "default", ServiceAccount: "db", Addresses: [][]byte{ip("10.10.2.5")}, TunnelProtocol: hbone, Node: "node-b",
			Services: svcs("default/db.default.svc.cluster.local"), Waypoint: byName("default", "waypoint.default.svc.cluster.local")},
		{Uid: "solo", Namespace: "default", ServiceAccount: "solo", Addresses: [][]byte{ip("10.10.2.6")}, Node: "node-b",
			Waypoint: byIP("10.10.3.2")},
		// The waypoint's pods are not captured (dataplane-mode none): no tunnel protocol.
		{Uid: "waypoint-1", Namespace: "default", ServiceAccount: "waypoint", Addresses: [][]byte{ip("10.10.3.2")}, Node: "node-b",
			Services: map[string]*workloadapi.PortList{"default/waypoint.default.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}}}},
		{Uid: "waypoint-2", Namespace: "default", ServiceAccount: "waypoint", Addresses: [][]byte{ip("10.10.3.3")}, Node: "node-b",
			Services: svcs("default/waypoint.default.svc.cluster.local"), Status: workloadapi.WorkloadStatus_UNHEALTHY},
		{Uid: "down-wp-1", Namespace: "other", ServiceAccount: "waypoint", Addresses: [][]byte{ip("10.10.3.9")}, Node: "node-b",
			Services: svcs("other/down-wp.other.svc.cluster.local"), Status: workloadapi.WorkloadStatus_UNHEALTHY},
	}
	services := []*workloadapi.Service{
		{Name: "echo", Namespace: "default", Hostname: "echo.default.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.20")}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}, Waypoint: byIP("10.96.0.30")},
		{Name: "waypoint", Namespace: "default", Hostname: "waypoint.default.svc.cluster.local",
			Addresses:       []*workloadapi.NetworkAddress{{Address: ip("10.96.0.30")}},
			Ports:           []*workloadapi.Port{{ServicePort: 15021, TargetPort: 15021}, {ServicePort: 15008, TargetPort: 15008}},
			SubjectAltNames: []string{"spiffe://cluster.local/ns/default/sa/waypoint-canary"}},
		{Name: "db", Namespace: "default", Hostname: "db.default.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.40")}},
			Ports:     []*workloadapi.Port{{ServicePort: 5432, TargetPort: 5432}}},
		{Name: "broken", Namespace: "default", Hostname: "broken.default.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.60")}},
			Ports:     []*workloadapi.Port{{ServicePort: 80}}, Waypoint: byName("default", "missing.default.svc.cluster.local")},
		{Name: "down", Namespace: "other", Hostname: "down.other.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.70")}},
			Ports:     []*workloadapi.Port{{ServicePort: 80}}, Waypoint: byIP("10.96.0.50")},
		{Name: "down-wp", Namespace: "other", Hostname: "down-wp.other.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: ip("10.96.0.50")}},
			Ports:     []*workloadapi.Port{{ServicePort: 15008, TargetPort: 15008}}},
	}
	var addrs []*workloadapi.Address
	for _, w := range workloads {
		addrs = append(addrs, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
	}
	for _, v := range services {
		addrs = append(addrs, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: v}})
	}
	s := NewStore("cluster.local")
	if err := s.Apply(addrs, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestOutboundWaypoint(t *testing.T) {
	snap := waypointStore(t).Snapshot()
	client, _ := snap.Workload("client")
	waypoint, _ := snap.Workload("waypoint-1")
	first := func(int) int { return 0 }
	const (
		waypointID = "spiffe://cluster.local/ns/default/sa/waypoint"
		canaryID   = "spiffe://cluster.local/ns/default/sa/waypoint-canary"
	)
	tests := []struct {
		name       string
		src        *Workload
		dst        string
		via        bool
		kind       RouteKind
		target     string // the HBONE :authority
		dial       string
		workload   string // Route.Workload's uid
		service    string // Route.Service's key
		identities string
		err        []error
		errText    string
	}{
		{name: "service waypoint by VIP: the waypoint's healthy pod, authority the VIP as dialled",
			src: client, dst: "10.96.0.20:80", via: true, kind: HBONE, target: "10.96.0.20:80", dial: "10.10.3.2:15008",
			workload: "waypoint-1", service: "default/echo.default.svc.cluster.local", identities: waypointID + "," + canaryID},
		{name: "a service waypoint takes every port of the VIP, as Istio's ztunnel",
			src: client, dst: "10.96.0.20:9999", via: true, kind: HBONE, target: "10.96.0.20:9999", dial: "10.10.3.2:15008", workload: "waypoint-1"},
		{name: "unknown source still goes to the waypoint",
			src: nil, dst: "10.96.0.20:80", via: true, kind: HBONE, target: "10.96.0.20:80", dial: "10.10.3.2:15008", workload: "waypoint-1"},
		{name: "workload waypoint by hostname, pod addressed directly",
			src: client, dst: "10.10.2.5:5432", via: true, kind: HBONE, target: "10.10.2.5:5432", dial: "10.10.3.2:15008",
			workload: "waypoint-1", identities: waypointID + "," + canaryID},
		{name: "workload waypoint by a waypoint workload's IP, destination outside the mesh",
			src: client, dst: "10.10.2.6:7000", via: true, kind: HBONE, target: "10.10.2.6:7000", dial: "10.10.3.2:15008",
			workload: "waypoint-1", identities: waypointID},
		{name: "a VIP without waypoint does not apply its endpoint's workload waypoint",
			src: client, dst: "10.96.0.40:5432", kind: HBONE, target: "10.10.2.5:5432", dial: "10.10.2.5:15008",
			workload: "db-1", service: "default/db.default.svc.cluster.local"},
		{name: "source is the service's waypoint: direct to an endpoint",
			src: waypoint, dst: "10.96.0.20:80", kind: HBONE, target: "10.10.2.2:8080", dial: "10.10.2.2:15008",
			workload: "echo-1", service: "default/echo.default.svc.cluster.local", identities: "spiffe://cluster.local/ns/default/sa/echo"},
		{name: "source is the workload's waypoint: direct to the pod",
			src: waypoint, dst: "10.10.2.5:5432", kind: HBONE, target: "10.10.2.5:5432", dial: "10.10.2.5:15008", workload: "db-1"},
		{name: "source is the waypoint named by workload IP: direct, plaintext",
			src: waypoint, dst: "10.10.2.6:7000", kind: Plaintext, target: "10.10.2.6:7000", dial: "10.10.2.6:7000", workload: "solo"},
		{name: "pod without waypoint is unchanged",
			src: client, dst: "10.10.2.2:8080", kind: HBONE, target: "10.10.2.2:8080", dial: "10.10.2.2:15008", workload: "echo-1"},
		{name: "unknown destination passes through",
			src: client, dst: "192.0.2.1:443", kind: Passthrough, target: "192.0.2.1:443", dial: "192.0.2.1:443"},
		{name: "waypoint that does not exist fails the connection",
			src: client, dst: "10.96.0.60:80", err: []error{ErrNoWaypoint},
			errText: "service default/broken.default.svc.cluster.local has waypoint default/missing.default.svc.cluster.local"},
		{name: "waypoint with no healthy pod fails the connection",
			src: client, dst: "10.96.0.70:80", err: []error{ErrNoWaypoint, ErrNoEndpoints},
			errText: "service other/down.other.svc.cluster.local has waypoint 10.96.0.50"},
		{name: "another service's waypoint is no exemption",
			src: waypoint, dst: "10.96.0.70:80", err: []error{ErrNoWaypoint}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := snap.Outbound(tt.src, netip.MustParseAddrPort(tt.dst), first)
			if tt.err != nil {
				for _, want := range tt.err {
					if !errors.Is(err, want) {
						t.Errorf("err = %v, want it to wrap %v", err, want)
					}
				}
				if err != nil && !strings.Contains(err.Error(), tt.errText) {
					t.Errorf("err = %q, want it to contain %q", err, tt.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.ViaWaypoint != tt.via || r.Kind != tt.kind || r.Target.String() != tt.target || r.Dial.String() != tt.dial {
				t.Errorf("route = via %v %s target %s dial %s; want via %v %s %s %s", r.ViaWaypoint, r.Kind, r.Target, r.Dial, tt.via, tt.kind, tt.target, tt.dial)
			}
			if got := uidOf(r.Workload); got != tt.workload {
				t.Errorf("workload = %q, want %q", got, tt.workload)
			}
			if tt.service != "" && (r.Service == nil || r.Service.Key != tt.service) {
				t.Errorf("service = %v, want %s", r.Service, tt.service)
			}
			if tt.service == "" && tt.via && strings.HasPrefix(tt.target, "10.10.") && r.Service != nil {
				t.Errorf("a pod-addressed connection reports service %s", r.Service.Key)
			}
			if tt.identities != "" {
				var got []string
				for _, id := range r.Identities {
					got = append(got, id.String())
				}
				if strings.Join(got, ",") != tt.identities {
					t.Errorf("identities = %v, want %s", got, tt.identities)
				}
			}
		})
	}
}

// TestDirectIgnoresWaypoints: the waypoint's own route to the destination is today's direct
// routing, whatever waypoint the service or pod names.
func TestDirectIgnoresWaypoints(t *testing.T) {
	snap := waypointStore(t).Snapshot()
	first := func(int) int { return 0 }
	for dst, want := range map[string]string{
		"10.96.0.20:80":   "10.10.2.2:8080",
		"10.10.2.5:5432":  "10.10.2.5:5432",
		"10.96.0.60:80":   "", // broken: no endpoints, but no waypoint error either
		"10.96.0.40:5432": "10.10.2.5:5432",
	} {
		r, err := snap.Direct(netip.MustParseAddrPort(dst), first)
		if want == "" {
			if !errors.Is(err, ErrNoEndpoints) || errors.Is(err, ErrNoWaypoint) {
				t.Errorf("Direct(%s): err = %v, want ErrNoEndpoints only", dst, err)
			}
			continue
		}
		if err != nil || r.ViaWaypoint || r.Target.String() != want {
			t.Errorf("Direct(%s) = via %v target %s, %v; want %s", dst, r.ViaWaypoint, r.Target, err, want)
		}
	}
	svc, _ := snap.Service("default/echo.default.svc.cluster.local")
	if r, err := snap.DirectToService(svc, 80, first); err != nil || r.Target.String() != "10.10.2.2:8080" || r.Service != svc {
		t.Errorf("DirectToService(echo, 80) = %s, %v", r.Target, err)
	}
}

func TestIsWaypointFor(t *testing.T) {
	snap := waypointStore(t).Snapshot()
	wp1, _ := snap.Workload("waypoint-1")
	wp2, _ := snap.Workload("waypoint-2")
	echo, _ := snap.Workload("echo-1")
	tests := []struct {
		dst  string
		w    *Workload
		want bool
	}{
		{"10.96.0.20", wp1, true},   // echo's VIP, its waypoint service's endpoint
		{"10.96.0.20", wp2, true},   // an unhealthy endpoint is still the waypoint's
		{"10.10.2.5", wp1, true},    // db pod, waypoint by hostname
		{"10.10.2.6", wp1, true},    // solo pod, waypoint by workload IP
		{"10.10.2.6", wp2, false},   // ... which is waypoint-1 only
		{"10.96.0.20", echo, false}, // not a waypoint
		{"10.10.2.2", wp1, false},   // echo's pod has no waypoint
		{"10.96.0.60", wp1, false},  // broken's waypoint does not exist
		{"192.0.2.1", wp1, false},
		{"10.96.0.20", nil, false},
	}
	for _, tt := range tests {
		if got := snap.IsWaypointFor(netip.MustParseAddr(tt.dst), tt.w); got != tt.want {
			t.Errorf("IsWaypointFor(%s, %s) = %v, want %v", tt.dst, uidOf(tt.w), got, tt.want)
		}
	}
}

func uidOf(w *Workload) string {
	if w == nil {
		return ""
	}
	return w.Uid
}
