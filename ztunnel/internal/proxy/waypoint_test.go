package proxy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/localconfig"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
)

// waypointConfig: echo's Service has a waypoint named by VIP (as istiod names it), db's pod
// one named by hostname; the waypoint's pod is enrolled here (node-b), so the "sandwich"
// cases can be decided too. down's waypoint does not exist.
var waypointConfig = fmt.Sprintf(`
workloads:
- {uid: client, name: client, workloadName: client, namespace: default, serviceAccount: sleep, addresses: [10.10.1.2], tunnelProtocol: HBONE, node: node-a}
- uid: echo-1
  name: echo-1
  workloadName: echo
  namespace: default
  serviceAccount: echo
  addresses: [10.10.2.2]
  tunnelProtocol: HBONE
  node: node-b
  services: {default/echo.default.svc.cluster.local: {}}
- uid: db-1
  name: db-1
  namespace: default
  serviceAccount: db
  addresses: [10.10.2.5]
  tunnelProtocol: HBONE
  node: node-b
  waypoint: {hostname: {namespace: default, hostname: waypoint.default.svc.cluster.local}, hboneMtlsPort: 15008}
- uid: waypoint-1
  name: waypoint-1
  workloadName: waypoint
  namespace: default
  serviceAccount: waypoint
  addresses: [10.10.2.9]
  tunnelProtocol: HBONE
  node: node-b
  services: {default/waypoint.default.svc.cluster.local: {}}
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: [10.96.0.20]
  ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: {address: {address: %q}, hboneMtlsPort: 15008}
- name: waypoint
  namespace: default
  hostname: waypoint.default.svc.cluster.local
  addresses: [10.96.0.30]
  ports: [{servicePort: 15021, targetPort: 15021}, {servicePort: 15008, targetPort: 15008}]
- name: down
  namespace: default
  hostname: down.default.svc.cluster.local
  addresses: [10.96.0.70]
  ports: [{servicePort: 80}]
  waypoint: {hostname: {namespace: default, hostname: missing.default.svc.cluster.local}, hboneMtlsPort: 15008}
`, base64.StdEncoding.EncodeToString(netip.MustParseAddr("10.96.0.30").AsSlice()))

func waypointSnapshot(t *testing.T) *meshstate.Snapshot {
	t.Helper()
	cfg, err := localconfig.Parse([]byte(waypointConfig))
	if err != nil {
		t.Fatal(err)
	}
	s := meshstate.NewStore("cluster.local")
	if err := s.Apply(cfg.Addresses, nil); err != nil {
		t.Fatal(err)
	}
	return s.Snapshot()
}

func TestDecideOutboundWaypoint(t *testing.T) {
	snap := waypointSnapshot(t)
	first := func(int) int { return 0 }
	tests := []struct {
		name          string
		node          string
		self          []string
		src, dst      string
		source        string // source workload uid
		via           bool
		target, dial  string
		workload, svc string // Route.Workload uid, Route.Service hostname
		err           error
		errText       string
	}{
		{name: "client to a service with a waypoint: to the waypoint, authority the VIP",
			node: "node-a", src: "10.10.1.2:40000", dst: "10.96.0.20:80", source: "client",
			via: true, target: "10.96.0.20:80", dial: "10.10.2.9:15008", workload: "waypoint-1", svc: "echo.default.svc.cluster.local"},
		{name: "client to a pod with a waypoint: to the waypoint, authority the pod",
			node: "node-a", src: "10.10.1.2:40000", dst: "10.10.2.5:5432", source: "client",
			via: true, target: "10.10.2.5:5432", dial: "10.10.2.9:15008", workload: "waypoint-1"},
		{name: "the waypoint itself (node level, by address) goes straight to an endpoint",
			node: "node-b", src: "10.10.2.9:40000", dst: "10.96.0.20:80", source: "waypoint-1",
			target: "10.10.2.2:8080", dial: "10.10.2.2:15008", workload: "echo-1", svc: "echo.default.svc.cluster.local"},
		{name: "the waypoint itself (in pod, by uid) goes straight to the pod",
			node: "node-b", self: []string{"waypoint-1"}, src: "10.10.9.9:40000", dst: "10.10.2.5:5432", source: "waypoint-1",
			target: "10.10.2.5:5432", dial: "10.10.2.5:15008", workload: "db-1"},
		{name: "a waypoint that does not exist fails the connection and is named",
			node: "node-a", src: "10.10.1.2:40000", dst: "10.96.0.70:80",
			err: meshstate.ErrNoWaypoint, errText: "waypoint default/missing.default.svc.cluster.local"},
		{name: "an unknown source has no identity to reach the waypoint with",
			node: "node-a", src: "10.10.7.7:40000", dst: "10.96.0.20:80", errText: "no identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := decideOutbound(snap, tt.node, tt.self, netip.MustParseAddrPort(tt.src), netip.MustParseAddrPort(tt.dst), first)
			if tt.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errText) || (tt.err != nil && !errors.Is(err, tt.err)) {
					t.Fatalf("err = %v, want %v containing %q", err, tt.err, tt.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := d.Route
			if d.Source == nil || d.Source.Uid != tt.source {
				t.Errorf("source = %v, want %s", d.Source, tt.source)
			}
			if r.Kind != meshstate.HBONE || r.ViaWaypoint != tt.via || r.Target.String() != tt.target || r.Dial.String() != tt.dial || r.Workload.Uid != tt.workload {
				t.Errorf("route = %s via %v target %s dial %s workload %s; want hbone via %v %s %s %s",
					r.Kind, r.ViaWaypoint, r.Target, r.Dial, r.Workload.Uid, tt.via, tt.target, tt.dial, tt.workload)
			}
			var got string
			if r.Service != nil {
				got = r.Service.GetHostname()
			}
			if got != tt.svc {
				t.Errorf("service = %q, want %q", got, tt.svc)
			}
		})
	}
}

