package xds

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/google/go-cmp/cmp"
)

// The request encoder against Envoy's generated type: what the server decodes.
func TestRequestEncodingMatchesEnvoy(t *testing.T) {
	meta, err := structpb.NewStruct(map[string]any{"NAME": "ztunnel-x", "NODE_NAME": "n1", "INSTANCE_IPS": "10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		in   *deltaRequest
		want *discoveryv3.DeltaDiscoveryRequest
	}{
		{"empty", &deltaRequest{}, &discoveryv3.DeltaDiscoveryRequest{}},
		{"first request with node and versions",
			&deltaRequest{node: &Node{ID: "ztunnel~10.0.0.1~p.ns~ns.svc.cluster.local", Metadata: meta}, typeURL: "type.googleapis.com/istio.workload.Address",
				subscribe: []string{"*", "a"}, initial: map[string]string{"b": "2", "a": "1", "": ""}},
			&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~10.0.0.1~p.ns~ns.svc.cluster.local", Metadata: meta},
				TypeUrl: "type.googleapis.com/istio.workload.Address", ResourceNamesSubscribe: []string{"*", "a"},
				InitialResourceVersions: map[string]string{"a": "1", "b": "2", "": ""}}},
		{"node without metadata", &deltaRequest{node: &Node{}}, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{}}},
		{"empty explicit subscription", &deltaRequest{typeURL: "t", subscribe: []string{"*"}, unsubscribe: []string{"*"}},
			&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", ResourceNamesSubscribe: []string{"*"}, ResourceNamesUnsubscribe: []string{"*"}}},
		{"empty names kept", &deltaRequest{subscribe: []string{""}, unsubscribe: []string{"", "x"}},
			&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{""}, ResourceNamesUnsubscribe: []string{"", "x"}}},
		{"ACK", &deltaRequest{typeURL: "t", responseNonce: "7"}, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", ResponseNonce: "7"}},
		{"NACK", &deltaRequest{typeURL: "t", responseNonce: "8", errorDetail: &rpcStatus{code: 3, message: "bad workload"}},
			&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", ResponseNonce: "8", ErrorDetail: &statuspb.Status{Code: 3, Message: "bad workload"}}},
		{"negative code", &deltaRequest{errorDetail: &rpcStatus{code: -1}}, &discoveryv3.DeltaDiscoveryRequest{ErrorDetail: &statuspb.Status{Code: -1}}},
		{"empty status", &deltaRequest{errorDetail: &rpcStatus{}}, &discoveryv3.DeltaDiscoveryRequest{ErrorDetail: &statuspb.Status{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.in.marshal()
			if err != nil {
				t.Fatal(err)
			}
			got := &discoveryv3.DeltaDiscoveryRequest{}
			if err := proto.Unmarshal(b, got); err != nil {
				t.Fatalf("Envoy's type does not decode it: %v", err)
			}
			if d := cmp.Diff(tc.want, got, protocmp.Transform()); d != "" {
				t.Errorf("decoded (-want +got):\n%s", d)
			}
			if len(got.ProtoReflect().GetUnknown()) != 0 {
				t.Errorf("unknown fields %x", got.ProtoReflect().GetUnknown())
			}
			// Deterministic, as the generated encoder with Deterministic set.
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != string(want) {
				t.Errorf("bytes differ from Envoy's deterministic encoding:\n got %x\nwant %x", b, want)
			}
		})
	}
}

// The response decoder against Envoy's generated type: what a server sends, including
// fields the client skips.
func TestResponseDecodingMatchesEnvoy(t *testing.T) {
	payload, err := anypb.New(wrapperspb.String("workload"))
	if err != nil {
		t.Fatal(err)
	}
	full := &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: "v9",
		TypeUrl:           "type.googleapis.com/istio.workload.Address",
		Nonce:             "12",
		Resources: []*discoveryv3.Resource{
			{Name: "a", Version: "1", Resource: payload, Aliases: []string{"x"}, Ttl: durationpb.New(5e9),
				CacheControl: &discoveryv3.Resource_CacheControl{DoNotCache: true}, ResourceName: &discoveryv3.ResourceName{Name: "a"},
				Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"m": {}}}},
			{Name: "b"}, // no version, no payload
			{Name: "c", Version: "3", Resource: &anypb.Any{TypeUrl: "t"}},
		},
		RemovedResources:     []string{"gone", ""},
		RemovedResourceNames: []*discoveryv3.ResourceName{{Name: "gone"}},
		ControlPlane:         &corev3.ControlPlane{Identifier: "istiod-lite"},
		ResourceErrors:       []*discoveryv3.ResourceError{{ResourceName: &discoveryv3.ResourceName{Name: "z"}, ErrorDetail: &statuspb.Status{Code: 5}}},
	}
	for _, tc := range []struct {
		name string
		in   *discoveryv3.DeltaDiscoveryResponse
	}{
		{"empty", &discoveryv3.DeltaDiscoveryResponse{}},
		{"every field", full},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			var got deltaResponse
			if err := got.unmarshal(b); err != nil {
				t.Fatal(err)
			}
			checkResponse(t, tc.in, &got)
		})
	}
}

