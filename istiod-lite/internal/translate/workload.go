package translate

import (
	"net/netip"
	"slices"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// PodInputs are the objects a pod's Workload is built from.
type PodInputs struct {
	// Pod is the pod translated. Required.
	Pod *corev1.Pod
	// Namespace is the pod's namespace; nil if unknown.
	Namespace *corev1.Namespace
	// Node is the pod's node (spec.nodeName), which gives the workload its locality (see
	// Locality); nil if unknown, and the workload has none. A node of another name is ignored.
	Node *corev1.Node
	// Services are the candidate Services: those in the pod's namespace whose non-empty
	// selector matches the pod's labels fill the services map, and so do those an
	// EndpointSlice below binds the pod to. The caller includes the Services its slices name.
	Services []*corev1.Service
	// EndpointSlices are candidate slices: a slice that belongs to one of Services (label
	// kubernetes.io/service-name, address type not FQDN) and has an endpoint whose targetRef is
	// this pod (namespace, name and UID) adds that Service, as istiod does for Services without
	// a selector whose endpoints name pods.
	EndpointSlices []*discoveryv1.EndpointSlice
	// Waypoints are the usable waypoints, which give the waypoint and application_tunnel
	// fields (see WorkloadWaypoint); nil means none.
	Waypoints Waypoints
}

// Workload translates an ambient pod into the Workload istiod would send for it, with the
// services map filled from in.Services and in.EndpointSlices, the locality from in.Node, and
// the waypoint and application tunnel from in.Waypoints.
//
// It returns false when the pod is not in the mesh (see InMesh), has finished (Succeeded or
// Failed), or has no valid IP yet.
//
// Following istiod: service_account is the pod's as written (not elided), trust_domain is
// elided when cluster.local, and workload_type is always POD while workload_name names the
// owning Deployment, Job, CronJob or other controller.
func Workload(in PodInputs, opts Options) (*workloadapi.Workload, bool) {
	pod := in.Pod
	if !InMesh(pod, in.Namespace) {
		return nil, false
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil, false
	}
	addrs, ok := podAddresses(pod)
	if !ok {
		return nil, false
	}
	opts = opts.withDefaults()

	w := &workloadapi.Workload{
		Uid:            opts.ClusterID + "//Pod/" + pod.Namespace + "/" + pod.Name,
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Addresses:      addrs,
		Network:        opts.Network,
		ServiceAccount: pod.Spec.ServiceAccountName,
		Node:           pod.Spec.NodeName,
		ClusterId:      opts.ClusterID,
		Services:       podServices(pod, in.Services, in.EndpointSlices, opts.DomainSuffix),
		Status:         podStatus(pod),
		WorkloadName:   workloadName(pod),
		WorkloadType:   workloadapi.WorkloadType_POD, // istiod keeps POD for backwards compatibility
	}
	if opts.TrustDomain != defaultTrustDomain {
		w.TrustDomain = opts.TrustDomain
	}
	if in.Node != nil && in.Node.Name == pod.Spec.NodeName {
		w.Locality = Locality(in.Node)
	}
	w.CanonicalName, w.CanonicalRevision = canonicalService(pod.Labels, w.WorkloadName)
	w.TunnelProtocol, w.NativeTunnel = tunnel(pod)
	// A waypoint the pod asks for and cannot use is not an error here: istiod only logs it.
	wp, appTunnel, _ := WorkloadWaypoint(pod, in.Namespace, in.Waypoints)
	w.Waypoint, w.ApplicationTunnel = wp.GetAddress(), appTunnel
	return w, true
}

// podAddresses returns the pod's IPs as 4- or 16-byte slices, from status.podIPs or else
// status.podIP. It reports false if there is none or one does not parse.
func podAddresses(pod *corev1.Pod) ([][]byte, bool) {
	ips := make([]string, 0, len(pod.Status.PodIPs))
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	if len(ips) == 0 {
		return nil, false
	}
	out := make([][]byte, 0, len(ips))
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, false
		}
		out = append(out, ip.AsSlice())
	}
	return out, true
}

