// Package ambient is Istio ambient's enrollment contract: the labels and annotations that put a
// pod in the mesh or keep it out, and the rule that combines them ([Enrolled]). istiod-lite uses
// it to decide which workloads it publishes, and the CNI plugin to decide which pods it asks the
// node agent to redirect, so both always agree.
//
// It is not a Kubernetes client and takes no Kubernetes types: callers pass the label and
// annotation maps they already have, so the CNI plugin can use it without linking client-go.
package ambient

// Labels, annotations and their values, spelled as Istio spells them.
const (
	// LabelDataplaneMode selects the dataplane of a pod or of every pod in a namespace.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// DataplaneModeAmbient enrolls the pod (or the namespace's pods) in ambient mode.
	DataplaneModeAmbient = "ambient"
	// DataplaneModeNone, on a pod, opts it out of a namespace enrolled in ambient mode.
	DataplaneModeNone = "none"

	// AnnotationRedirection is set by the CNI node agent on a pod whose traffic it redirects.
	AnnotationRedirection = "ambient.istio.io/redirection"
	// RedirectionEnabled: the pod's traffic is redirected to ztunnel and ztunnel accepted it.
	RedirectionEnabled = "enabled"
	// RedirectionPending: the pod's traffic is captured but no ztunnel has accepted it yet.
	RedirectionPending = "pending"

	// AnnotationSidecarStatus is set by Istio's sidecar injector on a pod with an injected
	// sidecar; such a pod is never enrolled in ambient mode.
	AnnotationSidecarStatus = "sidecar.istio.io/status"
)

// Enrolled reports whether a pod belongs in the ambient mesh under Istio's default enablement
// selectors: the pod is labelled istio.io/dataplane-mode=ambient, or its namespace is and the pod
// is not labelled istio.io/dataplane-mode=none. Host-network pods (their network namespace is the
// node's and cannot be captured) and pods with an injected sidecar are never enrolled. Any map
// may be nil; a nil nsLabels means the namespace is unknown or unlabelled.
func Enrolled(podLabels, podAnnotations, nsLabels map[string]string, hostNetwork bool) bool {
	if hostNetwork {
		return false
	}
	if _, ok := podAnnotations[AnnotationSidecarStatus]; ok {
		return false
	}
	switch mode, labelled := podLabels[LabelDataplaneMode]; {
	case labelled && mode == DataplaneModeAmbient:
		return true
	case labelled && mode == DataplaneModeNone:
		return false
	}
	return nsLabels[LabelDataplaneMode] == DataplaneModeAmbient
}
