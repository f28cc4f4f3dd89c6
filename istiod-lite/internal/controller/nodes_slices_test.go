package controller

import (
	"slices"
	"sort"
	"testing"
	"time"

	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// TestNodesAndEndpointSlices runs the controller on fake clients: a pod takes its node's
// locality, follows a change of it and ignores node updates that leave it alone; a
// selectorless Service's hand-made slice yields one Workload per endpoint that is not a pod,
// binds the pod it names, and its Workloads go with the slice.
func TestNodesAndEndpointSlices(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	p := pod("mesh", "a", "10.0.0.1", map[string]string{"app": "a"}, nil)
	p.UID = "uid-a"
	kube := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{
			corev1.LabelTopologyRegion: "r1", corev1.LabelTopologyZone: "z1",
		}}},
		p,
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "ext"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20",
				Ports: []corev1.ServicePort{{Name: "tcp", Port: 5432, Protocol: corev1.ProtocolTCP}}},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "mesh", Name: "ext-1", Labels: map[string]string{discoveryv1.LabelServiceName: "ext"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To[int32](15432), Protocol: ptr.To(corev1.ProtocolTCP)}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"192.168.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
				{Addresses: []string{"192.168.0.2"}},
				{Addresses: []string{"192.168.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
				{Addresses: []string{"10.0.0.1"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "mesh", Name: "a", UID: "uid-a"}},
			},
		},
	)
	pu := &pushes{got: map[string]int{}}
	c, ctx := runController(t, kube, istiofake.NewSimpleClientset(), Options{Pusher: pu, Debounce: time.Millisecond})

	workloads := func() map[string]*workloadapi.Workload {
		t.Helper()
		out := map[string]*workloadapi.Workload{}
		for name, r := range c.snap.Load().byType[AddressType] {
			var a workloadapi.Address
			if err := r.Resource.UnmarshalTo(&a); err != nil {
				t.Fatal(err)
			}
			if w := a.GetWorkload(); w != nil {
				out[name] = w
			}
		}
		return out
	}
	eventually := func(what string, ok func(map[string]*workloadapi.Workload) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok(workloads()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: workloads %v", what, workloads())
			}
			time.Sleep(2 * time.Millisecond)
		}
	}

	const podUID = "Kubernetes//Pod/mesh/a"
	sliceUID := func(ip string) string { return "Kubernetes/discovery.k8s.io/EndpointSlice/mesh/ext-1/" + ip }
	ws := workloads()
	var names []string
	for name := range ws {
		names = append(names, name)
	}
	sort.Strings(names)
	if want := []string{podUID, sliceUID("192.168.0.1"), sliceUID("192.168.0.2"), sliceUID("192.168.0.3")}; !slices.Equal(names, want) {
		t.Fatalf("workloads %v, want %v", names, want)
	}
	a := ws[podUID]
	if l := a.Locality; l.GetRegion() != "r1" || l.GetZone() != "z1" || l.GetSubzone() != "" {
		t.Errorf("pod locality %v, want r1/z1", l)
	}
	if ports := a.Services["mesh/ext.mesh.svc.cluster.local"].GetPorts(); len(ports) != 1 || ports[0].ServicePort != 5432 {
		t.Errorf("pod services %v, want the selectorless Service bound by the slice", a.Services)
	}
	if w := ws[sliceUID("192.168.0.3")]; w.Status != workloadapi.WorkloadStatus_UNHEALTHY {
		t.Errorf("not-ready endpoint %v, want UNHEALTHY", w)
	}
	if w := ws[sliceUID("192.168.0.2")]; w.Status != workloadapi.WorkloadStatus_HEALTHY || w.NetworkMode != workloadapi.NetworkMode_HOST_NETWORK ||
		w.Services["mesh/ext.mesh.svc.cluster.local"].GetPorts()[0].TargetPort != 15432 {
		t.Errorf("endpoint without conditions %v, want HEALTHY, HOST_NETWORK, target 15432", w)
	}

	// A node update that leaves the locality alone marks nothing.
	node, err := kube.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Capacity = corev1.ResourceList{corev1.ResourceCPU: apiresource.MustParse("8")}
	node.Labels["kubernetes.io/hostname"] = "node-1"
	if _, err := kube.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		cached, err := c.nodes.Get("node-1")
		if err == nil && cached.Labels["kubernetes.io/hostname"] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node update not seen")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if cached, err := c.nodes.Get("node-1"); err != nil || cached.Status.Capacity != nil || cached.Labels[corev1.LabelTopologyZone] != "z1" {
		t.Errorf("cached node %v (%v), want labels only", cached, err)
	}

	// A locality change reaches the pod; a deleted node takes it away.
	node.Labels[corev1.LabelTopologyZone] = "z2"
	if _, err := kube.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("zone change", func(ws map[string]*workloadapi.Workload) bool { return ws[podUID].GetLocality().GetZone() == "z2" })
	if err := kube.CoreV1().Nodes().Delete(ctx, "node-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("node deleted", func(ws map[string]*workloadapi.Workload) bool { return ws[podUID] != nil && ws[podUID].Locality == nil })

	// Deleting the Service removes the slice Workloads and the pod's binding; deleting the
	// slice then leaves the pod alone.
	if err := kube.CoreV1().Services("mesh").Delete(ctx, "ext", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("service deleted", func(ws map[string]*workloadapi.Workload) bool {
		return len(ws) == 1 && len(ws[podUID].GetServices()) == 0
	})
	if err := kube.DiscoveryV1().EndpointSlices("mesh").Delete(ctx, "ext-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if ws := workloads(); len(ws) != 1 {
		t.Errorf("workloads %v after the slice went, want the pod only", ws)
	}
	if _, ok := c.idx.sliceNames["mesh/ext-1"]; ok || len(c.idx.sliceNames) != 0 {
		t.Errorf("slice names %v, want none", c.idx.sliceNames)
	}
}

// TestMarkPrecision: a node update marks its pods only when the locality changes, and a slice
// update marks only the pods whose binding it adds or removes.
func TestMarkPrecision(t *testing.T) {
	node := func(zone, cpu string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{corev1.LabelTopologyZone: zone}}}
		n.Status.Capacity = corev1.ResourceList{corev1.ResourceCPU: apiresource.MustParse(cpu)}
		return n
	}
	d := newDirty()
	markNode(d, node("z1", "1"), node("z1", "2"))
	if !d.empty() {
		t.Errorf("status-only node update marked %+v", d)
	}
	markNode(d, node("z1", "1"), node("z2", "1"))
	if _, ok := d.nodes["n"]; !ok {
		t.Errorf("locality change did not mark the node: %+v", d)
	}
	markNode(d, nil, node("z1", "1"))

	slice := func(ready bool, pods ...string) *discoveryv1.EndpointSlice {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "s-1", Labels: map[string]string{discoveryv1.LabelServiceName: "s"}},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		for _, p := range pods {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: p, UID: "u-" + types.UID(p)},
			})
		}
		return es
	}
	d = newDirty()
	markSlice(d, slice(true, "a", "b"), slice(false, "a", "b"))
	if len(d.pods) != 0 || len(d.slices) != 1 {
		t.Errorf("readiness change marked pods %v slices %v, want the slice only", d.pods, d.slices)
	}
	markSlice(d, slice(true, "a", "b"), slice(true, "b", "c"))
	if want := []string{"ns/a", "ns/c"}; !slices.Equal(sortedKeys(d.pods), want) {
		t.Errorf("marked pods %v, want %v", sortedKeys(d.pods), want)
	}
	d = newDirty()
	markSlice(d, nil, slice(true, "a"))
	if want := []string{"ns/a"}; !slices.Equal(sortedKeys(d.pods), want) {
		t.Errorf("deleted slice marked pods %v, want %v", sortedKeys(d.pods), want)
	}
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestSlimNode(t *testing.T) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", UID: "u", ResourceVersion: "7", Labels: map[string]string{"a": "b"},
			Annotations: map[string]string{"x": "y"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "m"}}},
		Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"i"}}}},
	}
	got, err := slimNode(n)
	if err != nil {
		t.Fatal(err)
	}
	s := got.(*corev1.Node)
	if s.Name != "n" || s.UID != "u" || s.ResourceVersion != "7" || s.Labels["a"] != "b" ||
		s.Annotations != nil || s.ManagedFields != nil || s.Status.Images != nil {
		t.Errorf("slimNode() = %+v", s)
	}
}
