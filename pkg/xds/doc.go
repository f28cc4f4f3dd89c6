// Package xds implements the delta variant of Envoy's aggregated discovery service
// (envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources), the
// protocol istiod speaks to ztunnel: a Server that streams resources produced by
// caller-supplied Sources, and a Client that subscribes, applies and ACKs/NACKs them.
//
// It is protocol only: streams, subscriptions (wildcard, explicit, on demand), versions,
// nonces and ACK/NACK. It knows nothing of Kubernetes or mesh types: resources are opaque
// *anypb.Any values with a name and a version, and type URLs are plain strings. Deciding
// what a proxy may see, and building the resources, is glue in the component that owns
// the Server (istiod-lite) or the Client (ztunnel, waypoint).
package xds
