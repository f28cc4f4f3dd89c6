// Package integration runs the mesh's components as real processes against the local
// control plane (tests/cluster): istiod-lite's CA today, then xDS, ztunnel and waypoint.
// It holds tests only; its binaries are built from the repository once per test run.
package integration
