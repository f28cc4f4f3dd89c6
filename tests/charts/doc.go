// Package charts tests the Helm charts in charts/ (base, istiod-lite, cni, ztunnel): `helm
// lint --strict`, `helm template` goldens (testdata/; -update rewrites them), `kubectl apply
// --server-side --dry-run=server` of the rendered manifests against the local control plane
// (tests/cluster), and that each chart's README lists every value. It holds tests only and
// does not install the charts on nodes or run the mesh (that is the e2e suite's job).
//
// helm and kubectl are the pinned tools in .bin (tools/build.sh); without them the tests skip
// on a developer machine and fail in CI.
package charts
