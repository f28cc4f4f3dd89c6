// Package proxy is ztunnel's data path: the outbound listener (:15001) that sends a
// captured connection over HBONE (or straight through, for destinations outside the mesh),
// the inbound HBONE listener (:15008) that hands authorized streams to the local workload,
// and the inbound plaintext listener (:15006) for PERMISSIVE traffic. The same three
// serve either the node (node-level mode) or one pod each (in-pod mode, NewPod): a pod's
// listener set has its own upstream dialer (from inside the pod's network namespace), its
// own HBONE pool and server, and its own workload as the source of its outbound traffic.
//
// Decisions (where a connection goes, whether it is allowed) are pure functions over a
// state snapshot and are tested without sockets; the listeners are thin. The HBONE wire
// protocol itself is pkg/hbone's, certificates come from pkg/secrets.
package proxy
