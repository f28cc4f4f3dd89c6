// Package interop tests Ambient Lite's wire protocols against Istio's own Go
// implementations, imported as a library: HBONE (pkg/hbone) against Istio's
// istio.io/istio/pkg/hbone Dialer and Server in both directions, and ZDS (pkg/zds) against
// Istio's zdsapi wire code for the node agent and ztunnel sides. Istio's delta xDS client
// has its own test binary, tests/interop/adsc. It holds tests only; no production code
// imports it.
package interop
