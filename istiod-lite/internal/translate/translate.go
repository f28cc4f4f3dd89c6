// Package translate turns Kubernetes Namespaces, Pods, Services, Nodes (locality),
// EndpointSlices and Gateway API Gateways (waypoints, see waypoint.go) into Istio's workload
// API (istio.workload.Workload and istio.workload.Service, with their waypoint field), and
// AuthorizationPolicy and PeerAuthentication into istio.security.Authorization, field for field as istiod's ambient
// index does (pilot/pkg/serviceregistry/ambient), so that ztunnel cannot tell the difference
// — except that a ztunnel-enforced policy with L7-only attributes fails closed for DENY as
// well as ALLOW (see policy.go).
//
// It is pure translation: no informers, no client, no xDS, no logging. The istiod-lite
// controller watches the objects, feeds them in and serves the results; only istiod-lite
// imports it. Network gateways and the waypoint's own L7 configuration are not translated here.
package translate

import (
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Labels and annotations read by the translation (Istio's names).
const (
	labelDataplaneMode       = "istio.io/dataplane-mode"
	dataplaneModeAmbient     = "ambient"
	dataplaneModeNone        = "none"
	annotationRedirection    = "ambient.istio.io/redirection"
	redirectionEnabled       = "enabled"
	annotationSidecarStatus  = "sidecar.istio.io/status"
	labelTunnel              = "networking.istio.io/tunnel"
	labelWorkloadName        = "service.istio.io/workload-name"
	labelCanonicalName       = "service.istio.io/canonical-name"
	labelCanonicalRevision   = "service.istio.io/canonical-revision"
	labelPodTemplateHash     = "pod-template-hash"
	labelRolloutTemplateHash = "rollouts-pod-template-hash"
	labelDeploymentConfig    = "deploymentconfig"
)

const (
	defaultClusterID    = "Kubernetes"
	defaultTrustDomain  = "cluster.local"
	defaultDomainSuffix = "cluster.local"
)

// Options are the mesh-wide settings the translation needs. The zero value is Istio's default
// single-cluster mesh.
type Options struct {
	// ClusterID prefixes workload UIDs and fills cluster_id. If empty, "Kubernetes".
	ClusterID string
	// TrustDomain is the mesh trust domain. If empty, cluster.local. Workloads carry it only
	// when it is not cluster.local, as istiod elides the default.
	TrustDomain string
	// DomainSuffix is the cluster DNS suffix of Service hostnames. If empty, cluster.local.
	DomainSuffix string
	// Network is the network of workloads and Service addresses. If empty, they carry none
	// (a single flat network).
	Network string
}

func (o Options) withDefaults() Options {
	if o.ClusterID == "" {
		o.ClusterID = defaultClusterID
	}
	if o.TrustDomain == "" {
		o.TrustDomain = defaultTrustDomain
	}
	if o.DomainSuffix == "" {
		o.DomainSuffix = defaultDomainSuffix
	}
	return o
}

// InMesh reports whether the pod is enrolled in ambient under Istio's default CNI enablement
// selectors: the pod is labelled istio.io/dataplane-mode=ambient, or its namespace is and the
// pod is not labelled none. Host-network pods (their netns cannot be captured) and pods with an
// injected sidecar are never enrolled. ns may be nil when the namespace is unknown.
func InMesh(pod *corev1.Pod, ns *corev1.Namespace) bool {
	if pod == nil || pod.Spec.HostNetwork {
		return false
	}
	if _, ok := pod.Annotations[annotationSidecarStatus]; ok {
		return false
	}
	mode, labelled := pod.Labels[labelDataplaneMode]
	if labelled && mode == dataplaneModeAmbient {
		return true
	}
	if labelled && mode == dataplaneModeNone {
		return false
	}
	return ns != nil && ns.Labels[labelDataplaneMode] == dataplaneModeAmbient
}

// cronJobName matches the Job names a CronJob creates: "<cronjob>-<8 to 10 digit timestamp>".
var cronJobName = regexp.MustCompile(`^(.+)-\d{8,10}$`)

// workloadName derives the name of the workload that owns the pod, as Istio's
// GetWorkloadMetaFromPod does: the service.istio.io/workload-name label if set; otherwise, for
// a pod with a generated name and a controller reference, the Deployment behind a ReplicaSet
// (its name minus "-<pod-template-hash>"), the Argo Rollout behind a ReplicaSet, the OpenShift
// DeploymentConfig behind a ReplicationController, the CronJob behind a Job, or the controller
// itself; otherwise the pod name.
func workloadName(pod *corev1.Pod) string {
	if wn, ok := pod.Labels[labelWorkloadName]; ok {
		return wn
	}
	name := pod.Name
	if pod.GenerateName != "" {
		for _, ref := range pod.OwnerReferences {
			if ref.Controller == nil || !*ref.Controller {
				continue
			}
			name = controllerWorkloadName(ref.Kind, ref.Name, pod.Labels)
			break
		}
	}
	if name == "" {
		return pod.Name
	}
	return name
}

func controllerWorkloadName(kind, name string, labels map[string]string) string {
	switch kind {
	case "ReplicaSet":
		for _, l := range []string{labelPodTemplateHash, labelRolloutTemplateHash} {
			if h := labels[l]; h != "" && strings.HasSuffix(name, h) {
				return strings.TrimSuffix(name, "-"+h)
			}
		}
	case "ReplicationController":
		if dc := labels[labelDeploymentConfig]; dc != "" {
			return dc
		}
	case "Job":
		if m := cronJobName.FindStringSubmatch(name); len(m) == 2 {
			return m[1]
		}
	}
	return name
}

// canonicalService returns the canonical service name and revision from the first label present
// in Istio's order, falling back to the workload name and "latest".
func canonicalService(labels map[string]string, workloadName string) (name, revision string) {
	name, revision = workloadName, "latest"
	for _, l := range []string{labelCanonicalName, "app.kubernetes.io/name", "app"} {
		if v, ok := labels[l]; ok {
			name = v
			break
		}
	}
	for _, l := range []string{labelCanonicalRevision, "app.kubernetes.io/version", "version"} {
		if v, ok := labels[l]; ok {
			revision = v
			break
		}
	}
	return name, revision
}

// ServiceHostname is the workload API hostname of a Service,
// <name>.<namespace>.svc.<domain suffix> (cluster.local when opts leaves it empty).
func ServiceHostname(name, namespace string, opts Options) string {
	return serviceHostname(name, namespace, opts.withDefaults().DomainSuffix)
}

// serviceHostname is the cluster DNS name of a Service.
func serviceHostname(name, namespace, domainSuffix string) string {
	return name + "." + namespace + ".svc." + domainSuffix
}
