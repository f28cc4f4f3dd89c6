package translate

import (
	"net/netip"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
)

// annotationTrafficDistribution is Istio's legacy stand-in for spec.trafficDistribution.
const annotationTrafficDistribution = "networking.istio.io/traffic-distribution"

// Service translates a Kubernetes Service into the Service istiod would send for it: hostname
// <name>.<namespace>.svc.<DomainSuffix>, its cluster IPs (none when headless), its ports with
// numeric target ports (0 for a named one, which each Workload resolves) and Istio's
// application protocol, its IP families, and load balancing from internalTrafficPolicy,
// trafficDistribution and publishNotReadyAddresses. Its waypoint is set by
// BindServiceWaypoint.
//
// It returns false for ExternalName Services, which ambient does not implement, and for a
// Service whose cluster IP does not parse.
func Service(svc *corev1.Service, opts Options) (*workloadapi.Service, bool) {
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, false
	}
	opts = opts.withDefaults()
	addrs, ok := serviceAddresses(svc, opts.Network)
	if !ok {
		return nil, false
	}
	ports := make([]*workloadapi.Port, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		ports = append(ports, &workloadapi.Port{
			ServicePort: uint32(p.Port),
			TargetPort:  uint32(p.TargetPort.IntVal),
			AppProtocol: appProtocol(p),
		})
	}
	return &workloadapi.Service{
		Name:          svc.Name,
		Namespace:     svc.Namespace,
		Hostname:      serviceHostname(svc.Name, svc.Namespace, opts.DomainSuffix),
		Addresses:     addrs,
		Ports:         ports,
		LoadBalancing: loadBalancing(svc),
		IpFamilies:    ipFamilies(svc.Spec.IPFamilies),
		// A Kubernetes Service is always canonical for its hostname.
		Canonical: true,
	}, true
}

// serviceAddresses returns spec.clusterIPs (or spec.clusterIP), without "None".
func serviceAddresses(svc *corev1.Service, network string) ([]*workloadapi.NetworkAddress, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []*workloadapi.NetworkAddress
	for _, s := range ips {
		if s == "" || s == corev1.ClusterIPNone {
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, false
		}
		out = append(out, &workloadapi.NetworkAddress{Network: network, Address: ip.AsSlice()})
	}
	return out, true
}

// wellKnownTCPPorts are treated as TCP when the port's name gives no protocol (SMTP, DNS,
// MySQL, MongoDB), as Istio does.
var wellKnownTCPPorts = map[int32]bool{25: true, 53: true, 3306: true, 27017: true}

// appProtocol maps a Service port to the workload API's application protocol the way Istio's
// ConvertProtocol does: UDP ports are UNKNOWN; appProtocol wins over the port name (with the
// kubernetes.io/h2c, ws and wss names); otherwise the name's prefix before "-" decides.
func appProtocol(p corev1.ServicePort) workloadapi.AppProtocol {
	if p.Protocol == corev1.ProtocolUDP {
		return workloadapi.AppProtocol_UNKNOWN
	}
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return workloadapi.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadapi.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadapi.AppProtocol_TLS
		}
	}
	if len(name) >= len("grpc-web") && strings.EqualFold(name[:len("grpc-web")], "grpc-web") {
		return workloadapi.AppProtocol_UNKNOWN // gRPC-Web has no workload API protocol
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "http":
		return workloadapi.AppProtocol_HTTP11
	case "http2":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "https", "tls":
		return workloadapi.AppProtocol_TLS
	case "tcp":
		return workloadapi.AppProtocol_TCP
	case "udp", "http_proxy", "mongo", "redis", "mysql":
		// Protocols Istio knows that the workload API does not name.
		return workloadapi.AppProtocol_UNKNOWN
	}
	if wellKnownTCPPorts[p.Port] {
		return workloadapi.AppProtocol_TCP
	}
	return workloadapi.AppProtocol_UNKNOWN
}

func ipFamilies(fams []corev1.IPFamily) workloadapi.IPFamilies {
	switch {
	case len(fams) == 2:
		return workloadapi.IPFamilies_DUAL
	case len(fams) == 1 && fams[0] == corev1.IPv4Protocol:
		return workloadapi.IPFamilies_IPV4_ONLY
	case len(fams) == 1:
		return workloadapi.IPFamilies_IPV6_ONLY
	}
	return workloadapi.IPFamilies_AUTOMATIC
}

// loadBalancing follows istiod: internalTrafficPolicy Local pins to the node (STRICT);
// otherwise PreferClose/PreferSameZone and PreferSameNode traffic distribution fail over by
// locality; publishNotReadyAddresses allows unhealthy endpoints.
func loadBalancing(svc *corev1.Service) *workloadapi.LoadBalancing {
	var lb *workloadapi.LoadBalancing
	if itp := svc.Spec.InternalTrafficPolicy; itp != nil && *itp == corev1.ServiceInternalTrafficPolicyLocal {
		lb = &workloadapi.LoadBalancing{
			RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE},
			Mode:              workloadapi.LoadBalancing_STRICT,
		}
	} else if td := trafficDistribution(svc); td != "" {
		scopes := []workloadapi.LoadBalancing_Scope{
			workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
		}
		if td == corev1.ServiceTrafficDistributionPreferSameNode {
			scopes = append(scopes, workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE)
		}
		lb = &workloadapi.LoadBalancing{RoutingPreference: scopes, Mode: workloadapi.LoadBalancing_FAILOVER}
	}
	if svc.Spec.PublishNotReadyAddresses {
		if lb == nil {
			lb = &workloadapi.LoadBalancing{}
		}
		lb.HealthPolicy = workloadapi.LoadBalancing_ALLOW_ALL
	}
	return lb
}

// trafficDistribution returns PreferSameZone (for PreferClose too), PreferSameNode or "" from
// spec.trafficDistribution, else from Istio's networking.istio.io/traffic-distribution
// annotation (case-insensitive). The namespace-level annotation istiod also honours is not
// read: Service does not take the Namespace.
func trafficDistribution(svc *corev1.Service) string {
	if v := svc.Spec.TrafficDistribution; v != nil {
		switch *v {
		case corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameZone:
			return corev1.ServiceTrafficDistributionPreferSameZone
		case corev1.ServiceTrafficDistributionPreferSameNode:
			return corev1.ServiceTrafficDistributionPreferSameNode
		}
	}
	switch strings.ToLower(svc.Annotations[annotationTrafficDistribution]) {
	case strings.ToLower(corev1.ServiceTrafficDistributionPreferClose),
		strings.ToLower(corev1.ServiceTrafficDistributionPreferSameZone):
		return corev1.ServiceTrafficDistributionPreferSameZone
	case strings.ToLower(corev1.ServiceTrafficDistributionPreferSameNode):
		return corev1.ServiceTrafficDistributionPreferSameNode
	}
	return ""
}
