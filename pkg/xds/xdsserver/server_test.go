package xdsserver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
)

func TestWildcardInitialSync(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "1", "b", "1", "c", "1")
	other := newSnapshot("x", "1")
	e := newEnv(t, ServerOptions{
		Sources:      map[string]Source{typeA: snap, typeB: other},
		Authenticate: func(context.Context) (any, error) { return "spiffe://td/ns/ns/sa/ztunnel", nil },
	})
	rec := newRecorder()
	startClient(t, e.dial(t), rec.handle, func(c *xds.Client) { c.Watch(typeA) })
	rec.waitState(t, typeA, map[string]string{"a": "1", "b": "1", "c": "1"})
	if got := rec.state(typeB); len(got) != 0 {
		t.Errorf("got %v of an unsubscribed type", got)
	}
	reqs := snap.requests()
	if len(reqs) == 0 {
		t.Fatal("source never asked")
	}
	info := reqs[0].Stream
	if info.NodeID != "ztunnel~10.0.0.1~pod.ns~ns.svc.cluster.local" || info.Principal != "spiffe://td/ns/ns/sa/ztunnel" {
		t.Errorf("stream info = %+v", info)
	}
	if !reqs[0].Wildcard || reqs[0].Changed != nil {
		t.Errorf("first request = %+v, want wildcard with Changed nil", reqs[0])
	}
}

func TestStreamMetadata(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "1")
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}})
	md, err := structpb.NewStruct(map[string]any{"NAMESPACE": "istio-system", "NODE_NAME": "n1"})
	if err != nil {
		t.Fatal(err)
	}
	st := rawStream(t, e.dial(t))
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "node-1", Metadata: md}, TypeUrl: typeA})
	recv(t, st)
	info := snap.requests()[0].Stream
	if info.NodeID != "node-1" || info.Metadata.GetFields()["NODE_NAME"].GetStringValue() != "n1" {
		t.Errorf("stream info = %+v", info)
	}
}

func TestPushReaches100Streams(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "1", "b", "1")
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}})
	conn := e.dial(t)
	var recs []*recorder
	for range 100 {
		rec := newRecorder()
		recs = append(recs, rec)
		startClient(t, conn, rec.handle, func(c *xds.Client) { c.Watch(typeA) })
	}
	for _, rec := range recs {
		rec.waitState(t, typeA, map[string]string{"a": "1", "b": "1"})
	}
	snap.set("a", "2")
	e.srv.Push(typeA, []string{"a"})
	for _, rec := range recs {
		rec.waitState(t, typeA, map[string]string{"a": "2", "b": "1"})
	}
	for i, rec := range recs {
		if calls := rec.callLog(); len(calls) != 3 {
			t.Fatalf("client %d: calls %v, want the initial two and one update", i, calls)
		}
	}
}

func TestSlowClientDoesNotBlock(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot()
	big := strings.Repeat("x", 1<<20)
	snap.setPayload("a", "0", big)
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}, Debounce: -1})

	// The slow client subscribes and never reads, on its own connection.
	slow := rawStream(t, e.dial(t))
	send(t, slow, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA})

	rec := newRecorder()
	startClient(t, e.dial(t), rec.handle, func(c *xds.Client) { c.Watch(typeA) })
	rec.waitState(t, typeA, map[string]string{"a": "0"})

	pushed := make(chan struct{})
	go func() {
		defer close(pushed)
		for i := 1; i <= 20; i++ {
			snap.setPayload("a", fmt.Sprint(i), big)
			e.srv.Push(typeA, []string{"a"})
		}
	}()
	select {
	case <-pushed:
	case <-time.After(10 * time.Second):
		t.Fatal("Push blocked behind a slow client")
	}
	rec.waitState(t, typeA, map[string]string{"a": "20"})
	// The slow stream (no node) was stuck in Send: its changes were coalesced, not queued.
	slowGens := 0
	for _, r := range snap.requests() {
		if r.Stream.NodeID == "" {
			slowGens++
		}
	}
	t.Logf("slow stream generations: %d of 21", slowGens)
	if slowGens >= 21 {
		t.Errorf("slow stream was answered %d times; it should have been blocked", slowGens)
	}
}

