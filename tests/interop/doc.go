// Package interop tests Ambient Lite's wire protocols against Istio's own Go
// implementations, imported as a library: today HBONE (pkg/hbone) against Istio's
// istio.io/istio/pkg/hbone Dialer and Server, in both directions. It holds tests only; no
// production code imports it.
package interop