// podStatus is HEALTHY when the pod's Ready condition is True and it is not being deleted.
func podStatus(pod *corev1.Pod) workloadapi.WorkloadStatus {
	if pod.DeletionTimestamp != nil {
		return workloadapi.WorkloadStatus_UNHEALTHY
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status == corev1.ConditionTrue {
				return workloadapi.WorkloadStatus_HEALTHY
			}
			break
		}
	}
	return workloadapi.WorkloadStatus_UNHEALTHY
}

// tunnel returns HBONE once the CNI has redirected the pod (annotation
// ambient.istio.io/redirection=enabled) or when the pod terminates HBONE itself (label
// networking.istio.io/tunnel lists "http", which also sets native_tunnel).
func tunnel(pod *corev1.Pod) (workloadapi.TunnelProtocol, bool) {
	if tl, ok := pod.Labels[labelTunnel]; ok && slices.Contains(strings.Split(tl, ","), "http") {
		return workloadapi.TunnelProtocol_HBONE, true
	}
	if pod.Annotations[annotationRedirection] == redirectionEnabled {
		return workloadapi.TunnelProtocol_HBONE, false
	}
	return workloadapi.TunnelProtocol_NONE, false
}

// podServices maps "namespace/hostname" of every Service selecting the pod, or bound to it by
// one of slices, to its ports, with named target ports resolved against the pod's TCP container
// ports. A port whose named target the pod lacks is left out; a Service keeps its (possibly
// empty) entry.
func podServices(pod *corev1.Pod, services []*corev1.Service, slices []*discoveryv1.EndpointSlice, domainSuffix string) map[string]*workloadapi.PortList {
	res := map[string]*workloadapi.PortList{}
	for _, svc := range services {
		if !selects(svc, pod) && !slicesSelect(slices, svc, pod) {
			continue
		}
		pl := &workloadapi.PortList{Ports: make([]*workloadapi.Port, 0, len(svc.Spec.Ports))}
		for _, p := range svc.Spec.Ports {
			target := uint32(p.TargetPort.IntVal)
			if name := p.TargetPort.StrVal; name != "" {
				tp, ok := containerPort(pod, name)
				if !ok {
					continue
				}
				target = uint32(tp)
			}
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: target})
		}
		res[svc.Namespace+"/"+serviceHostname(svc.Name, svc.Namespace, domainSuffix)] = pl
	}
	if len(res) == 0 {
		return nil
	}
	return res
}

// slicesSelect reports whether one of slices binds the pod to svc (see sliceSelects).
// ExternalName Services have no workloads.
func slicesSelect(slices []*discoveryv1.EndpointSlice, svc *corev1.Service, pod *corev1.Pod) bool {
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return false
	}
	for _, es := range slices {
		if sliceSelects(es, svc, pod) {
			return true
		}
	}
	return false
}

// selects reports whether the Service's non-empty selector matches the pod's labels in the
// same namespace. ExternalName Services have no workloads.
func selects(svc *corev1.Service, pod *corev1.Pod) bool {
	if svc == nil || svc.Namespace != pod.Namespace || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return false
	}
	if len(svc.Spec.Selector) == 0 {
		return false
	}
	for k, v := range svc.Spec.Selector {
		if got, ok := pod.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// containerPort finds the TCP port named name among the pod's containers and native sidecar
// init containers (restartPolicy Always).
func containerPort(pod *corev1.Pod, name string) (int32, bool) {
	find := func(cs []corev1.Container, sidecarsOnly bool) (int32, bool) {
		for _, c := range cs {
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, p := range c.Ports {
				// An empty protocol is the API default, TCP.
				if p.Name == name && (p.Protocol == corev1.ProtocolTCP || p.Protocol == "") {
					return p.ContainerPort, true
				}
			}
		}
		return 0, false
	}
	if p, ok := find(pod.Spec.Containers, false); ok {
		return p, true
	}
	return find(pod.Spec.InitContainers, true)
}
