package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
)

// PolicyAuthorizer enforces Istio's L4 authorization (pkg/authz) at the destination: when a
// connection opens, and again for every open connection Watch registered when the policies
// (or the destination workload's list of them) change. As Rust ztunnel's PolicyWatcher, a
// change closes only the connections the new policy denies; nothing else about a state
// change (a new endpoint, an updated workload) touches open connections.
type PolicyAuthorizer struct {
	// Policies returns the current policy set; nil means no policy (allow).
	Policies func() *authz.Policies
	// Log receives dry-run results and the connections closed by a policy change. If nil,
	// nothing is logged.
	Log *slog.Logger

	mu    sync.Mutex
	conns map[*watched]struct{}
}

// watched is one open connection and what it was authorized as.
type watched struct {
	c     Conn
	close func() error
}

// Authorize implements Authorizer.
func (a *PolicyAuthorizer) Authorize(c Conn) error {
	d := a.Policies().Evaluate(authz.Connection{
		SourceIdentity: c.Source, SourceIP: c.SourceIP,
		DestinationIP: c.DestIP, DestinationPort: c.DestPort,
		DestinationNamespace: c.Dest.GetNamespace(), DestinationPolicies: c.Dest.GetAuthorizationPolicies(),
	})
	if len(d.DryRun) > 0 && a.Log != nil {
		a.Log.Info("dry-run policy would change the decision", "policies", d.DryRun, "allowed", d.Allowed,
			"src", c.Source, "srcIP", c.SourceIP, "dst", c.Dest.Uid, "port", c.DestPort)
	}
	if d.Allowed {
		return nil
	}
	if d.Policy != "" {
		return fmt.Errorf("denied by authorization policy %s (%s)", d.Policy, d.Reason)
	}
	return fmt.Errorf("denied: %s", d.Reason)
}

// Watch registers an open connection that c was authorized: Reauthorize closes it with
// closeConn if the policies come to deny it. The returned func unregisters it; call it
// when the connection ends.
func (a *PolicyAuthorizer) Watch(c Conn, closeConn func() error) (forget func()) {
	w := &watched{c: c, close: closeConn}
	a.mu.Lock()
	if a.conns == nil {
		a.conns = map[*watched]struct{}{}
	}
	a.conns[w] = struct{}{}
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		delete(a.conns, w)
		a.mu.Unlock()
	}
}

// Reauthorize evaluates watched connections against the current policies and their
// destination workload as snap has it now, and closes those now denied. It returns how many
// it closed. With policiesChanged false only the connections whose destination's policy
// list changed are evaluated: nothing else a decision reads can have changed (a state
// change is usually an endpoint coming or going elsewhere).
func (a *PolicyAuthorizer) Reauthorize(snap *meshstate.Snapshot, policiesChanged bool) int {
	a.mu.Lock()
	var denied []*watched
	for w := range a.conns {
		cur, ok := snap.Workload(w.c.Dest.GetUid())
		if ok && !slices.Equal(cur.GetAuthorizationPolicies(), w.c.Dest.GetAuthorizationPolicies()) {
			w.c.Dest = cur
		} else if !policiesChanged {
			continue
		}
		c := w.c
		if err := a.Authorize(c); err != nil {
			denied = append(denied, w)
			delete(a.conns, w)
			if a.Log != nil {
				a.Log.Info("closing a connection the policies now deny", "src", c.Source, "srcIP", c.SourceIP,
					"dst", c.Dest.GetUid(), "port", c.DestPort, "reason", err)
			}
		}
	}
	a.mu.Unlock()
	for _, w := range denied {
		_ = w.close()
	}
	return len(denied)
}

// Run re-authorizes the watched connections each time the policies change (policiesChanged
// returns a channel closed at the next change) or the state does (a workload's policy list
// is part of its state), until ctx ends.
func (a *PolicyAuthorizer) Run(ctx context.Context, policiesChanged func() <-chan struct{}, state func() *meshstate.Snapshot) error {
	snap, pc, last := state(), policiesChanged(), a.Policies()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-pc:
		case <-snap.Replaced():
		}
		pc, snap = policiesChanged(), snap.Latest() // before evaluating: a change during it is not missed
		cur := a.Policies()
		a.Reauthorize(snap, cur != last)
		last = cur
	}
}

// connWatcher is an Authorizer that also re-authorizes open connections (PolicyAuthorizer).
type connWatcher interface {
	Watch(c Conn, closeConn func() error) (forget func())
}

var _ connWatcher = (*PolicyAuthorizer)(nil)

// watchConn registers c, authorized as conn, with the Authorizer if it re-authorizes open
// connections; the returned func unregisters it.
func watchConn(a Authorizer, conn Conn, c net.Conn) (forget func()) {
	if w, ok := a.(connWatcher); ok {
		return w.Watch(conn, c.Close)
	}
	return func() {}
}
