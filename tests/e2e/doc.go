// Package e2e is the mesh's end-to-end suite: one 2-node local cluster (tests/cluster) for
// the whole package, the images loaded (tests/images), and the mesh installed by its four
// Helm charts, as a user installs it. The tests enroll running pods with the namespace label
// and check what users rely on: live enrollment and unenrollment, no plaintext on the link
// between nodes, L4 AuthorizationPolicy and PeerAuthentication STRICT, Service balancing
// across nodes, DNS, kubelet probes, rollout restarts of ztunnel and of the node agent (and
// what a long-lived connection sees), helm upgrade, and helm uninstall leaving the pods
// running and the nodes clean. The uninstall test runs last (file order) and leaves the mesh
// uninstalled.
//
// It needs root, the pinned tools (`make setup`), containerd, tcpdump and bpftool: without
// them it skips on a developer machine and fails when CI=true. E2E_CLUSTER_DIR=DIR runs it
// against a cluster already started with `make cluster-up NODES=2` (for iterating; the suite
// then installs the charts there and leaves the cluster up). It holds tests only; the
// kubectl and helm driver it shares with `make demo` is tests/e2e/mesh.
package e2e
