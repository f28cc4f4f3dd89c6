// Package charts embeds the CustomResourceDefinitions the mesh relies on, so Go code (the
// local control plane, tests) installs exactly what the Helm charts ship.
//
// The manifests are generated, never edited: `go generate ./charts` copies them from the
// istio.io/api and sigs.k8s.io/gateway-api modules at the versions go.mod requires. The
// Helm charts themselves are plain files beside this one and contain no Go.
package charts

import "embed"

//go:generate go run ./gen

// CRDs holds the CRD manifests, one file per group and upstream file:
//   - base/crds/: Istio's security.istio.io CRDs (AuthorizationPolicy, PeerAuthentication,
//     RequestAuthentication) and networking.istio.io CRDs, which the base chart installs;
//   - base/files/gateway-api/: Gateway API's standard channel, installed by the cluster
//     operator (or `make demo`, or the base chart with gatewayAPI.enabled) before the
//     mesh, as with Istio.
//
//go:embed base/crds/*.yaml base/files/gateway-api/*.yaml
var CRDs embed.FS
