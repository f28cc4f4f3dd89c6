package translate

import (
	"fmt"
	"net/netip"

	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// SliceService returns the name of the Service (in the slice's namespace) an EndpointSlice
// belongs to, from its kubernetes.io/service-name label. It reports false for a slice without
// that label or of address type FQDN: istiod reads neither.
func SliceService(es *discoveryv1.EndpointSlice) (string, bool) {
	if es == nil || es.AddressType == discoveryv1.AddressTypeFQDN {
		return "", false
	}
	name, ok := es.Labels[discoveryv1.LabelServiceName]
	return name, ok
}

// EndpointSliceWorkloads translates the endpoints of an EndpointSlice that are not pods into
// the Workloads istiod's endpointSliceWorkloadBuilder sends: endpoints added by hand or by
// another controller, typically for a Service without a selector (the apiserver's own
// "kubernetes" Service is one). svc is the Service the slice's kubernetes.io/service-name
// label names, nil if it does not exist.
//
// Following istiod, an endpoint whose targetRef is a Pod is skipped (the pod's own Workload,
// with far more information, lists the Service instead; see PodInputs.EndpointSlices), as is
// one without addresses or whose first address was already seen in the slice. Each other
// endpoint becomes one Workload: uid "<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<first
// address>", name the slice's, HEALTHY unless its ready condition is false, network mode
// HOST_NETWORK (its address may be shared), tunnel protocol NONE, no identity, node, locality or
// policies, and a services entry mapping each TCP slice port to the Service port of the same
// name. Endpoints are kept whatever the Service's selector, as istiod does; a slice the
// endpoint-slice controller writes for a selector lists only pods, so yields nothing.
//
// It returns no Workloads for a slice SliceService rejects, or when svc is nil, is not the
// slice's Service or does not translate (see Service). problems describes the endpoints left
// out because an address does not parse or repeats.
func EndpointSliceWorkloads(es *discoveryv1.EndpointSlice, svc *corev1.Service, opts Options) (workloads []*workloadapi.Workload, problems []string) {
	name, ok := SliceService(es)
	if !ok || svc == nil || svc.Namespace != es.Namespace || svc.Name != name {
		return nil, nil
	}
	if _, ok := Service(svc, opts); !ok {
		return nil, nil
	}
	opts = opts.withDefaults()
	serviceKey := es.Namespace + "/" + serviceHostname(name, es.Namespace, opts.DomainSuffix)
	services := map[string]*workloadapi.PortList{serviceKey: slicePorts(es, svc)}
	trustDomain := ""
	if opts.TrustDomain != defaultTrustDomain {
		trustDomain = opts.TrustDomain
	}
	seen := map[string]bool{}
	for _, ep := range es.Endpoints {
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			continue
		}
		if len(ep.Addresses) == 0 {
			continue
		}
		// Kubernetes sets one address per endpoint (an IPv6 one goes in another slice);
		// istiod keys the workload by the first.
		key := ep.Addresses[0]
		if seen[key] {
			problems = append(problems, fmt.Sprintf("address %s listed twice", key))
			continue
		}
		seen[key] = true
		addrs, err := parseAddresses(ep.Addresses)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		status := workloadapi.WorkloadStatus_HEALTHY
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			status = workloadapi.WorkloadStatus_UNHEALTHY
		}
		workloads = append(workloads, &workloadapi.Workload{
			Uid:         opts.ClusterID + "/discovery.k8s.io/EndpointSlice/" + es.Namespace + "/" + es.Name + "/" + key,
			Name:        es.Name,
			Namespace:   es.Namespace,
			Addresses:   addrs,
			Network:     opts.Network,
			TrustDomain: trustDomain,
			Services:    services,
			Status:      status,
			ClusterId:   opts.ClusterID,
			NetworkMode: workloadapi.NetworkMode_HOST_NETWORK,
		})
	}
	return workloads, problems
}

// slicePorts maps each TCP port of the slice (named for a Service port; its number is the
// target) to the Service port of that name. As in istiod, a Service's port names are looked up
// by port number, so of two Service ports sharing a number the last one's name counts.
func slicePorts(es *discoveryv1.EndpointSlice, svc *corev1.Service) *workloadapi.PortList {
	names := make(map[int32]string, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		names[p.Port] = p.Name
	}
	pl := &workloadapi.PortList{Ports: make([]*workloadapi.Port, 0, len(es.Ports))}
	for _, p := range es.Ports {
		if p.Name == nil || p.Port == nil || p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if names[sp.Port] == *p.Name {
				pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(sp.Port), TargetPort: uint32(*p.Port)})
				break
			}
		}
	}
	return pl
}

func parseAddresses(ips []string) ([][]byte, error) {
	out := make([][]byte, 0, len(ips))
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid address %q", s)
		}
		out = append(out, ip.AsSlice())
	}
	return out, nil
}

// sliceSelects reports whether the EndpointSlice binds the pod to svc: the slice belongs to
// svc (see SliceService) and one of its endpoints has a targetRef to exactly this pod
// (namespace, name and UID), as istiod's endpointSliceAddressIndex matches them.
func sliceSelects(es *discoveryv1.EndpointSlice, svc *corev1.Service, pod *corev1.Pod) bool {
	name, ok := SliceService(es)
	if !ok || svc.Namespace != es.Namespace || svc.Name != name {
		return false
	}
	for _, ep := range es.Endpoints {
		ref := ep.TargetRef
		if ref != nil && ref.Kind == "Pod" && ref.Namespace == pod.Namespace && ref.Name == pod.Name && ref.UID == pod.UID {
			return true
		}
	}
	return false
}
