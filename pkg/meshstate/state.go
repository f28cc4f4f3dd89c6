// Package meshstate is the data plane's read model of the mesh, shared by ztunnel and the
// waypoint: the workloads and services they know, indexed by IP, uid and hostname, held in
// immutable snapshots that one writer replaces atomically and any number of proxy goroutines
// read without locks. The routing decisions (route.go) are pure functions over a snapshot.
//
// It is not an xDS client or a file loader: those feed it through Store.Apply. It imports
// Istio's workload API types (istio.workload.Workload and Service), the wire contract with
// the control plane.
package meshstate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"istio.io/istio/pkg/workloadapi"
)

// Workload is a workload with the fields ztunnel derives once, at apply time.
type Workload struct {
	*workloadapi.Workload
	// IPs are the parsed Addresses.
	IPs []netip.Addr
	// Identity is spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
	Identity identity.ID

	// seq orders workloads by when the store last applied them (higher is newer); it
	// decides which of two workloads claiming one IP the snapshot names (byIPRank).
	seq uint64
}

// Service is a service with its parsed VIPs and its key, "namespace/hostname".
type Service struct {
	*workloadapi.Service
	Key  string
	VIPs []netip.Addr
}

// Snapshot is an immutable view of the mesh. Never modify what it returns.
type Snapshot struct {
	workloads map[string]*Workload     // by uid
	byIP      map[netip.Addr]*Workload // by each workload IP
	services  map[string]*Service      // by key
	byVIP     map[netip.Addr]*Service
	endpoints map[string][]*Workload // service key -> workloads that list it

	// replaced is closed when the store that made this snapshot stores the next one, next.
	replaced chan struct{}
	next     *Snapshot
}

// Replaced returns a channel that is closed once the store that made s holds a newer
// snapshot, which Next then returns. A reader can so wait for the state to change without
// polling and without a reference to the store.
func (s *Snapshot) Replaced() <-chan struct{} { return s.replaced }

// Next returns the snapshot that replaced s, or nil while s is the current one (until
// Replaced is closed).
func (s *Snapshot) Next() *Snapshot {
	select {
	case <-s.replaced:
		return s.next
	default:
		return nil
	}
}

// Latest returns the newest snapshot of s's store: s or one that replaced it.
func (s *Snapshot) Latest() *Snapshot {
	for n := s.Next(); n != nil; n = s.Next() {
		s = n
	}
	return s
}

// Await returns the first snapshot, from s on, for which ok holds: s itself, or one of the
// snapshots its store replaces it with later. When ctx ends first it returns the newest
// snapshot seen and false.
func (s *Snapshot) Await(ctx context.Context, ok func(*Snapshot) bool) (*Snapshot, bool) {
	for {
		if ok(s) {
			return s, true
		}
		select {
		case <-s.replaced:
			s = s.next
		case <-ctx.Done():
			return s.Latest(), false
		}
	}
}

// Workload returns the workload with uid.
func (s *Snapshot) Workload(uid string) (*Workload, bool) { w, ok := s.workloads[uid]; return w, ok }

// WorkloadByIP returns the workload that owns ip.
func (s *Snapshot) WorkloadByIP(ip netip.Addr) (*Workload, bool) {
	w, ok := s.byIP[ip.Unmap()]
	return w, ok
}

// Service returns the service with key "namespace/hostname".
func (s *Snapshot) Service(key string) (*Service, bool) { v, ok := s.services[key]; return v, ok }

// ServiceByVIP returns the service that owns vip.
func (s *Snapshot) ServiceByVIP(vip netip.Addr) (*Service, bool) {
	v, ok := s.byVIP[vip.Unmap()]
	return v, ok
}

// Endpoints returns the workloads that list the service key among their services.
func (s *Snapshot) Endpoints(key string) []*Workload { return s.endpoints[key] }

// Counts returns how many workloads and services the snapshot holds.
func (s *Snapshot) Counts() (workloads, services int) { return len(s.workloads), len(s.services) }

// Workloads calls f for every workload, in no particular order.
func (s *Snapshot) Workloads(f func(*Workload)) {
	for _, w := range s.workloads {
		f(w)
	}
}

// Services calls f for every service, in no particular order.
func (s *Snapshot) Services(f func(*Service)) {
	for _, v := range s.services {
		f(v)
	}
}

// Store holds the current snapshot. Apply is its only writer.
type Store struct {
	defaultTrustDomain string
	cur                atomic.Pointer[Snapshot]

	mu        sync.Mutex // serialises writers
	seq       uint64     // the last Workload.seq given
	workloads map[string]*Workload
	services  map[string]*Service
}

// NewStore returns an empty store. defaultTrustDomain applies to workloads that name none
// (the control plane elides cluster.local).
func NewStore(defaultTrustDomain string) *Store {
	s := &Store{defaultTrustDomain: defaultTrustDomain, workloads: map[string]*Workload{}, services: map[string]*Service{}}
	s.cur.Store(index(s.workloads, s.services))
	return s
}

// Snapshot returns the current snapshot; cheap, lock-free.
func (s *Store) Snapshot() *Snapshot { return s.cur.Load() }

