package proxy

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// TestPolicyWatcher: an open connection stays open through state changes (a new endpoint
// of its service, an update of its destination workload) and policy changes that still
// allow it, and is closed once a policy denies it, as Rust ztunnel's PolicyWatcher does.
func TestPolicyWatcher(t *testing.T) {
	store := meshstate.NewStore("cluster.local")
	echo := func(uid, ip string, policies ...string) *workloadapi.Address {
		return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: uid, Name: uid, Namespace: "default", ServiceAccount: "echo", Node: "node-b",
			Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
			AuthorizationPolicies: policies, Services: map[string]*workloadapi.PortList{"default/echo.default.svc.cluster.local": {}},
		}}}
	}
	if err := store.Apply([]*workloadapi.Address{echo("echo-1", "10.10.2.2")}, nil); err != nil {
		t.Fatal(err)
	}
	var current atomic.Pointer[authz.Policies]
	changed := make(chan struct{})
	var changedCh atomic.Pointer[chan struct{}]
	changedCh.Store(&changed)
	setPolicies := func(ps ...*security.Authorization) {
		compiled, err := authz.New(ps, authz.Options{})
		if err != nil {
			t.Fatal(err)
		}
		current.Store(compiled)
		next := make(chan struct{})
		close(*changedCh.Swap(&next))
	}
	a := &PolicyAuthorizer{Policies: current.Load}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, func() <-chan struct{} { return *changedCh.Load() }, store.Snapshot) }()

	w, _ := store.Snapshot().Workload("echo-1")
	sleep, err := identity.New("cluster.local", "default", "sleep")
	if err != nil {
		t.Fatal(err)
	}
	conn := Conn{Source: sleep, SourceIP: netip.MustParseAddr("10.10.1.2"), Dest: w, DestIP: netip.MustParseAddr("10.10.2.2"), DestPort: 9090}
	if err := a.Authorize(conn); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	var closes atomic.Int32
	forget := a.Watch(conn, func() error {
		if closes.Add(1) == 1 {
			close(closed)
		}
		return nil
	})
	defer forget()
	stillOpen := func(what string) {
		t.Helper()
		select {
		case <-closed:
			t.Fatalf("the connection was closed by %s", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
	deny := func(principal string) *security.Authorization {
		return &security.Authorization{Name: "deny", Namespace: "default", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{
				{MatchType: &security.StringMatch_Exact{Exact: principal}}}}}}}}}}
	}

	// A new endpoint of the service (scale-up), and an update of the destination workload.
	if err := store.Apply([]*workloadapi.Address{echo("echo-2", "10.10.2.3")}, nil); err != nil {
		t.Fatal(err)
	}
	stillOpen("a new endpoint of its service")
	if err := store.Apply([]*workloadapi.Address{echo("echo-1", "10.10.2.2")}, nil); err != nil {
		t.Fatal(err)
	}
	stillOpen("an update of its destination workload")
	// A policy that does not match it, then one that denies it but is not yet attached to
	// the workload (xDS sends the policy before the workload naming it).
	setPolicies(deny("cluster.local/ns/default/sa/other"))
	if err := store.Apply([]*workloadapi.Address{echo("echo-1", "10.10.2.2", "default/deny")}, nil); err != nil {
		t.Fatal(err)
	}
	stillOpen("a policy that denies another principal")
	setPolicies(deny("cluster.local/ns/default/sa/sleep"))
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("a policy that denies the open connection did not close it")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := closes.Load(); n != 1 {
		t.Errorf("closed %d times", n)
	}
}

// TestReauthorizeEvaluatesWhatChanged: a state change re-evaluates only connections whose
// destination's policy list changed (an unrelated endpoint costs no evaluation), and one
// that attaches an already known denying policy closes the connection; a policy change
// re-evaluates every connection.
func TestReauthorizeEvaluatesWhatChanged(t *testing.T) {
	store := meshstate.NewStore("cluster.local")
	echo := func(uid, ip string, policies ...string) []*workloadapi.Address {
		return []*workloadapi.Address{{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: uid, Name: uid, Namespace: "default", ServiceAccount: "echo", Node: "node-b",
			Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
			AuthorizationPolicies: policies,
		}}}}
	}
	if err := store.Apply(echo("echo-1", "10.10.2.2"), nil); err != nil {
		t.Fatal(err)
	}
	deny, err := authz.New([]*security.Authorization{{Name: "deny", Namespace: "default", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{
			{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/default/sa/sleep"}}}}}}}}}}}, authz.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var evaluations int
	a := &PolicyAuthorizer{Policies: func() *authz.Policies { evaluations++; return deny }}
	sleep, err := identity.New("cluster.local", "default", "sleep")
	if err != nil {
		t.Fatal(err)
	}
	w, _ := store.Snapshot().Workload("echo-1")
	closed := 0
	a.Watch(Conn{Source: sleep, Dest: w, DestIP: netip.MustParseAddr("10.10.2.2"), DestPort: 9090}, func() error { closed++; return nil })

	if err := store.Apply(echo("echo-2", "10.10.2.3"), nil); err != nil {
		t.Fatal(err)
	}
	if n := a.Reauthorize(store.Snapshot(), false); n != 0 || evaluations != 0 {
		t.Errorf("an unrelated endpoint: closed %d, %d evaluations; want 0 and 0", n, evaluations)
	}
	if n := a.Reauthorize(store.Snapshot(), true); n != 0 || evaluations != 1 {
		t.Errorf("a policy change (not attached to the destination): closed %d, %d evaluations; want 0 and 1", n, evaluations)
	}
	if err := store.Apply(echo("echo-1", "10.10.2.2", "default/deny"), nil); err != nil {
		t.Fatal(err)
	}
	if n := a.Reauthorize(store.Snapshot(), false); n != 1 || closed != 1 {
		t.Errorf("the destination now naming the denying policy: closed %d (callback %d), want 1", n, closed)
	}
}
