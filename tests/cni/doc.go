// Package cni tests the mesh's enrollment end to end, as a node runs it: the real CNI chain
// (the reference bridge and host-local plugins, then ours) driven through libcni the way a
// container runtime does, inside a network namespace standing for the node; the node agent,
// ztunnel in in-pod mode and istiod-lite as real processes; the local control plane for pods
// and namespaces. It holds tests only; nothing imports it.
package cni
