// Package zds implements ZDS, the protocol between Istio's CNI node agent and ztunnel
// (istio.io/istio/pkg/zdsapi, "istio.workload.zds"), byte for byte as Istio speaks it: an
// AF_UNIX SOCK_SEQPACKET socket (default DefaultPath) carrying one raw protobuf per datagram.
// ztunnel connects and says ZdsHello{V1}; the node agent then replays its workloads as
// AddWorkload (with the pod's network namespace passed as exactly one SCM_RIGHTS fd) or
// KeepWorkload (no fd), then SnapshotSent, and afterwards sends AddWorkload and DelWorkload
// as pods come and go. ztunnel answers every request with one WorkloadResponse{Ack}; a
// non-empty Ack.Error is a NACK.
//
// Server is the node agent's side: it owns the set of current workloads (and a duplicate of
// each netns fd) so it can replay them to every ztunnel that connects. Client is ztunnel's
// side: it reconnects with backoff, validates each request (fd count, nsfs netns), hands it
// to a Handler and acks with the Handler's error. Client.Ready reports whether the current
// connection has delivered its snapshot, which is what ztunnel's readiness waits for.
//
// It is protocol only. It knows nothing of Kubernetes, mesh policy, eBPF or iptables, nor
// of what ztunnel does with a pod's netns: deciding which pods are enrolled, and starting
// proxies in them, is glue in the CNI node agent and in ztunnel. It is Linux only (the
// package is empty elsewhere). Any component may import it.
package zds
