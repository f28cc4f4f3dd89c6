package proxy

import (
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"istio.io/istio/pkg/workloadapi"
)

func TestBaggage(t *testing.T) {
	w := &meshstate.Workload{Workload: &workloadapi.Workload{
		ClusterId: "Kubernetes", Namespace: "shop", WorkloadName: "cart", WorkloadType: workloadapi.WorkloadType_DEPLOYMENT,
		CanonicalName: "cart", CanonicalRevision: "v2",
	}}
	want := "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart,service.name=cart,service.version=v2"
	if got := baggage(w); got != want {
		t.Errorf("baggage = %q, want %q", got, want)
	}
	if got := baggage(&meshstate.Workload{Workload: &workloadapi.Workload{Namespace: "a", WorkloadType: workloadapi.WorkloadType_POD}}); got != "k8s.namespace.name=a" {
		t.Errorf("sparse baggage = %q", got)
	}
	if baggage(nil) != "" {
		t.Error("baggage of an unknown source should be empty")
	}
}
