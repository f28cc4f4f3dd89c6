package caserver

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// Caller is who presented the bearer token, as the apiserver's TokenReview said.
type Caller struct {
	Namespace, ServiceAccount string
	// PodName, PodUID and NodeName are set for pod-bound tokens (projected ServiceAccount
	// tokens); NodeName only when the apiserver records node info in tokens.
	PodName, PodUID, NodeName string
}

func (c Caller) String() string { return c.Namespace + "/" + c.ServiceAccount }

// Pod is what the CA needs to know about a pod.
type Pod struct {
	UID, ServiceAccount, NodeName string
}

// Pods answers the CA's questions about running pods; an informer-backed index implements it.
type Pods interface {
	// Pod returns the pod namespace/name, if it exists.
	Pod(namespace, name string) (Pod, bool)
	// HasServiceAccountOnNode reports whether a non-terminal pod running as
	// namespace/serviceAccount is bound to node.
	HasServiceAccountOnNode(node, namespace, serviceAccount string) bool
}

// Account names a ServiceAccount as "namespace/name".
type Account struct{ Namespace, Name string }

// ParseAccounts parses a comma-separated list of "namespace/name".
func ParseAccounts(s string) ([]Account, error) {
	var out []Account
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ns, name, ok := strings.Cut(f, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("trusted node account %q: want namespace/serviceaccount", f)
		}
		out = append(out, Account{ns, name})
	}
	return out, nil
}

// denied is a refusal with a message for the caller (PermissionDenied).
type denied struct{ msg string }

func (d denied) Error() string { return d.msg }

func deny(format string, args ...any) error { return denied{fmt.Sprintf(format, args...)} }

// authorize decides whether caller may obtain a certificate for requested. Without
// impersonation a caller gets only its own identity; with it, the caller must be a trusted
// node proxy whose pod-bound token names a live pod on a node where a pod of the requested
// ServiceAccount is bound (Istio's node authorizer rules).
func authorize(caller Caller, requested identity.ID, impersonating bool, trustDomain string, trusted []Account, pods Pods) error {
	if requested.TrustDomain().Name() != trustDomain {
		return deny("identity %s is outside the mesh trust domain %q", requested, trustDomain)
	}
	if !impersonating {
		if requested.Namespace() != caller.Namespace || requested.ServiceAccount() != caller.ServiceAccount {
			return deny("the token of ServiceAccount %s cannot obtain a certificate for %s: a workload may only request its own identity", caller, requested)
		}
		return nil
	}
	if !slices.Contains(trusted, Account{caller.Namespace, caller.ServiceAccount}) {
		return deny("ServiceAccount %s may not request other identities (ImpersonatedIdentity): it is not a trusted node account", caller)
	}
	if caller.PodName == "" || caller.PodUID == "" {
		return deny("impersonation needs a pod-bound token (a projected ServiceAccount token); the token of %s names no pod", caller)
	}
	pod, ok := pods.Pod(caller.Namespace, caller.PodName)
	if !ok || pod.UID != caller.PodUID {
		return deny("the pod %s/%s (uid %s) named by the token no longer exists", caller.Namespace, caller.PodName, caller.PodUID)
	}
	if pod.ServiceAccount != caller.ServiceAccount {
		return deny("the pod %s/%s runs as %s, not as the token's ServiceAccount %s", caller.Namespace, caller.PodName, pod.ServiceAccount, caller.ServiceAccount)
	}
	if pod.NodeName == "" {
		return deny("the pod %s/%s is not bound to a node", caller.Namespace, caller.PodName)
	}
	if caller.NodeName != "" && caller.NodeName != pod.NodeName {
		return deny("the token names node %s but the pod %s/%s is on node %s", caller.NodeName, caller.Namespace, caller.PodName, pod.NodeName)
	}
	if !pods.HasServiceAccountOnNode(pod.NodeName, requested.Namespace(), requested.ServiceAccount()) {
		return deny("no pod running as %s/%s is on node %s, so its node proxy %s may not obtain %s",
			requested.Namespace(), requested.ServiceAccount(), pod.NodeName, caller, requested)
	}
	return nil
}
