package meshstate

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
)

func load(t *testing.T) *Store {
	t.Helper()
	// ztunnel's local config example (ztunnel/internal/localconfig/testdata/two-nodes.yaml)
	// as protojson, one Address per line.
	b, err := os.ReadFile("testdata/two-nodes.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var addrs []*workloadapi.Address
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		a := &workloadapi.Address{}
		if err := protojson.Unmarshal([]byte(line), a); err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a)
	}
	s := NewStore("cluster.local")
	if err := s.Apply(addrs, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestOutbound(t *testing.T) {
	snap := load(t).Snapshot()
	first := func(int) int { return 0 }
	tests := []struct {
		name       string
		dst        string
		kind       RouteKind
		target     string
		dial       string
		identities []string
		err        error
	}{
		{"pod IP in the mesh", "10.10.2.2:9090", HBONE, "10.10.2.2:9090", "10.10.2.2:15008", []string{"spiffe://cluster.local/ns/default/sa/echo"}, nil},
		{"service VIP uses the workload's own port mapping", "10.96.0.20:80", HBONE, "10.10.2.2:9090", "10.10.2.2:15008",
			[]string{"spiffe://cluster.local/ns/default/sa/echo", "spiffe://cluster.local/ns/default/sa/echo-canary"}, nil},
		{"service port without target port", "10.96.0.20:443", HBONE, "10.10.2.2:443", "10.10.2.2:15008", nil, nil},
		{"unknown service port", "10.96.0.20:81", 0, "", "", nil, ErrNoPort},
		{"workload outside the mesh (IPv6)", "[fd00::5]:5432", Plaintext, "[fd00::5]:5432", "[fd00::5]:5432", nil, nil},
		{"IPv6 VIP to a plaintext endpoint", "[fd00::100]:5432", Plaintext, "[fd00::5]:5432", "[fd00::5]:5432", nil, nil},
		{"unknown destination", "192.0.2.1:443", Passthrough, "192.0.2.1:443", "192.0.2.1:443", nil, nil},
		{"IPv4-mapped IPv6 destination", "[::ffff:10.10.2.2]:9090", HBONE, "10.10.2.2:9090", "10.10.2.2:15008", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := snap.Direct(netip.MustParseAddrPort(tt.dst), first)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != tt.kind || r.Target.String() != tt.target || r.Dial.String() != tt.dial {
				t.Errorf("route = %s target %s dial %s; want %s %s %s", r.Kind, r.Target, r.Dial, tt.kind, tt.target, tt.dial)
			}
			if tt.identities != nil {
				var got []string
				for _, id := range r.Identities {
					got = append(got, id.String())
				}
				if strings.Join(got, ",") != strings.Join(tt.identities, ",") {
					t.Errorf("identities = %v, want %v", got, tt.identities)
				}
			}
		})
	}
}