func TestNACKKeepsClientStateAndIsLogged(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "1", "b", "1")
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}})
	rec := newRecorder()
	rec.reject = func(_ string, r *xds.Resource) error {
		if r.Version == "bad" {
			return errors.New("field foo: invalid")
		}
		return nil
	}
	c := startClient(t, e.dial(t), rec.handle, func(c *xds.Client) { c.Watch(typeA) })
	rec.waitState(t, typeA, map[string]string{"a": "1", "b": "1"})

	snap.set("a", "bad")
	e.srv.Push(typeA, []string{"a"})
	eventually(t, "the NACK in the server log", func() bool {
		return strings.Contains(e.logs.String(), "NACK") && strings.Contains(e.logs.String(), "field foo: invalid")
	})
	if got := c.Versions(typeA); !maps.Equal(got, map[string]string{"a": "1", "b": "1"}) {
		t.Errorf("client versions after NACK = %v, want the last good ones", got)
	}
	// A push of everything must not resend the rejected version; a later good change arrives.
	e.srv.Push(typeA, nil)
	snap.set("b", "2")
	e.srv.Push(typeA, []string{"b"})
	rec.waitState(t, typeA, map[string]string{"a": "1", "b": "2"})
	if n := count(rec.callLog(), typeA+" a@bad"); n != 1 {
		t.Errorf("rejected version sent %d times, want 1: %v", n, rec.callLog())
	}
	// A fixed version is accepted.
	snap.set("a", "3")
	e.srv.Push(typeA, []string{"a"})
	rec.waitState(t, typeA, map[string]string{"a": "3", "b": "2"})
}

func count(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

func TestReconnectSendsOnlyChanges(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "1", "b", "1", "c", "1")
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}})
	conn := &switchConn{cur: e.dial(t)}
	rec := newRecorder()
	c := startClient(t, conn, rec.handle, func(c *xds.Client) { c.Watch(typeA) })
	rec.waitState(t, typeA, map[string]string{"a": "1", "b": "1", "c": "1"})
	eventually(t, "ACKs", func() bool { return len(c.Versions(typeA)) == 3 })

	snap.set("b", "2")
	snap.del("c")
	snap.set("d", "1")
	before := len(rec.callLog())
	conn.swap(e.dial(t)) // the old connection closes: the stream breaks

	rec.waitState(t, typeA, map[string]string{"a": "1", "b": "2", "d": "1"})
	got := rec.callLog()[before:]
	slices.Sort(got)
	want := []string{typeA + " -c", typeA + " b@2", typeA + " d@1"}
	if !slices.Equal(got, want) {
		t.Errorf("after reconnect got %v, want %v", got, want)
	}
	reqs := snap.requests()
	last := reqs[len(reqs)-1]
	if !maps.Equal(last.Have, map[string]string{"a": "1", "b": "1", "c": "1"}) {
		t.Errorf("server saw initial_resource_versions %v", last.Have)
	}
}

// switchConn lets a test break a Client's stream and reconnect it elsewhere.
type switchConn struct {
	mu  sync.Mutex
	cur *grpc.ClientConn
}

func (s *switchConn) swap(cc *grpc.ClientConn) {
	s.mu.Lock()
	old := s.cur
	s.cur = cc
	s.mu.Unlock()
	_ = old.Close()
}

func (s *switchConn) get() *grpc.ClientConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *switchConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return s.get().Invoke(ctx, method, args, reply, opts...)
}

func (s *switchConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return s.get().NewStream(ctx, desc, method, opts...)
}

func TestOnDemandSubscribeAndUnsubscribe(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "1", "b", "1", "c", "1")
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}})
	rec := newRecorder()
	c := startClient(t, e.dial(t), rec.handle, func(c *xds.Client) { c.Subscribe(typeA) })
	eventually(t, "the empty initial response", func() bool { return len(snap.requests()) > 0 })
	if got := rec.state(typeA); len(got) != 0 {
		t.Fatalf("on-demand client got %v before subscribing", got)
	}

	c.Subscribe(typeA, "a", "missing")
	rec.waitState(t, typeA, map[string]string{"a": "1"})
	eventually(t, "the removal of the missing name", func() bool {
		return slices.Contains(rec.callLog(), typeA+" -missing")
	})
	c.Subscribe(typeA, "b")
	rec.waitState(t, typeA, map[string]string{"a": "1", "b": "1"})

	c.Unsubscribe(typeA, "a")
	c.Subscribe(typeA, "zz") // requests are ordered: once zz is asked for, a is gone
	eventually(t, "the unsubscribe", func() bool {
		reqs := snap.requests()
		return slices.Equal(reqs[len(reqs)-1].Names, []string{"b", "missing", "zz"})
	})
	snap.set("a", "2")
	snap.set("b", "2")
	snap.set("c", "2")
	e.srv.Push(typeA, nil)
	rec.waitState(t, typeA, map[string]string{"a": "1", "b": "2"})
	for _, call := range rec.callLog() {
		if call == typeA+" a@2" || strings.HasPrefix(call, typeA+" c@") {
			t.Errorf("got %q after unsubscribing / never subscribing", call)
		}
	}
}

