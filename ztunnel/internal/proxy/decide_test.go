package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/localconfig"
	"istio.io/istio/pkg/workloadapi"
)

// twoNodes is localconfig's two-node example: the workloads and services of the tests.
func twoNodes(t *testing.T) []*workloadapi.Address {
	t.Helper()
	b, err := os.ReadFile("../localconfig/testdata/two-nodes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := localconfig.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Addresses
}

func snapshot(t *testing.T) *meshstate.Snapshot {
	t.Helper()
	s := meshstate.NewStore("cluster.local")
	if err := s.Apply(twoNodes(t), nil); err != nil {
		t.Fatal(err)
	}
	return s.Snapshot()
}

type denyFrom string

func (d denyFrom) Authorize(c Conn) error {
	if c.Source.String() == string(d) || (d == "" && c.Source.IsZero()) {
		return errors.New("denied by policy test/deny")
	}
	return nil
}

func TestDecideInbound(t *testing.T) {
	snap := snapshot(t)
	sleep, _ := identity.Parse("spiffe://cluster.local/ns/default/sa/sleep")
	src := netip.MustParseAddr("10.10.1.2")
	tests := []struct {
		name   string
		node   string
		target string
		authz  Authorizer
		status int
		reason string
	}{
		{"local mesh workload", "node-b", "10.10.2.2:9090", AllowAll{}, http.StatusOK, ""},
		{"workload on another node", "node-a", "10.10.2.2:9090", AllowAll{}, http.StatusBadRequest, "not a workload on node node-a"},
		{"unknown IP", "node-b", "10.10.9.9:80", AllowAll{}, http.StatusBadRequest, "not a workload"},
		{"workload outside the mesh", "node-b", "[fd00::5]:5432", AllowAll{}, http.StatusBadRequest, "not in the mesh"},
		{"denied by policy", "node-b", "10.10.2.2:9090", denyFrom(sleep.String()), http.StatusUnauthorized, "test/deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := netip.MustParseAddrPort(tt.target)
			d := decideInbound(snap, tt.node, inboundRequest{Target: target, Local: target.Addr(), Source: sleep, SourceIP: src}, tt.authz)
			if d.Status != tt.status || !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("decision = %d %q, want %d containing %q", d.Status, d.Reason, tt.status, tt.reason)
			}
			if d.Status == http.StatusOK && d.Target.String() != tt.target {
				t.Errorf("target = %s, want %s", d.Target, tt.target)
			}
		})
	}
}

func TestDecideOutbound(t *testing.T) {
	snap := snapshot(t)
	first := func(int) int { return 0 }
	client := netip.MustParseAddrPort("10.10.1.2:40000")
	d, err := decideOutbound(snap, "node-a", nil, client, netip.MustParseAddrPort("10.96.0.20:80"), first)
	if err != nil || d.Route.Kind != meshstate.HBONE || d.Source == nil || d.Source.Identity.ServiceAccount() != "sleep" {
		t.Fatalf("client → echo VIP: %+v, %v", d, err)
	}
	if _, err := decideOutbound(snap, "node-b", nil, client, netip.MustParseAddrPort("10.96.0.20:80"), first); err == nil {
		t.Error("ztunnel on node-b tunnelled for a client on node-a")
	}
	d, err = decideOutbound(snap, "node-a", nil, netip.MustParseAddrPort("10.10.7.7:1"), netip.MustParseAddrPort("192.0.2.1:443"), first)
	if err != nil || d.Route.Kind != meshstate.Passthrough {
		t.Errorf("unknown client to unknown destination: %+v, %v; want passthrough", d, err)
	}
}

// TestDecideOutboundInPod: a pod's listener set names its own workload by uid (the first
// one found on this node), whatever the connection's source address; with no uid known it
// falls back to the address.
func TestDecideOutboundInPod(t *testing.T) {
	snap := snapshot(t)
	first := func(int) int { return 0 }
	vip := netip.MustParseAddrPort("10.96.0.20:80")
	tests := []struct {
		name    string
		node    string
		self    []string
		src     string
		want    string // source workload uid; "" for an error
		wantErr string
	}{
		{"uid of the pod", "node-a", []string{"4f0c-pod-uid", "cluster1//Pod/default/client"}, "10.10.9.9:4000", "cluster1//Pod/default/client", ""},
		{"unknown uid falls back to the address", "node-a", []string{"4f0c-pod-uid"}, "10.10.1.2:4000", "cluster1//Pod/default/client", ""},
		{"uid on another node is not ours", "node-b", []string{"cluster1//Pod/default/client"}, "10.10.9.9:4000", "", "not a workload on node node-b"},
		{"neither uid nor address", "node-a", []string{"nope"}, "10.10.9.9:4000", "", "no identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := routeOutbound(snap, tt.node, tt.self, netip.MustParseAddrPort(tt.src), vip, first)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || d.Source == nil || d.Source.Uid != tt.want {
				t.Fatalf("decision = %+v, %v; want source %s", d, err, tt.want)
			}
		})
	}
}