// TestWaypointLabels: through a waypoint, the client side reports the waypoint as the
// destination workload and principal, and the service dialled as the destination service,
// as Istio's ztunnel does (actual_destination_workload, intended_destination_service).
func TestWaypointLabels(t *testing.T) {
	snap := waypointSnapshot(t)
	d, err := decideOutbound(snap, "node-a", nil, netip.MustParseAddrPort("10.10.1.2:40000"), netip.MustParseAddrPort("10.96.0.20:80"), func(int) int { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	r := d.Route
	l := connLabels(metrics.ReporterSource, d.Source, d.Source.Identity, r.Workload, r.Service, true)
	want := metrics.Labels{
		Reporter: metrics.ReporterSource, RequestProtocol: "tcp", ConnectionSecurityPolicy: metrics.MutualTLS,
		SourceWorkload: "client", SourceWorkloadNamespace: "default", SourcePrincipal: "spiffe://cluster.local/ns/default/sa/sleep",
		DestinationService: "echo.default.svc.cluster.local", DestinationServiceNamespace: "default", DestinationServiceName: "echo",
		DestinationWorkload: "waypoint", DestinationWorkloadNamespace: "default", DestinationPrincipal: "spiffe://cluster.local/ns/default/sa/waypoint",
	}
	if l != want {
		t.Errorf("labels =\n%+v\nwant\n%+v", l, want)
	}
	if got, want := forwarded(netip.MustParseAddrPort("10.10.1.2:40000"), r.Service).Get("Forwarded"), `for="10.10.1.2:40000";host=echo.default.svc.cluster.local`; got != want {
		t.Errorf("forwarded = %q, want %q", got, want)
	}
	if got := forwarded(netip.MustParseAddrPort("[::ffff:10.10.1.2]:40000"), nil).Get("Forwarded"); got != `for="10.10.1.2:40000"` {
		t.Errorf("forwarded without service = %q", got)
	}
}

// recordAuthz allows everything except deny and remembers what it was asked.
type recordAuthz struct {
	deny identity.ID
	got  *Conn
}

func (a recordAuthz) Authorize(c Conn) error {
	*a.got = c
	if c.Source == a.deny {
		return errors.New("denied by policy test/deny-waypoint")
	}
	return nil
}

func TestDecideInboundWaypoint(t *testing.T) {
	snap := waypointSnapshot(t)
	waypoint, _ := identity.Parse("spiffe://cluster.local/ns/default/sa/waypoint")
	sleep, _ := identity.Parse("spiffe://cluster.local/ns/default/sa/sleep")
	tests := []struct {
		name          string
		target, local string
		peer          identity.ID
		deny          identity.ID
		status        int
		reason        string
		dest          string // delivered to
		destUID       string
	}{
		{name: "from the waypoint to the pod: policy sees the waypoint's identity",
			target: "10.10.2.2:8080", local: "10.10.2.2", peer: waypoint, status: http.StatusOK, dest: "10.10.2.2:8080", destUID: "echo-1"},
		{name: "from the waypoint, captured on the node",
			target: "10.10.2.5:5432", local: "10.0.0.2", peer: waypoint, status: http.StatusOK, dest: "10.10.2.5:5432", destUID: "db-1"},
		{name: "a policy denying the waypoint's identity denies what it forwards",
			target: "10.10.2.2:8080", local: "10.10.2.2", peer: waypoint, deny: waypoint, status: http.StatusUnauthorized, reason: "deny-waypoint"},
		{name: "sandwich: a VIP whose waypoint is this pod goes to the waypoint pod on the VIP's port",
			target: "10.96.0.20:80", local: "10.10.2.9", peer: sleep, status: http.StatusOK, dest: "10.10.2.9:80", destUID: "waypoint-1"},
		{name: "sandwich: a pod whose waypoint is this pod",
			target: "10.10.2.5:5432", local: "10.10.2.9", peer: sleep, status: http.StatusOK, dest: "10.10.2.9:5432", destUID: "waypoint-1"},
		{name: "sandwich: policy still applies, to the waypoint pod",
			target: "10.96.0.20:80", local: "10.10.2.9", peer: sleep, deny: sleep, status: http.StatusUnauthorized, reason: "deny-waypoint"},
		{name: "a VIP on a connection to a pod that is not its waypoint",
			target: "10.96.0.20:80", local: "10.10.2.2", peer: sleep, status: http.StatusBadRequest, reason: "not its waypoint"},
		{name: "a pod without waypoint on a connection to the waypoint pod",
			target: "10.10.2.2:8080", local: "10.10.2.9", peer: sleep, status: http.StatusBadRequest, reason: "not its waypoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Conn
			d := decideInbound(snap, "node-b", inboundRequest{
				Target: netip.MustParseAddrPort(tt.target), Local: netip.MustParseAddr(tt.local), Source: tt.peer, SourceIP: netip.MustParseAddr("10.10.2.9"),
			}, recordAuthz{deny: tt.deny, got: &got})
			if d.Status != tt.status || !strings.Contains(d.Reason, tt.reason) {
				t.Fatalf("decision = %d %q, want %d containing %q", d.Status, d.Reason, tt.status, tt.reason)
			}
			if d.Status != http.StatusBadRequest && got.Source != tt.peer {
				t.Errorf("policy saw source %s, want the peer %s", got.Source, tt.peer)
			}
			if d.Status != http.StatusOK {
				return
			}
			if d.Target.String() != tt.dest || d.Workload.Uid != tt.destUID {
				t.Errorf("delivered to %s (%s), want %s (%s)", d.Target, d.Workload.Uid, tt.dest, tt.destUID)
			}
			if netip.AddrPortFrom(got.DestIP, got.DestPort).String() != tt.dest || got.Dest.Uid != tt.destUID {
				t.Errorf("policy saw destination %s:%d (%s), want %s (%s)", got.DestIP, got.DestPort, got.Dest.Uid, tt.dest, tt.destUID)
			}
		})
	}
}

// TestInboundSource: the source workload in destination metrics must have the verified
// identity: through a waypoint that is the waypoint, whatever forwarded names.
func TestInboundSource(t *testing.T) {
	snap := waypointSnapshot(t)
	waypoint, _ := identity.Parse("spiffe://cluster.local/ns/default/sa/waypoint")
	sleep, _ := identity.Parse("spiffe://cluster.local/ns/default/sa/sleep")
	ip := netip.MustParseAddr
	tests := []struct {
		name        string
		peer        identity.ID
		fwd, remote netip.Addr
		want        string
	}{
		{"direct: forwarded names the client", sleep, ip("10.10.1.2"), ip("10.0.0.1"), "client"},
		{"via waypoint: forwarded names the client, the peer is the waypoint", waypoint, ip("10.10.1.2"), ip("10.10.2.9"), "waypoint-1"},
		{"via waypoint without forwarded", waypoint, netip.Addr{}, ip("10.10.2.9"), "waypoint-1"},
		{"identity matches no candidate", waypoint, ip("10.10.1.2"), ip("10.0.0.1"), ""},
	}
	for _, tt := range tests {
		if got := inboundSource(snap, tt.peer, tt.fwd, tt.remote); (got == nil && tt.want != "") || (got != nil && got.Uid != tt.want) {
			t.Errorf("%s: source = %v, want %q", tt.name, got, tt.want)
		}
	}
}
