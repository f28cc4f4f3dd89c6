package xdsserver

import (
	"errors"
	"maps"
	"slices"
	"strconv"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
)

// session is the request-handling state machine of one server stream: what each type is
// subscribed to, what the client has, what was sent and not yet answered. It does no I/O
// and is owned by one goroutine.
type session struct {
	known func(typeURL string) bool
	types map[string]*typeState
	nonce uint64
}

type typeState struct {
	wildcard bool
	names    map[string]struct{}
	acked    map[string]string // what the client has ACKed (or declared on reconnect)
	inflight []sent            // responses sent and not yet ACKed or NACKed, oldest first
	rejected map[string]string // versions the client NACKed; never resent
	fresh    map[string]struct{}
	changed  map[string]struct{}
	all      bool // everything may have changed
	force    bool // answer even if the answer is empty
}

type sent struct {
	nonce    string
	upserts  map[string]string
	removals []string
}

// nack is a rejected response, for the log.
type nack struct {
	typeURL, nonce, detail string
	names                  []string
}

// work is one type to answer.
type work struct {
	typeURL string
	req     *Request
	fresh   map[string]struct{}
	force   bool
}

// maxInflight bounds the unanswered responses remembered per type.
const maxInflight = 64

var errNoTypeURL = errors.New("delta request without type_url")

func newSession(known func(string) bool) *session {
	return &session{known: known, types: map[string]*typeState{}}
}