// TestDecideOutboundWaitsForThePod: an in-pod connection from a pod whose workload the
// state does not hold yet (ZDS before xDS) waits for it, and is routed with its identity
// once it arrives; one that never arrives gives up after the bound.
func TestDecideOutboundWaitsForThePod(t *testing.T) {
	var client *workloadapi.Address
	var rest []*workloadapi.Address
	for _, a := range twoNodes(t) {
		if a.GetWorkload().GetUid() == "cluster1//Pod/default/client" {
			client = a
			continue
		}
		rest = append(rest, a)
	}
	store := meshstate.NewStore("cluster.local")
	if err := store.Apply(rest, nil); err != nil {
		t.Fatal(err)
	}
	self := []string{"4f0c-pod-uid", "cluster1//Pod/default/client"}
	src, vip := netip.MustParseAddrPort("10.10.1.2:4000"), netip.MustParseAddrPort("10.96.0.20:80")
	if _, err := routeOutbound(store.Snapshot(), "node-a", self, src, vip, func(int) int { return 0 }); err == nil {
		t.Fatal("routed without the source workload")
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = store.Apply([]*workloadapi.Address{client}, nil)
	}()
	start := time.Now()
	d, err := decideOutbound(store.Snapshot(), "node-a", self, src, vip, func(int) int { return 0 })
	if err != nil || d.Source == nil || d.Source.Uid != "cluster1//Pod/default/client" || d.Route.Kind != meshstate.HBONE {
		t.Fatalf("decision = %+v, %v; want HBONE from the client's workload", d, err)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Errorf("waited %s for the workload applied after 100ms", waited)
	}

	start = time.Now()
	snap := awaitSource(store.Snapshot(), "node-a", []string{"nope"}, netip.MustParseAddrPort("10.10.9.9:1"), 50*time.Millisecond)
	if waited := time.Since(start); waited < 50*time.Millisecond || snap != store.Snapshot() {
		t.Errorf("an unknown pod: waited %s, current snapshot %v; want at least the 50ms bound and the current one", waited, snap == store.Snapshot())
	}
}

// TestAwaitLocal: an in-pod inbound connection waits through the pod's workload arriving
// outside the mesh (before the CNI's annotation reached the control plane) until it is in
// the mesh; a connection whose context ends stops waiting with the newest snapshot.
func TestAwaitLocal(t *testing.T) {
	store := meshstate.NewStore("cluster.local")
	ip := netip.MustParseAddr("10.10.1.2")
	pod := func(p workloadapi.TunnelProtocol) []*workloadapi.Address {
		return []*workloadapi.Address{{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: "cluster1//Pod/default/client", Name: "client", Namespace: "default", Node: "node-a",
			Addresses: [][]byte{ip.AsSlice()}, TunnelProtocol: p,
		}}}}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = store.Apply(pod(workloadapi.TunnelProtocol_NONE), nil)
		_ = store.Apply(pod(workloadapi.TunnelProtocol_HBONE), nil)
	}()
	snap := awaitLocal(context.Background(), store.Snapshot(), "node-a", ip, time.Minute)
	<-done
	if w, ok := snap.WorkloadByIP(ip); !ok || w.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		t.Fatalf("awaitLocal returned %v, want the pod's workload in the mesh", w)
	}
	if decideInbound(snap, "node-a", inboundRequest{Target: netip.AddrPortFrom(ip, 80), Local: ip}, denyFrom("spiffe://x/ns/y/sa/z")).Status != http.StatusOK {
		t.Error("the awaited snapshot does not admit plaintext to the pod")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	other := netip.MustParseAddr("10.10.9.9")
	if got := awaitLocal(ctx, store.Snapshot(), "node-a", other, time.Minute); got != store.Snapshot() {
		t.Error("with its context ended, awaitLocal did not return the current snapshot")
	}
}
