package discovery

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

// controlPlane is an in-process xDS server whose snapshots the test sets.
type controlPlane struct {
	mu   sync.Mutex
	sets map[string]map[string]*xds.Resource
	srv  *xdsserver.Server
	addr string
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := &controlPlane{sets: map[string]map[string]*xds.Resource{AddressType: {}, AuthorizationType: {}}}
	src := func(typeURL string) xdsserver.Source {
		return xdsserver.SourceFunc(func(_ context.Context, req *xdsserver.Request) (*xdsserver.Delta, error) {
			cp.mu.Lock()
			defer cp.mu.Unlock()
			return xdsserver.Diff(cp.sets[typeURL], req), nil
		})
	}
	srv, err := xdsserver.NewServer(xdsserver.ServerOptions{
		Sources:  map[string]xdsserver.Source{AddressType: src(AddressType), AuthorizationType: src(AuthorizationType)},
		Debounce: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	cp.srv = srv
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = srv.Run(ctx) }()
	go func() { _ = g.Serve(l) }()
	t.Cleanup(func() { cancel(); _ = srv.Close(); g.Stop() })
	return cp
}

func (cp *controlPlane) set(typeURL, name, version string, msg proto.Message) {
	cp.mu.Lock()
	if msg == nil {
		delete(cp.sets[typeURL], name)
	} else {
		a, err := anypb.New(msg)
		if err != nil {
			panic(err)
		}
		cp.sets[typeURL][name] = &xds.Resource{Name: name, Version: version, Resource: a}
	}
	cp.mu.Unlock()
	cp.srv.Push(typeURL, nil)
}

func workload(uid string, ip byte) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: uid, Namespace: "default", Addresses: [][]byte{{10, 0, 0, ip}}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
	}}}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDeltasAppliedAndNACKKeepsState: upserts, removals and policies reach the stores; an
// invalid workload is NACKed and the last good state stays.
func TestDeltasAppliedAndNACKKeepsState(t *testing.T) {
	cp := startControlPlane(t)
	store := meshstate.NewStore("cluster.local")
	policies := NewPolicyStore(authz.Options{})
	var firsts sync.Map
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client, err := xds.NewClient(xds.ClientOptions{
		Conn: conn, Node: Node("10.0.0.100", "ztunnel-x", "istio-system", "node-a"),
		Handler: Handler(store, policies, func(typeURL string) { firsts.Store(typeURL, true) }),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	client.Watch(AddressType)
	client.Watch(AuthorizationType)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("client: %v", err)
		}
	}()

	has := func(ip string) bool { _, ok := store.Snapshot().WorkloadByIP(netip.MustParseAddr(ip)); return ok }
	cp.set(AddressType, "a", "1", workload("a", 1))
	cp.set(AddressType, "b", "1", workload("b", 2))
	waitUntil(t, "two workloads", func() bool { return has("10.0.0.1") && has("10.0.0.2") })

	deny := &security.Authorization{Name: "deny-all", Namespace: "default", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
		Groups: []*security.Group{{}}} // an empty group matches everything
	cp.set(AuthorizationType, "default/deny-all", "1", deny)
	waitUntil(t, "the policy", func() bool { return policies.Current() != nil && policies.Current().Has("default/deny-all") })
	if _, ok := firsts.Load(AuthorizationType); !ok {
		t.Error("first-response callback not called for policies")
	}

	cp.set(AddressType, "a", "", nil)
	waitUntil(t, "the removal of a", func() bool { return !has("10.0.0.1") })

	// An invalid workload (3-byte address) is NACKed: b stays, c never appears.
	bad := workload("c", 3)
	bad.GetWorkload().Addresses = [][]byte{{1, 2, 3}}
	before := store.Snapshot()
	cp.set(AddressType, "c", "1", bad)
	waitUntil(t, "the NACK", func() bool { return client.Versions(AddressType)["c"] == "" && store.Snapshot() == before })
	time.Sleep(100 * time.Millisecond)
	if store.Snapshot() != before || !has("10.0.0.2") {
		t.Fatal("a NACKed response changed the state")
	}
	// A fixed version is accepted.
	cp.set(AddressType, "c", "2", workload("c", 3))
	waitUntil(t, "the fixed workload", func() bool { return has("10.0.0.3") && has("10.0.0.2") })
}

func TestPolicyStoreRejectsInvalid(t *testing.T) {
	s := NewPolicyStore(authz.Options{})
	good := &security.Authorization{Name: "p", Namespace: "ns", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW}
	if err := s.Apply([]*security.Authorization{good}, nil); err != nil {
		t.Fatal(err)
	}
	before := s.Current()
	global := &security.Authorization{Name: "g", Namespace: "not-root", Scope: security.Scope_GLOBAL}
	if err := s.Apply([]*security.Authorization{global}, nil); err == nil {
		t.Fatal("a GLOBAL policy outside the root namespace was accepted")
	}
	if s.Current() != before {
		t.Fatal("a rejected update changed the policies")
	}
}
