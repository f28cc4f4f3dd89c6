// Package discovery feeds ztunnel from the control plane over delta xDS: it subscribes to
// Istio's istio.workload.Address and istio.security.Authorization types and applies each
// response atomically — workloads and services to the state store, policies to the policy
// store — NACKing an invalid response so the last good state stays in force.
//
// It is glue between pkg/xds (the protocol) and ztunnel's stores; it decides nothing about
// routing or authorization.
package discovery

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"istio.io/istio/pkg/workloadapi/security"
)

// Istio's ambient type URLs.
const (
	AddressType       = meshstate.AddressType
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// PolicyStore holds the authorization policies and their compiled form. Apply is its only
// writer; Current is lock-free.
type PolicyStore struct {
	opts     authz.Options
	mu       sync.Mutex
	policies map[string]*security.Authorization
	current  atomic.Pointer[authz.Policies]
	changed  chan struct{} // closed (and replaced) by each Apply
}

// NewPolicyStore returns an empty store (which allows everything).
func NewPolicyStore(opts authz.Options) *PolicyStore {
	return &PolicyStore{opts: opts, policies: map[string]*security.Authorization{}, changed: make(chan struct{})}
}

// Changed returns a channel that is closed by the next successful Apply.
func (s *PolicyStore) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Current returns the compiled policies; nil (allow all) before the first Apply.
func (s *PolicyStore) Current() *authz.Policies { return s.current.Load() }

// Apply upserts and removes policies (by "namespace/name") atomically: if the result does
// not compile, nothing changes and the error names the policy.
func (s *PolicyStore) Apply(upserts []*security.Authorization, removals []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]*security.Authorization, len(s.policies)+len(upserts))
	for k, v := range s.policies {
		next[k] = v
	}
	for _, name := range removals {
		delete(next, name)
	}
	for _, p := range upserts {
		next[p.GetNamespace()+"/"+p.GetName()] = p
	}
	all := make([]*security.Authorization, 0, len(next))
	for _, p := range next {
		all = append(all, p)
	}
	compiled, err := authz.New(all, s.opts)
	if err != nil {
		return err
	}
	s.policies = next
	s.current.Store(compiled)
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

// Handler returns the xDS handler that applies responses to store and policies; first is
// called once, after the first response of each type has been applied.
func Handler(store *meshstate.Store, policies *PolicyStore, first func(typeURL string)) xds.Handler {
	var seen sync.Map
	return func(typeURL string, upserts []*xds.Resource, removals []string) error {
		var err error
		switch typeURL {
		case AddressType:
			err = store.ApplyResources(upserts, removals)
		case AuthorizationType:
			ps := make([]*security.Authorization, 0, len(upserts))
			for _, r := range upserts {
				p := &security.Authorization{}
				if uerr := r.Resource.UnmarshalTo(p); uerr != nil {
					return fmt.Errorf("decoding authorization %s: %w", r.Name, uerr)
				}
				ps = append(ps, p)
			}
			err = policies.Apply(ps, removals)
		default:
			return fmt.Errorf("unexpected type %s", typeURL)
		}
		if err != nil {
			return err
		}
		if _, loaded := seen.LoadOrStore(typeURL, true); !loaded && first != nil {
			first(typeURL)
		}
		return nil
	}
}