// Apply upserts addrs and removes the resources named in removals (workload uids or
// service keys), atomically: if any resource is invalid nothing changes and the error names
// it, so the caller can NACK and keep the last good state.
func (s *Store) Apply(addrs []*workloadapi.Address, removals []string) error {
	var ws []*Workload
	var svcs []*Service
	var errs []error
	for _, a := range addrs {
		switch {
		case a.GetWorkload() != nil:
			w, err := newWorkload(a.GetWorkload(), s.defaultTrustDomain)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ws = append(ws, w)
		case a.GetService() != nil:
			v, err := newService(a.GetService())
			if err != nil {
				errs = append(errs, err)
				continue
			}
			svcs = append(svcs, v)
		default:
			errs = append(errs, errors.New("address holds neither a workload nor a service"))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	workloads, services := cloneMap(s.workloads), cloneMap(s.services)
	for _, name := range removals {
		delete(workloads, name)
		delete(services, name)
	}
	for _, w := range ws {
		s.seq++
		w.seq = s.seq
		workloads[w.Uid] = w
	}
	for _, v := range svcs {
		services[v.Key] = v
	}
	s.workloads, s.services = workloads, services
	next := index(workloads, services)
	prev := s.cur.Load()
	s.cur.Store(next)
	prev.next = next
	close(prev.replaced)
	return nil
}

func newWorkload(pb *workloadapi.Workload, defaultTD string) (*Workload, error) {
	if pb.GetUid() == "" {
		return nil, fmt.Errorf("workload %s/%s has no uid", pb.GetNamespace(), pb.GetName())
	}
	w := &Workload{Workload: pb}
	for i, b := range pb.GetAddresses() {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			return nil, fmt.Errorf("workload %s: address %d is %d bytes, want 4 or 16", pb.Uid, i, len(b))
		}
		w.IPs = append(w.IPs, ip.Unmap())
	}
	td, sa := pb.GetTrustDomain(), pb.GetServiceAccount()
	if td == "" {
		td = defaultTD
	}
	if sa == "" {
		sa = "default"
	}
	id, err := identity.New(td, pb.GetNamespace(), sa)
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", pb.Uid, err)
	}
	w.Identity = id
	return w, nil
}

func newService(pb *workloadapi.Service) (*Service, error) {
	if pb.GetNamespace() == "" || pb.GetHostname() == "" {
		return nil, fmt.Errorf("service %q has no namespace or hostname", pb.GetName())
	}
	v := &Service{Service: pb, Key: pb.GetNamespace() + "/" + pb.GetHostname()}
	for i, a := range pb.GetAddresses() {
		ip, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			return nil, fmt.Errorf("service %s: address %d is %d bytes, want 4 or 16", v.Key, i, len(a.GetAddress()))
		}
		v.VIPs = append(v.VIPs, ip.Unmap())
	}
	for _, p := range pb.GetPorts() {
		if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
			return nil, fmt.Errorf("service %s: invalid port %d -> %d", v.Key, p.GetServicePort(), p.GetTargetPort())
		}
	}
	return v, nil
}

// index builds a snapshot's lookup tables. Where two workloads claim one IP, byIPRank
// picks the one the IP names, whatever the map order.
func index(workloads map[string]*Workload, services map[string]*Service) *Snapshot {
	s := &Snapshot{
		workloads: workloads, services: services,
		byIP: map[netip.Addr]*Workload{}, byVIP: map[netip.Addr]*Service{}, endpoints: map[string][]*Workload{},
		replaced: make(chan struct{}),
	}
	for _, w := range workloads {
		for _, ip := range w.IPs {
			if old, ok := s.byIP[ip]; !ok || byIPRank(w, old) {
				s.byIP[ip] = w
			}
		}
		for key := range w.GetServices() {
			s.endpoints[key] = append(s.endpoints[key], w)
		}
	}
	for key, eps := range s.endpoints {
		sortByUID(eps)
		s.endpoints[key] = eps
	}
	for _, v := range services {
		for _, ip := range v.VIPs {
			if old, ok := s.byVIP[ip]; !ok || v.Key < old.Key {
				s.byVIP[ip] = v
			}
		}
	}
	return s
}

// byIPRank reports whether a rather than b should own an IP both claim. Kubernetes reuses
// a pod IP once the pod's sandbox is gone, while the old Pod object (terminating, on a
// lost node) may still be listed, so conflicts are expected and must resolve to the live
// workload. As Rust ztunnel's WorkloadByAddr: a pod beats any other kind (it cannot
// claim an address it does not hold), then a workload in the mesh (HBONE) one that is
// not; then, ahead of Rust's order, a HEALTHY workload beats an unhealthy (terminating)
// one; then the most recently applied wins, as the last inserted does in Rust ztunnel;
// the uid breaks what remains, for workloads made outside a store.
func byIPRank(a, b *Workload) bool {
	rank := func(w *Workload) [3]bool {
		return [3]bool{
			strings.Contains(w.Uid, "//Pod/"),
			w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE,
			w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY,
		}
	}
	ra, rb := rank(a), rank(b)
	for i := range ra {
		if ra[i] != rb[i] {
			return ra[i]
		}
	}
	if a.seq != b.seq {
		return a.seq > b.seq
	}
	return a.Uid < b.Uid
}

func cloneMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// WorkloadByIPOrNil returns the workload that owns ip, or nil.
func (s *Snapshot) WorkloadByIPOrNil(ip netip.Addr) *Workload { return s.byIP[ip.Unmap()] }

// AddressType is the type URL of the workload API resources a Store applies.
const AddressType = "type.googleapis.com/istio.workload.Address"

// ApplyResources decodes istio.workload.Address resources as an xDS client received them
// and applies them like Apply: all or nothing, an undecodable one named in the error.
func (s *Store) ApplyResources(upserts []*xds.Resource, removals []string) error {
	addrs := make([]*workloadapi.Address, 0, len(upserts))
	for _, r := range upserts {
		a := &workloadapi.Address{}
		if err := r.Resource.UnmarshalTo(a); err != nil {
			return fmt.Errorf("decoding address %s: %w", r.Name, err)
		}
		addrs = append(addrs, a)
	}
	return s.Apply(addrs, removals)
}
