package l7

// backendRefs → cluster names, as istiod's buildDestination does for mesh routes (no
// ReferenceGrant check: istiod enforces none for Service parents).

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// invalidDomain is the reserved top-level domain (RFC 2606) under which backends of an
// unsupported kind are named, so their cluster is well formed and never resolves.
const invalidDomain = "invalid"

// ClusterName is Istio's outbound cluster name for a Service port.
func ClusterName(hostname string, port int32) string {
	return fmt.Sprintf("outbound|%d||%s", port, hostname)
}

// resolveBackend returns the cluster of a backendRef of a route in namespace ns, and an
// issue if it does not resolve: a Service that does not exist (BackendNotFound, named by
// the hostname it would have) or another kind (InvalidKind, named under .invalid). The
// waypoint answers 500 for a cluster it cannot find (cluster_not_found_response_code).
func resolveBackend(in Input, ref gatewayv1.BackendObjectReference, ns string) (string, *issue) {
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	var port int32
	if ref.Port != nil {
		port = int32(*ref.Port)
	}
	group, kind := "", "Service"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	if (group != "" && group != "core") || kind != "Service" {
		cluster := ClusterName(fmt.Sprintf("%s.%s.%s.%s", ref.Name, ns, strings.ToLower(kind), invalidDomain), port)
		i := refIssue(gatewayv1.RouteReasonInvalidKind, "backendRef %s/%s: unsupported group %q kind %q (only Services are)", ns, ref.Name, group, kind)
		return cluster, &i
	}
	svc, ok := in.lookup(types.NamespacedName{Namespace: ns, Name: string(ref.Name)})
	if !ok {
		cluster := ClusterName(fmt.Sprintf("%s.%s.svc.%s", ref.Name, ns, in.domainSuffix()), port)
		i := refIssue(gatewayv1.RouteReasonBackendNotFound, "backend Service %s/%s not found", ns, ref.Name)
		return cluster, &i
	}
	if ref.Port == nil {
		// The CRD requires it; without a port there is no cluster to name.
		i := refIssue(gatewayv1.RouteReasonBackendNotFound, "backendRef %s/%s: port is required for a Service", ns, ref.Name)
		return "", &i
	}
	return ClusterName(svc.Hostname, port), nil
}
