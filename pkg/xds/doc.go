// Package xds implements the client side of the delta variant of Envoy's aggregated
// discovery service (envoy.service.discovery.v3.AggregatedDiscoveryService/
// DeltaAggregatedResources), the protocol istiod speaks to ztunnel: a Client that
// subscribes (wildcard, explicit, on demand), applies and ACKs/NACKs resources, and the
// vocabulary the server side shares with it (Resource, Wildcard). The server is package
// xdsserver.
//
// It is protocol only: streams, subscriptions, versions, nonces and ACK/NACK. It knows
// nothing of Kubernetes or mesh types: resources are opaque *anypb.Any values with a name
// and a version, and type URLs are plain strings. The Client encodes its two messages
// itself (wire.go) so that a data plane linking it does not link Envoy's generated protos.
package xds
