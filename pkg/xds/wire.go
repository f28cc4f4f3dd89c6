package xds

// The two messages a Client exchanges, envoy.service.discovery.v3.DeltaDiscoveryRequest
// and DeltaDiscoveryResponse, encoded with protowire against their field numbers. The
// Client uses no generated Envoy code: linking go-control-plane's Envoy protos would add
// about 0.9 MB of code and descriptors to ztunnel, nearly all of it resident once their
// init functions run, for the one message type it sends. The server side (xdsserver)
// uses the generated types; tests check both against each other field by field.

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Node identifies the client in the first request of every stream
// (envoy.config.core.v3.Node; only the fields Istio's data plane sets).
type Node struct {
	ID       string
	Metadata *structpb.Struct
}

// deltaRequest is envoy.service.discovery.v3.DeltaDiscoveryRequest, less the resource
// locators (xdstp, which neither Istio nor this client uses).
type deltaRequest struct {
	node          *Node
	typeURL       string
	subscribe     []string
	unsubscribe   []string
	initial       map[string]string // initial_resource_versions
	responseNonce string
	errorDetail   *rpcStatus
}

// rpcStatus is google.rpc.Status without details.
type rpcStatus struct {
	code    int32
	message string
}

// Field numbers of the encoded messages.
const (
	reqNode, reqTypeURL, reqSubscribe, reqUnsubscribe, reqInitial, reqNonce, reqError = 1, 2, 3, 4, 5, 6, 7
	nodeID, nodeMetadata                                                              = 1, 3
	statusCode, statusMessage                                                         = 1, 2
	mapKey, mapValue                                                                  = 1, 2

	respSystemVersion, respResources, respTypeURL, respNonce, respRemoved = 1, 2, 4, 5, 6
	resVersion, resResource, resName                                      = 1, 2, 3
	anyTypeURL, anyValue                                                  = 1, 2
)

func (r *deltaRequest) marshal() ([]byte, error) {
	var b []byte
	if r.node != nil {
		n, err := r.node.marshal()
		if err != nil {
			return nil, err
		}
		b = protowire.AppendTag(b, reqNode, protowire.BytesType)
		b = protowire.AppendBytes(b, n)
	}
	b = appendString(b, reqTypeURL, r.typeURL)
	for _, s := range r.subscribe {
		b = appendRepeated(b, reqSubscribe, s)
	}
	for _, s := range r.unsubscribe {
		b = appendRepeated(b, reqUnsubscribe, s)
	}
	for _, k := range slices.Sorted(maps.Keys(r.initial)) {
		// A map entry carries its key and value even when empty, as generated code writes it.
		e := appendRepeated(nil, mapKey, k)
		e = appendRepeated(e, mapValue, r.initial[k])
		b = protowire.AppendTag(b, reqInitial, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	b = appendString(b, reqNonce, r.responseNonce)
	if r.errorDetail != nil {
		var e []byte
		if r.errorDetail.code != 0 {
			e = protowire.AppendTag(e, statusCode, protowire.VarintType)
			e = protowire.AppendVarint(e, uint64(int64(r.errorDetail.code))) // int32: sign-extended
		}
		e = appendString(e, statusMessage, r.errorDetail.message)
		b = protowire.AppendTag(b, reqError, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	return b, nil
}

func (n *Node) marshal() ([]byte, error) {
	b := appendString(nil, nodeID, n.ID)
	if n.Metadata != nil {
		m, err := proto.MarshalOptions{Deterministic: true}.Marshal(n.Metadata)
		if err != nil {
			return nil, fmt.Errorf("encoding node metadata: %w", err)
		}
		b = protowire.AppendTag(b, nodeMetadata, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	return b, nil
}

// appendString appends a singular string field, omitted when empty (proto3).
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return appendRepeated(b, num, s)
}

// appendRepeated appends one element of a repeated string field (empty ones included).
func appendRepeated(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// deltaResponse is what the Client reads of envoy.service.discovery.v3.DeltaDiscoveryResponse;
// other fields (removed_resource_names, control_plane, resource_errors, and a resource's
// aliases, ttl, cache control and metadata) are skipped as their wire type allows.
type deltaResponse struct {
	systemVersion string
	typeURL       string
	nonce         string
	resources     []*Resource
	removed       []string
}

func (r *deltaResponse) unmarshal(b []byte) error {
	*r = deltaResponse{}
	return eachField(b, func(num protowire.Number, v []byte) error {
		var err error
		switch num {
		case respSystemVersion:
			r.systemVersion, err = stringField(v)
		case respTypeURL:
			r.typeURL, err = stringField(v)
		case respNonce:
			r.nonce, err = stringField(v)
		case respRemoved:
			var s string
			if s, err = stringField(v); err == nil {
				r.removed = append(r.removed, s)
			}
		case respResources:
			res := &Resource{}
			if err = res.unmarshal(v); err == nil {
				r.resources = append(r.resources, res)
			}
		}
		if err != nil {
			return fmt.Errorf("DeltaDiscoveryResponse field %d: %w", num, err)
		}
		return nil
	})
}

func (r *Resource) unmarshal(b []byte) error {
	return eachField(b, func(num protowire.Number, v []byte) error {
		var err error
		switch num {
		case resName:
			r.Name, err = stringField(v)
		case resVersion:
			r.Version, err = stringField(v)
		case resResource:
			if r.Resource == nil { // a repeated message field merges into the first
				r.Resource = &anypb.Any{}
			}
			err = unmarshalAny(r.Resource, v)
		}
		if err != nil {
			return fmt.Errorf("resource field %d: %w", num, err)
		}
		return nil
	})
}

func unmarshalAny(a *anypb.Any, b []byte) error {
	return eachField(b, func(num protowire.Number, v []byte) error {
		var err error
		switch num {
		case anyTypeURL:
			a.TypeUrl, err = stringField(v)
		case anyValue:
			a.Value = bytes.Clone(v) // b is gRPC's buffer, reused after decoding
		}
		if err != nil {
			return fmt.Errorf("payload (Any) field %d: %w", num, err)
		}
		return nil
	})
}

// eachField calls f with the content of every length-delimited field of the message b,
// in order. Every field this package reads is length-delimited; a field of another wire
// type is skipped, as proto.Unmarshal keeps a known field with an unexpected wire type
// as an unknown one. Malformed input is an error, as in proto.Unmarshal.
func eachField(b []byte, f func(num protowire.Number, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("reading tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("reading field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		if err := f(num, v); err != nil {
			return err
		}
	}
	return nil
}

// stringField is a proto3 string: valid UTF-8.
func stringField(v []byte) (string, error) {
	if !utf8.Valid(v) {
		return "", errors.New("string is not valid UTF-8")
	}
	return string(v), nil
}

// codec is the gRPC codec of the Client's stream. It names itself "proto" (the message
// is protobuf: content-type application/grpc+proto, as every gRPC server expects).
type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) ([]byte, error) {
	r, ok := v.(*deltaRequest)
	if !ok {
		return nil, fmt.Errorf("xds codec: cannot encode %T", v)
	}
	return r.marshal()
}

func (codec) Unmarshal(b []byte, v any) error {
	r, ok := v.(*deltaResponse)
	if !ok {
		return fmt.Errorf("xds codec: cannot decode into %T", v)
	}
	return r.unmarshal(b)
}
