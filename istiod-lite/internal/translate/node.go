package translate

import (
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
)

// labelSubzone is Istio's node label for a locality finer than the zone; region and zone come
// from Kubernetes' well-known topology labels.
const labelSubzone = "topology.istio.io/subzone"

// Locality returns the locality istiod gives the workloads on node: region, zone and subzone
// from its labels topology.kubernetes.io/region, topology.kubernetes.io/zone and
// topology.istio.io/subzone, each possibly empty. It is nil when node is nil or carries none
// of the three. As in istiod's ambient index, pod labels (istio-locality) play no part.
func Locality(node *corev1.Node) *workloadapi.Locality {
	if node == nil {
		return nil
	}
	region := node.Labels[corev1.LabelTopologyRegion]
	zone := node.Labels[corev1.LabelTopologyZone]
	subzone := node.Labels[labelSubzone]
	if region == "" && zone == "" && subzone == "" {
		return nil
	}
	return &workloadapi.Locality{Region: region, Zone: zone, Subzone: subzone}
}