// checkResponse compares what the client decoded with what Envoy's type decoded.
func checkResponse(t *testing.T, want *discoveryv3.DeltaDiscoveryResponse, got *deltaResponse) {
	t.Helper()
	if got.systemVersion != want.GetSystemVersionInfo() || got.typeURL != want.GetTypeUrl() || got.nonce != want.GetNonce() {
		t.Errorf("header fields %q %q %q, want %q %q %q", got.systemVersion, got.typeURL, got.nonce,
			want.GetSystemVersionInfo(), want.GetTypeUrl(), want.GetNonce())
	}
	if !slices.Equal(got.removed, want.GetRemovedResources()) {
		t.Errorf("removed %q, want %q", got.removed, want.GetRemovedResources())
	}
	if len(got.resources) != len(want.GetResources()) {
		t.Fatalf("%d resources, want %d", len(got.resources), len(want.GetResources()))
	}
	for i, w := range want.GetResources() {
		g := got.resources[i]
		// The payload's own unknown fields are not kept (an Any has none worth keeping).
		samePayload := (g.Resource == nil) == (w.GetResource() == nil) &&
			g.Resource.GetTypeUrl() == w.GetResource().GetTypeUrl() && string(g.Resource.GetValue()) == string(w.GetResource().GetValue())
		if g.Name != w.GetName() || g.Version != w.GetVersion() || !samePayload {
			t.Errorf("resource %d = %v, want name %q version %q payload %v", i, g, w.GetName(), w.GetVersion(), w.GetResource())
		}
	}
}