// handle applies one request. It returns the NACK it carried, if any.
func (s *session) handle(req *discoveryv3.DeltaDiscoveryRequest) (*nack, error) {
	typeURL := req.GetTypeUrl()
	if typeURL == "" {
		return nil, errNoTypeURL
	}
	if !s.known(typeURL) {
		return nil, nil
	}
	ts, ok := s.types[typeURL]
	if !ok {
		ts = &typeState{
			names: map[string]struct{}{}, acked: map[string]string{}, rejected: map[string]string{},
			fresh: map[string]struct{}{}, changed: map[string]struct{}{},
			all: true, force: true,
			wildcard: len(req.GetResourceNamesSubscribe()) == 0,
		}
		maps.Copy(ts.acked, req.GetInitialResourceVersions())
		s.types[typeURL] = ts
	}
	var n *nack
	if nonce := req.GetResponseNonce(); nonce != "" {
		n = ts.answer(typeURL, nonce, req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	}
	for _, name := range req.GetResourceNamesSubscribe() {
		if name == xds.Wildcard {
			if !ts.wildcard {
				ts.wildcard, ts.all, ts.force = true, true, true
			}
			continue
		}
		if _, ok := ts.names[name]; !ok {
			ts.names[name] = struct{}{}
			ts.fresh[name] = struct{}{}
			ts.changed[name] = struct{}{}
			ts.force = true
		}
	}
	for _, name := range req.GetResourceNamesUnsubscribe() {
		if name == xds.Wildcard {
			ts.wildcard = false
			for have := range ts.acked {
				if _, ok := ts.names[have]; !ok {
					ts.forget(have)
				}
			}
			continue
		}
		delete(ts.names, name)
		delete(ts.fresh, name)
		if !ts.wildcard {
			ts.forget(name)
		}
	}
	return n, nil
}

// answer applies an ACK or NACK of nonce; an unknown nonce (stale, or from an earlier
// stream) is ignored.
func (ts *typeState) answer(typeURL, nonce, detail string, rejected bool) *nack {
	i := slices.IndexFunc(ts.inflight, func(x sent) bool { return x.nonce == nonce })
	if i < 0 {
		return nil
	}
	r := ts.inflight[i]
	ts.inflight = slices.Delete(ts.inflight, i, i+1)
	if rejected {
		n := &nack{typeURL: typeURL, nonce: nonce, detail: detail}
		for name, v := range r.upserts {
			ts.rejected[name] = v
			n.names = append(n.names, name)
		}
		slices.Sort(n.names)
		return n
	}
	for name, v := range r.upserts {
		ts.acked[name] = v
		delete(ts.rejected, name)
	}
	for _, name := range r.removals {
		delete(ts.acked, name)
	}
	return nil
}

// forget drops a name the client unsubscribed from: it deletes it itself.
func (ts *typeState) forget(name string) {
	delete(ts.acked, name)
	for _, r := range ts.inflight {
		delete(r.upserts, name)
	}
}

// have is what the client holds once every response in flight is applied. With nothing
// in flight it is acked itself, not a copy: callers only read it, before the session
// changes again.
func (ts *typeState) have() map[string]string {
	if len(ts.inflight) == 0 {
		return ts.acked
	}
	h := maps.Clone(ts.acked)
	for _, r := range ts.inflight {
		maps.Copy(h, r.upserts)
		for _, name := range r.removals {
			delete(h, name)
		}
	}
	return h
}

// notify records pushed changes for typeURL; names nil means everything.
func (s *session) notify(typeURL string, names map[string]struct{}, all bool) {
	ts, ok := s.types[typeURL]
	if !ok {
		return
	}
	if all {
		ts.all = true
		return
	}
	maps.Copy(ts.changed, names)
}

// next takes the pending work of one type (in type URL order), or returns false.
func (s *session) next(info *StreamInfo) (work, bool) {
	for _, typeURL := range slices.Sorted(maps.Keys(s.types)) {
		ts := s.types[typeURL]
		if !ts.force && !ts.all && len(ts.changed) == 0 {
			continue
		}
		req := &Request{
			Stream: info, TypeURL: typeURL, Wildcard: ts.wildcard,
			Names: slices.Sorted(maps.Keys(ts.names)), Have: ts.have(),
		}
		if !ts.all {
			req.Changed = slices.Sorted(maps.Keys(ts.changed))
		}
		w := work{typeURL: typeURL, req: req, fresh: ts.fresh, force: ts.force}
		ts.fresh, ts.changed, ts.all, ts.force = map[string]struct{}{}, map[string]struct{}{}, false, false
		return w, true
	}
	return work{}, false
}

// respond turns a Source's answer into the response to send, or nil when there is
// nothing to send, and records it as in flight.
func (s *session) respond(w work, d *Delta) *discoveryv3.DeltaDiscoveryResponse {
	ts, ok := s.types[w.typeURL]
	if !ok {
		return nil
	}
	have := w.req.Have
	r := sent{upserts: map[string]string{}}
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: w.typeURL}
	seen := map[string]struct{}{}
	for _, u := range d.Upserts {
		if u == nil || u.Name == "" {
			continue
		}
		if _, dup := seen[u.Name]; dup {
			continue
		}
		seen[u.Name] = struct{}{}
		if v, ok := have[u.Name]; ok && v == u.Version {
			continue
		}
		if v, ok := ts.rejected[u.Name]; ok && v == u.Version {
			continue
		}
		r.upserts[u.Name] = u.Version
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: u.Name, Version: u.Version, Resource: u.Resource})
	}
	for _, name := range d.Removals {
		if _, dup := seen[name]; dup {
			continue
		}
		seen[name] = struct{}{}
		_, has := have[name]
		_, fresh := w.fresh[name]
		if !has && !fresh {
			continue
		}
		r.removals = append(r.removals, name)
		resp.RemovedResources = append(resp.RemovedResources, name)
	}
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 && !w.force {
		return nil
	}
	s.nonce++
	r.nonce = strconv.FormatUint(s.nonce, 10)
	resp.Nonce = r.nonce
	ts.inflight = append(ts.inflight, r)
	if len(ts.inflight) > maxInflight {
		// A client that never answers: assume the oldest response was applied.
		ts.answer(w.typeURL, ts.inflight[0].nonce, "", false)
	}
	return resp
}