func TestOutboundSkipsUnhealthyAndBalances(t *testing.T) {
	s := load(t)
	healthy := &workloadapi.Workload{Uid: "cluster1//Pod/default/echo-3", Namespace: "default", ServiceAccount: "echo",
		Addresses: [][]byte{{10, 10, 2, 4}}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		Services: map[string]*workloadapi.PortList{"default/echo.default.svc.cluster.local": {}}}
	if err := s.Apply([]*workloadapi.Address{{Type: &workloadapi.Address_Workload{Workload: healthy}}}, nil); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := range 4 {
		r, err := s.Snapshot().Direct(netip.MustParseAddrPort("10.96.0.20:80"), func(n int) int { return i % n })
		if err != nil {
			t.Fatal(err)
		}
		seen[r.Target.String()] = true
	}
	if len(seen) != 2 || !seen["10.10.2.2:9090"] || !seen["10.10.2.4:8080"] || seen["10.10.2.3:8080"] {
		t.Errorf("targets = %v, want the two healthy endpoints (echo-2 is unhealthy)", seen)
	}

	if err := s.Apply(nil, []string{"cluster1//Pod/default/echo-1", "cluster1//Pod/default/echo-3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Snapshot().Direct(netip.MustParseAddrPort("10.96.0.20:80"), func(int) int { return 0 }); !errors.Is(err, ErrNoEndpoints) {
		t.Errorf("with only an unhealthy endpoint: err = %v, want ErrNoEndpoints", err)
	}
}

func TestApplyIsAtomic(t *testing.T) {
	s := load(t)
	before := s.Snapshot()
	good := &workloadapi.Workload{Uid: "new", Namespace: "default", Addresses: [][]byte{{10, 0, 0, 9}}}
	bad := &workloadapi.Workload{Uid: "broken", Namespace: "default", Addresses: [][]byte{{1, 2, 3}}}
	err := s.Apply([]*workloadapi.Address{
		{Type: &workloadapi.Address_Workload{Workload: good}},
		{Type: &workloadapi.Address_Workload{Workload: bad}},
	}, []string{"cluster1//Pod/default/client"})
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("err = %v, want it to name the broken workload", err)
	}
	if s.Snapshot() != before {
		t.Fatal("a rejected update changed the state")
	}
	if _, ok := s.Snapshot().Workload("cluster1//Pod/default/client"); !ok {
		t.Fatal("the removal of a rejected update was applied")
	}
	// Readers holding the old snapshot keep a consistent view after a later update.
	if err := s.Apply(nil, []string{"cluster1//Pod/default/client"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := before.WorkloadByIP(netip.MustParseAddr("10.10.1.2")); !ok {
		t.Error("an old snapshot changed under its reader")
	}
	if _, ok := s.Snapshot().WorkloadByIP(netip.MustParseAddr("10.10.1.2")); ok {
		t.Error("removed workload still indexed by IP")
	}
}

func TestIdentityDefaults(t *testing.T) {
	w, err := newWorkload(&workloadapi.Workload{Uid: "u", Namespace: "ns"}, "cluster.local")
	if err != nil || w.Identity.String() != "spiffe://cluster.local/ns/ns/sa/default" {
		t.Fatalf("identity = %v, %v; want the default service account in the default trust domain", w.Identity, err)
	}
	if _, err := newWorkload(&workloadapi.Workload{Uid: "u"}, "cluster.local"); err == nil {
		t.Error("a workload without namespace was accepted")
	}
}

// TestAwait: a reader holding an old snapshot waits for the store's next Apply, without
// polling, and gets the first snapshot that satisfies it; a condition never met returns
// the newest snapshot when the context ends.
func TestAwait(t *testing.T) {
	s := NewStore("cluster.local")
	first := s.Snapshot()
	if first.Next() != nil {
		t.Fatal("the current snapshot has a next one")
	}
	has := func(uid string) func(*Snapshot) bool {
		return func(sn *Snapshot) bool { _, ok := sn.Workload(uid); return ok }
	}
	got := make(chan *Snapshot, 1)
	go func() {
		sn, _ := first.Await(context.Background(), has("b"))
		got <- sn
	}()
	for _, uid := range []string{"a", "b"} {
		time.Sleep(10 * time.Millisecond)
		if err := s.Apply([]*workloadapi.Address{{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: uid, Namespace: "ns"}}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case sn := <-got:
		if _, ok := sn.Workload("b"); !ok || sn != s.Snapshot() {
			t.Fatalf("Await returned a snapshot without b, or not the current one")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Await did not return after the Apply it waited for")
	}
	if first.Latest() != s.Snapshot() {
		t.Error("Latest of the first snapshot is not the current one")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if sn, ok := first.Await(ctx, has("never")); ok || sn != s.Snapshot() {
		t.Errorf("Await of a condition never met = (current: %v), %v; want the current snapshot, false", sn == s.Snapshot(), ok)
	}
}

// TestIPConflict: two workloads claiming one IP (a pod IP reused while the old Pod object is
// still listed) resolve to the live one, whatever the apply order or the uids.
func TestIPConflict(t *testing.T) {
	const ip = "10.1.0.7"
	type wl struct {
		uid     string
		hbone   bool
		healthy bool
	}
	pod := func(name string, hbone, healthy bool) wl { return wl{"c1//Pod/ns/" + name, hbone, healthy} }
	tests := []struct {
		name  string
		apply [][]wl // one Apply per element, in order
		want  string
	}{
		{"a pod beats a workload entry", [][]wl{{pod("z", false, false)}, {{"c1/networking.istio.io/WorkloadEntry/ns/a", true, true}}}, "c1//Pod/ns/z"},
		{"in the mesh beats outside it", [][]wl{{pod("a", false, true)}, {pod("b", true, true)}, {pod("c", false, true)}}, "c1//Pod/ns/b"},
		{"healthy beats terminating, even applied earlier", [][]wl{{pod("new", true, true)}, {pod("old", true, false)}}, "c1//Pod/ns/new"},
		{"the newest of equals wins", [][]wl{{pod("a", true, true)}, {pod("b", true, true)}}, "c1//Pod/ns/b"},
		{"the newest of equals wins, either uid order", [][]wl{{pod("b", true, true)}, {pod("a", true, true)}}, "c1//Pod/ns/a"},
		{"re-applied is newest", [][]wl{{pod("a", true, true)}, {pod("b", true, true)}, {pod("a", true, true)}}, "c1//Pod/ns/a"},
		{"later in one batch is newer", [][]wl{{pod("b", true, true), pod("a", true, true)}}, "c1//Pod/ns/a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStore("cluster.local")
			for _, batch := range tt.apply {
				var addrs []*workloadapi.Address
				for _, w := range batch {
					pb := &workloadapi.Workload{Uid: w.uid, Name: w.uid, Namespace: "ns", Node: "n1",
						Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}}
					if w.hbone {
						pb.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
					}
					if !w.healthy {
						pb.Status = workloadapi.WorkloadStatus_UNHEALTHY
					}
					addrs = append(addrs, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: pb}})
				}
				if err := s.Apply(addrs, nil); err != nil {
					t.Fatal(err)
				}
			}
			got, ok := s.Snapshot().WorkloadByIP(netip.MustParseAddr(ip))
			if !ok || got.Uid != tt.want {
				t.Errorf("WorkloadByIP(%s) = %v, want %s", ip, got.GetUid(), tt.want)
			}
		})
	}
}
