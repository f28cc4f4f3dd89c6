package xdsserver

import (
	"slices"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
)

func TestDiff(t *testing.T) {
	all := newSnapshot("a", "1", "b", "2", "c", "1").res
	tests := []struct {
		name         string
		req          Request
		wantUpserts  []string
		wantRemovals []string
	}{
		{"wildcard, empty client", Request{Wildcard: true}, []string{"a@1", "b@2", "c@1"}, nil},
		{"wildcard, reconnect", Request{Wildcard: true, Have: map[string]string{"a": "1", "b": "1", "gone": "1"}},
			[]string{"b@2", "c@1"}, []string{"gone"}},
		{"explicit", Request{Names: []string{"a", "missing"}}, []string{"a@1"}, []string{"missing"}},
		{"explicit, has it", Request{Names: []string{"a"}, Have: map[string]string{"a": "1"}}, nil, nil},
		// With Changed, only those names are looked at: "c" is missing on the client but
		// was not pushed, and "gone" is not reported removed either.
		{"changed, wildcard", Request{Wildcard: true, Changed: []string{"a", "b", "x"},
			Have: map[string]string{"a": "1", "b": "1", "x": "1", "gone": "1"}}, []string{"b@2"}, []string{"x"}},
		{"changed, new name", Request{Wildcard: true, Changed: []string{"c"}}, []string{"c@1"}, nil},
		{"changed, explicit not subscribed", Request{Names: []string{"a"}, Changed: []string{"b"}}, nil, nil},
		{"changed, explicit missing", Request{Names: []string{"missing"}, Changed: []string{"missing"}}, nil, []string{"missing"}},
		{"changed, removed unknown to client", Request{Wildcard: true, Changed: []string{"y"}}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Diff(all, &tt.req)
			var ups []string
			for _, u := range d.Upserts {
				ups = append(ups, u.Name+"@"+u.Version)
			}
			if !slices.Equal(ups, tt.wantUpserts) || !slices.Equal(d.Removals, tt.wantRemovals) {
				t.Errorf("Diff = %v -%v, want %v -%v", ups, d.Removals, tt.wantUpserts, tt.wantRemovals)
			}
		})
	}
}

// TestSessionRequests drives the state machine directly, request by request.
func TestSessionRequests(t *testing.T) {
	snap := newSnapshot("a", "1", "b", "1")
	s := newSession(func(t string) bool { return t == typeA })
	step := func(req *discoveryv3.DeltaDiscoveryRequest) []string {
		t.Helper()
		if _, err := s.handle(req); err != nil {
			t.Fatal(err)
		}
		var out []string
		for {
			w, ok := s.next(&StreamInfo{})
			if !ok {
				return out
			}
			d, _ := snap.Generate(t.Context(), w.req)
			if resp := s.respond(w, d); resp != nil {
				var parts []string
				for _, r := range resp.GetResources() {
					parts = append(parts, r.GetName()+"@"+r.GetVersion())
				}
				for _, r := range resp.GetRemovedResources() {
					parts = append(parts, "-"+r)
				}
				out = append(out, resp.GetNonce()+":"+strings.Join(parts, ","))
			}
		}
	}
	// ztunnel on-demand: subscribe to nothing; the server still answers.
	if got := step(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA,
		ResourceNamesSubscribe: []string{"*"}, ResourceNamesUnsubscribe: []string{"*"}}); !slices.Equal(got, []string{"1:"}) {
		t.Fatalf("on-demand initial: %v", got)
	}
	if got := step(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA, ResponseNonce: "1",
		ResourceNamesSubscribe: []string{"a", "x"}}); !slices.Equal(got, []string{"2:a@1,-x"}) {
		t.Fatalf("subscribe a,x: %v", got)
	}
	// NACK, then a push of everything: the rejected version is not resent.
	if got := step(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA, ResponseNonce: "2",
		ErrorDetail: &statuspb.Status{Message: "bad"}}); got != nil {
		t.Fatalf("NACK produced %v", got)
	}
	s.notify(typeA, nil, true)
	if got := step(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA}); got != nil {
		t.Fatalf("push after NACK produced %v", got)
	}
	// Unknown types are ignored; a missing type URL is an error.
	if got := step(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeB}); got != nil {
		t.Fatalf("unknown type produced %v", got)
	}
	if _, err := s.handle(&discoveryv3.DeltaDiscoveryRequest{}); err == nil {
		t.Fatal("no error for a request without type_url")
	}
}

// FuzzSession feeds arbitrary request sequences to the state machine: it must not panic,
// and every response must carry a nonce.
func FuzzSession(f *testing.F) {
	f.Add([]byte("\x00\x01a\x02*\x03\x04b\x05"))
	f.Add([]byte("\x01*\x02*\x06\x00\x07\x03"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, ops []byte) {
		snap := newSnapshot("a", "1", "b", "1", "c", "1")
		s := newSession(func(u string) bool { return u == typeA || u == typeB })
		names := []string{"a", "b", "c", "x", "*", ""}
		types := []string{typeA, typeB, "other"}
		var nonces []string
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeA}
		pick := func(i int, xs []string) string { return xs[i%len(xs)] }
		for i := 0; i < len(ops); i++ {
			arg := 0
			if i+1 < len(ops) {
				arg = int(ops[i+1])
			}
			switch ops[i] % 9 {
			case 0:
				req.TypeUrl = pick(arg, types)
			case 1:
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, pick(arg, names))
			case 2:
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, pick(arg, names))
			case 3:
				if len(nonces) > 0 {
					req.ResponseNonce = nonces[arg%len(nonces)]
				} else {
					req.ResponseNonce = "bogus"
				}
			case 4:
				req.ErrorDetail = &statuspb.Status{Code: int32(arg), Message: "nack"}
			case 5:
				if req.InitialResourceVersions == nil {
					req.InitialResourceVersions = map[string]string{}
				}
				req.InitialResourceVersions[pick(arg, names)] = pick(arg/7, []string{"1", "2", ""})
			case 6:
				snap.set(pick(arg, names), pick(arg/7, []string{"1", "2", "3"}))
				s.notify(pick(arg/3, types), map[string]struct{}{pick(arg, names): {}}, arg%2 == 0)
			case 7:
				snap.del(pick(arg, names))
			case 8:
				_, _ = s.handle(req)
				for {
					w, ok := s.next(&StreamInfo{})
					if !ok {
						break
					}
					d, _ := snap.Generate(t.Context(), w.req)
					if resp := s.respond(w, d); resp != nil {
						if resp.GetNonce() == "" {
							t.Fatal("response without nonce")
						}
						nonces = append(nonces, resp.GetNonce())
					}
				}
				req = &discoveryv3.DeltaDiscoveryRequest{TypeUrl: req.TypeUrl}
			}
			i++
		}
	})
}
