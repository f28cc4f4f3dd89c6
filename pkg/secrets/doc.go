// Package secrets manages the mesh certificates of workload identities for ztunnel and
// waypoints. For each identity it generates an ECDSA P-256 key and a CSR whose only SAN is
// the identity's SPIFFE URI, has a CA sign it, verifies the issued chain against the mesh
// roots, caches the result, rotates it at about half its lifetime (counted from its arrival
// when the CA backdated it), retries a failing CA with exponential backoff while it keeps
// serving the previous certificate until that expires, and hands certificates to
// crypto/tls.
//
// It is not a CA client: it speaks no gRPC and knows nothing of Kubernetes. It reaches the
// CA only through the Signer interface it owns (pkg/caclient implements it for Istio's
// certificate service). It does not choose identities either: the component decides which
// identities it needs (Get, Prefetch) and when they are no longer needed (Forget).
//
// Every background goroutine belongs to Manager.Run. Tests may use the in-memory CA in
// secretstest. Any package may import secrets.
package secrets