func TestResponseDecodingRejectsMalformed(t *testing.T) {
	valid, err := proto.Marshal(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: "t", Resources: []*discoveryv3.Resource{{Name: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"truncated", "", valid[:len(valid)-1]},
		{"bad tag", "reading tag", []byte{0x80}},
		{"invalid UTF-8 nonce", "not valid UTF-8", protowire.AppendBytes(tag(respNonce, protowire.BytesType), []byte{0xff})},
		{"invalid UTF-8 resource name", "resource field 3", protowire.AppendBytes(tag(respResources, protowire.BytesType),
			protowire.AppendBytes(tag(resName, protowire.BytesType), []byte{0xc0}))},
		{"truncated payload", "resource field 2: reading field 2", protowire.AppendBytes(tag(respResources, protowire.BytesType),
			protowire.AppendBytes(tag(resResource, protowire.BytesType), tag(anyValue, protowire.BytesType)))},
		{"lone end group", "", tag(20, protowire.EndGroupType)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r deltaResponse
			err := r.unmarshal(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
			if proto.Unmarshal(tc.b, &discoveryv3.DeltaDiscoveryResponse{}) == nil {
				t.Error("Envoy's type accepts it: the case tests nothing")
			}
		})
	}
}

// Input the generated encoder does not write, decoded as Envoy's type decodes it: a known
// field with another wire type is skipped (kept as unknown there), a repeated occurrence of
// a message field merges into the first.
func TestResponseDecodingOddInput(t *testing.T) {
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	wrongTypes := protowire.AppendVarint(tag(respTypeURL, protowire.VarintType), 1)
	wrongTypes = protowire.AppendFixed32(append(wrongTypes, tag(respResources, protowire.Fixed32Type)...), 1)
	wrongTypes = protowire.AppendString(append(wrongTypes, tag(respNonce, protowire.BytesType)...), "n")
	first, _ := proto.Marshal(&discoveryv3.Resource{Name: "a", Resource: &anypb.Any{TypeUrl: "t1", Value: []byte("v")}})
	second, _ := proto.Marshal(&discoveryv3.Resource{Resource: &anypb.Any{TypeUrl: "t2"}})
	merged := protowire.AppendBytes(tag(respResources, protowire.BytesType), append(first, second...))
	for name, b := range map[string][]byte{"wrong wire types": wrongTypes, "repeated payload": merged} {
		t.Run(name, func(t *testing.T) {
			want := &discoveryv3.DeltaDiscoveryResponse{}
			if err := proto.Unmarshal(b, want); err != nil {
				t.Fatal(err)
			}
			var got deltaResponse
			if err := got.unmarshal(b); err != nil {
				t.Fatal(err)
			}
			checkResponse(t, want, &got)
		})
	}
}

func TestCodecRefusesOtherTypes(t *testing.T) {
	if _, err := (codec{}).Marshal(&deltaResponse{}); err == nil {
		t.Error("encoded a response")
	}
	if err := (codec{}).Unmarshal(nil, &deltaRequest{}); err == nil {
		t.Error("decoded into a request")
	}
	var r deltaResponse
	if err := (codec{}).Unmarshal(nil, &r); err != nil {
		t.Errorf("empty message: %v", err)
	}
}

// FuzzResponseDecoding: the decoder never panics on bytes from the network, and whatever
// Envoy's generated type accepts it decodes to the same fields. (It may accept more:
// fields it skips are not validated inside.)
func FuzzResponseDecoding(f *testing.F) {
	payload, _ := anypb.New(wrapperspb.String("w"))
	for _, m := range []*discoveryv3.DeltaDiscoveryResponse{
		{},
		{TypeUrl: "type.googleapis.com/istio.workload.Address", Nonce: "1", Resources: []*discoveryv3.Resource{{Name: "a", Version: "1", Resource: payload}}},
		{RemovedResources: []string{"a", "b"}, SystemVersionInfo: "v", ControlPlane: &corev3.ControlPlane{Identifier: "x"}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var got deltaResponse
		err := got.unmarshal(b)
		want := &discoveryv3.DeltaDiscoveryResponse{}
		if proto.Unmarshal(b, want) != nil {
			return
		}
		if err != nil {
			t.Fatalf("Envoy's type accepts what the client rejects: %v", err)
		}
		checkResponse(t, want, &got)
	})
}

// FuzzRequestEncoding: whatever the client sends, Envoy's generated type decodes to the
// same fields.
func FuzzRequestEncoding(f *testing.F) {
	f.Add("id", "t", "a\x00b", "n", int32(3), "msg", "k", "v")
	f.Fuzz(func(t *testing.T, id, typeURL, names, nonce string, code int32, msg, k, v string) {
		for _, s := range []string{id, typeURL, names, nonce, msg, k, v} {
			if !utf8.ValidString(s) {
				return // proto3 strings; the client only sends valid UTF-8
			}
		}
		in := &deltaRequest{node: &Node{ID: id}, typeURL: typeURL, subscribe: strings.Split(names, "\x00"),
			initial: map[string]string{k: v}, responseNonce: nonce, errorDetail: &rpcStatus{code: code, message: msg}}
		b, err := in.marshal()
		if err != nil {
			t.Fatal(err)
		}
		got := &discoveryv3.DeltaDiscoveryRequest{}
		if err := proto.Unmarshal(b, got); err != nil {
			t.Fatal(err)
		}
		want := &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: typeURL, ResourceNamesSubscribe: in.subscribe,
			InitialResourceVersions: in.initial, ResponseNonce: nonce, ErrorDetail: &statuspb.Status{Code: code, Message: msg}}
		if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
			t.Errorf("(-want +got):\n%s", d)
		}
	})
}
