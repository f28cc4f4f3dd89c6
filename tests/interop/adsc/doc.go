// Package adsc tests istiod-lite's delta xDS server against Istio's own delta client,
// istio.io/istio/pkg/adsc, the way a ztunnel subscribes. It is a test binary of its own
// because pkg/adsc pulls in much of istiod and takes minutes to build cold; it holds tests
// only and nothing imports it.
package adsc
