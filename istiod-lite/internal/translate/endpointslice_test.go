package translate

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEndpointSliceProblems(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.1", Ports: []corev1.ServicePort{{Name: "p", Port: 80}}},
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "s-1", Labels: map[string]string{discoveryv1.LabelServiceName: "s"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}}, {Addresses: []string{"10.0.0.1"}}, {Addresses: []string{"bogus"}},
		},
	}
	ws, problems := EndpointSliceWorkloads(es, svc, Options{})
	if len(ws) != 1 {
		t.Errorf("workloads %v, want one", ws)
	}
	if want := []string{"address 10.0.0.1 listed twice", `invalid address "bogus"`}; !slices.Equal(problems, want) {
		t.Errorf("problems %q, want %q", problems, want)
	}
	other := svc.DeepCopy()
	other.Name = "other"
	for name, s := range map[string]*corev1.Service{"nil": nil, "other service": other} {
		if ws, _ := EndpointSliceWorkloads(es, s, Options{}); len(ws) != 0 {
			t.Errorf("%s: workloads %v, want none", name, ws)
		}
	}
}

func TestLocality(t *testing.T) {
	node := func(labels map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: labels}}
	}
	tests := []struct {
		name string
		node *corev1.Node
		want *workloadapi.Locality
	}{
		{"nil node", nil, nil},
		{"no labels", node(nil), nil},
		{"empty values", node(map[string]string{corev1.LabelTopologyRegion: "", corev1.LabelTopologyZone: ""}), nil},
		{"all", node(map[string]string{corev1.LabelTopologyRegion: "r", corev1.LabelTopologyZone: "z", labelSubzone: "s"}),
			&workloadapi.Locality{Region: "r", Zone: "z", Subzone: "s"}},
		{"subzone only", node(map[string]string{labelSubzone: "s"}), &workloadapi.Locality{Subzone: "s"}},
		{"legacy beta label ignored", node(map[string]string{corev1.LabelFailureDomainBetaZone: "z"}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Locality(tt.node); !proto.Equal(got, tt.want) {
				t.Errorf("Locality() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWorkloadIgnoresOtherNode(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{labelDataplaneMode: "ambient"}},
		Spec:       corev1.PodSpec{NodeName: "a"},
		Status:     corev1.PodStatus{PodIP: "10.0.0.1"},
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b", Labels: map[string]string{corev1.LabelTopologyZone: "z"}}}
	w, ok := Workload(PodInputs{Pod: pod, Node: n}, Options{})
	if !ok || w.Locality != nil {
		t.Errorf("Workload() = %v, %v; want a workload without locality", w, ok)
	}
}