// TestAuthenticatorOutage: an authenticator that could not decide says so with a status of
// its own, which the stream keeps, so the client retries rather than giving up.
func TestAuthenticatorOutage(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, ServerOptions{
		Sources: map[string]Source{typeA: newSnapshot("a", "1")},
		Authenticate: func(context.Context) (any, error) {
			return nil, fmt.Errorf("reviewing token: %w", status.Error(codes.Unavailable, "apiserver unreachable"))
		},
	})
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(e.dial(t)).DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA})
	_, err = st.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "apiserver unreachable") {
		t.Fatalf("Recv error = %v, want Unavailable naming the cause", err)
	}
}

func TestAuthenticationFailure(t *testing.T) {
	checkLeaks(t)
	var sawToken string
	var mu sync.Mutex
	e := newEnv(t, ServerOptions{
		Sources: map[string]Source{typeA: newSnapshot("a", "1")},
		Authenticate: func(ctx context.Context) (any, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			mu.Lock()
			sawToken = strings.Join(md.Get("authorization"), ",")
			mu.Unlock()
			return nil, errors.New("token review: token expired")
		},
	})
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer x")
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(e.dial(t)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA})
	_, err = st.Recv()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "token expired") {
		t.Fatalf("Recv error = %v, want Unauthenticated", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if sawToken != "Bearer x" {
		t.Errorf("Authenticate saw authorization %q", sawToken)
	}
}

func TestCloseEndsStreams(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "1")
	snap.setPayload("big", "1", strings.Repeat("y", 1<<20))
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}})
	slow := rawStream(t, e.dial(t)) // never reads: its sender is blocked in Send
	send(t, slow, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA})
	fast := rawStream(t, e.dial(t))
	send(t, fast, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA})
	recv(t, fast)
	eventually(t, "two streams", func() bool { return e.srv.Streams() == 2 })
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := fast.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Recv after Close = %v, want Unavailable", err)
	}
	if n := e.srv.Streams(); n != 0 {
		t.Errorf("%d streams after Close", n)
	}
	_ = e.srv.Close() // idempotent
}

func TestProtocolErrors(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: newSnapshot("a", "1")}})
	st := rawStream(t, e.dial(t))
	send(t, st, &discoveryv3.DeltaDiscoveryRequest{})
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("request without type_url: %v, want InvalidArgument", err)
	}
}

func TestNewServerValidates(t *testing.T) {
	tests := []struct {
		name string
		opts ServerOptions
	}{
		{"no sources", ServerOptions{}},
		{"empty type URL", ServerOptions{Sources: map[string]Source{"": newSnapshot()}}},
		{"nil source", ServerOptions{Sources: map[string]Source{typeA: nil}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewServer(tt.opts); err == nil {
				t.Error("NewServer succeeded")
			}
		})
	}
	if _, err := xds.NewClient(xds.ClientOptions{}); err == nil {
		t.Error("xds.NewClient without Conn succeeded")
	}
}

func rawStream(tb testing.TB, cc grpc.ClientConnInterface) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

func send(tb testing.TB, st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, req *discoveryv3.DeltaDiscoveryRequest) {
	tb.Helper()
	if err := st.Send(req); err != nil {
		tb.Fatal(err)
	}
}

func recv(tb testing.TB, st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) *discoveryv3.DeltaDiscoveryResponse {
	tb.Helper()
	resp, err := st.Recv()
	if err != nil {
		tb.Fatal(err)
	}
	return resp
}

func TestPushIsDebounced(t *testing.T) {
	checkLeaks(t)
	snap := newSnapshot("a", "0")
	e := newEnv(t, ServerOptions{Sources: map[string]Source{typeA: snap}, Debounce: 200 * time.Millisecond})
	rec := newRecorder()
	startClient(t, e.dial(t), rec.handle, func(c *xds.Client) { c.Watch(typeA) })
	rec.waitState(t, typeA, map[string]string{"a": "0"})
	initial := len(snap.requests())
	for i := 1; i <= 10; i++ {
		snap.set("a", fmt.Sprint(i))
		e.srv.Push(typeA, []string{"a", fmt.Sprint("n", i)})
	}
	rec.waitState(t, typeA, map[string]string{"a": "10"})
	reqs := snap.requests()[initial:]
	if len(reqs) != 1 {
		t.Fatalf("%d generations for 10 pushes in one debounce window, want 1", len(reqs))
	}
	if len(reqs[0].Changed) != 11 {
		t.Errorf("Changed = %v, want a and n1..n10", reqs[0].Changed)
	}
}
