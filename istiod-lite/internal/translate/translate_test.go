package translate

import (
	"encoding/json"
	"flag"
	"fmt"
	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// TestGolden translates testdata/<case>-in.yaml (Namespaces, Pods, Services) and compares the
// resulting Addresses, services first by key then workloads by uid, with testdata/<case>.yaml.
func TestGolden(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{name: "ambient-namespace-not-redirected"},
		{name: "redirected-hbone"},
		{name: "opted-out"},
		{name: "pod-label-plain-namespace"},
		{name: "deployment"},
		{name: "jobs"},
		{name: "not-ready"},
		{name: "headless-service"},
		{name: "named-target-port"},
		{name: "dual-stack"},
		{name: "external-name"},
		{name: "service-accounts"},
		{name: "load-balancing"},
		{name: "locality"},
		{name: "endpointslice-selectorless"},
		{name: "endpointslice-pod-targetref"},
		{name: "endpointslice-named-ports"},
		{name: "endpointslice-ipv6", opts: Options{ClusterID: "cluster1", TrustDomain: "example.org", Network: "net1"}},
		{name: "endpointslice-selector-service"},
		{name: "waypoint-namespace"},
		{name: "waypoint-traffic-types"},
		{name: "waypoint-cross-namespace"},
		{name: "waypoint-inbound-binding", opts: Options{Network: "net1"}},
		{name: "custom-options", opts: Options{
			ClusterID: "cluster1", TrustDomain: "example.org", DomainSuffix: "mesh.example", Network: "net1",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", tt.name+"-in.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decodeObjects(in)
			if err != nil {
				t.Fatalf("decoding %s-in.yaml: %v", tt.name, err)
			}
			got, err := render(translateAll(objs, tt.opts))
			if err != nil {
				t.Fatal(err)
			}
			testenv.Golden(t, filepath.Join("testdata", tt.name+".yaml"), got, *update)
		})
	}
}

type objects struct {
	namespaces map[string]*corev1.Namespace
	nodes      map[string]*corev1.Node
	pods       []*corev1.Pod
	services   []*corev1.Service
	slices     []*discoveryv1.EndpointSlice
	gateways   []*gatewayv1.Gateway
	classes    map[string]*gatewayv1.GatewayClass
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func decodeObjects(in []byte) (objects, error) {
	objs := objects{namespaces: map[string]*corev1.Namespace{}, nodes: map[string]*corev1.Node{}, classes: map[string]*gatewayv1.GatewayClass{}}
	err := decodeDocs(in, func(kind string, doc []byte) error {
		switch kind {
		case "Namespace":
			ns := &corev1.Namespace{}
			err := yaml.UnmarshalStrict(doc, ns)
			objs.namespaces[ns.Name] = ns
			return err
		case "Node":
			node := &corev1.Node{}
			err := yaml.UnmarshalStrict(doc, node)
			objs.nodes[node.Name] = node
			return err
		case "EndpointSlice":
			es := &discoveryv1.EndpointSlice{}
			objs.slices = append(objs.slices, es)
			return yaml.UnmarshalStrict(doc, es)
		case "Pod":
			pod := &corev1.Pod{}
			objs.pods = append(objs.pods, pod)
			return yaml.UnmarshalStrict(doc, pod)
		case "Service":
			svc := &corev1.Service{}
			objs.services = append(objs.services, svc)
			return yaml.UnmarshalStrict(doc, svc)
		case "Gateway":
			gw := &gatewayv1.Gateway{}
			objs.gateways = append(objs.gateways, gw)
			return yaml.UnmarshalStrict(doc, gw)
		case "GatewayClass":
			gc := &gatewayv1.GatewayClass{}
			err := yaml.UnmarshalStrict(doc, gc)
			objs.classes[gc.Name] = gc
			return err
		}
		return fmt.Errorf("unsupported kind %q", kind)
	})
	return objs, err
}

// decodeDocs splits a multi-document YAML input and calls decode with each non-empty
// document's kind; errors name the document.
func decodeDocs(in []byte, decode func(kind string, doc []byte) error) error {
	for i, doc := range docSeparator.Split(string(in), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		if tm.Kind == "" {
			continue // empty document
		}
		if err := decode(tm.Kind, []byte(doc)); err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
	}
	return nil
}

// waypointsOf translates the Gateways; problems are prefixed with the Gateway's key.
func waypointsOf(objs objects, opts Options) (Waypoints, []string) {
	wps := Waypoints{}
	var problems []string
	for _, gw := range objs.gateways {
		w, ps := GatewayWaypoint(gw, objs.classes[string(gw.Spec.GatewayClassName)], opts)
		for _, p := range ps {
			problems = append(problems, "Gateway "+gw.Namespace+"/"+gw.Name+": "+p)
		}
		if w != nil {
			wps[w.Key()] = w
		}
	}
	return wps, problems
}

func translateAll(objs objects, opts Options) []*workloadapi.Address {
	var services, workloads []*workloadapi.Address
	wps, _ := waypointsOf(objs, opts)
	for _, svc := range objs.services {
		if s, ok := Service(svc, opts); ok {
			_ = BindServiceWaypoint(s, svc, objs.namespaces[svc.Namespace], wps)
			services = append(services, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
		}
	}
	for _, pod := range objs.pods {
		in := PodInputs{
			Pod: pod, Namespace: objs.namespaces[pod.Namespace], Node: objs.nodes[pod.Spec.NodeName],
			Services: objs.services, EndpointSlices: objs.slices, Waypoints: wps,
		}
		if w, ok := Workload(in, opts); ok {
			workloads = append(workloads, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
		}
	}
	for _, es := range objs.slices {
		var svc *corev1.Service
		if name, ok := SliceService(es); ok {
			for _, s := range objs.services {
				if s.Namespace == es.Namespace && s.Name == name {
					svc = s
				}
			}
		}
		ws, _ := EndpointSliceWorkloads(es, svc, opts)
		for _, w := range ws {
			workloads = append(workloads, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
		}
	}
	sort.Slice(services, func(i, j int) bool {
		a, b := services[i].GetService(), services[j].GetService()
		return a.Namespace+"/"+a.Hostname < b.Namespace+"/"+b.Hostname
	})
	sort.Slice(workloads, func(i, j int) bool {
		return workloads[i].GetWorkload().Uid < workloads[j].GetWorkload().Uid
	})
	return append(services, workloads...)
}

// render writes the Addresses as a YAML list of their protojson forms; sigs.k8s.io/yaml sorts
// keys, so the output is stable whatever protojson's spacing.
func render(addrs []*workloadapi.Address) ([]byte, error) {
	list := make([]json.RawMessage, 0, len(addrs))
	for _, a := range addrs {
		b, err := protojson.Marshal(a)
		if err != nil {
			return nil, fmt.Errorf("marshaling address: %w", err)
		}
		list = append(list, b)
	}
	j, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

func TestInMesh(t *testing.T) {
	ambientNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{labelDataplaneMode: "ambient"}}}
	plainNS := &corev1.Namespace{}
	pod := func(labels, annotations map[string]string, hostNetwork bool) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
			Spec:       corev1.PodSpec{HostNetwork: hostNetwork},
		}
	}
	ambient := map[string]string{labelDataplaneMode: "ambient"}
	none := map[string]string{labelDataplaneMode: "none"}
	tests := []struct {
		name string
		pod  *corev1.Pod
		ns   *corev1.Namespace
		want bool
	}{
		{"ambient namespace", pod(nil, nil, false), ambientNS, true},
		{"ambient namespace, pod none", pod(none, nil, false), ambientNS, false},
		{"ambient namespace, pod other value", pod(map[string]string{labelDataplaneMode: "x"}, nil, false), ambientNS, true},
		{"plain namespace", pod(nil, nil, false), plainNS, false},
		{"plain namespace, pod ambient", pod(ambient, nil, false), plainNS, true},
		{"unknown namespace, pod ambient", pod(ambient, nil, false), nil, true},
		{"unknown namespace", pod(nil, nil, false), nil, false},
		{"host network", pod(ambient, nil, true), ambientNS, false},
		{"sidecar", pod(ambient, map[string]string{annotationSidecarStatus: "{}"}, false), ambientNS, false},
		{"nil pod", nil, ambientNS, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := InMesh(tt.pod, tt.ns); got != tt.want {
				t.Errorf("InMesh() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWorkloadName(t *testing.T) {
	yes := true
	owned := func(kind, name string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: "p-abcde", GenerateName: "p-", Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &yes}},
		}}
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"bare pod", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}, "p"},
		{"deployment", owned("ReplicaSet", "reviews-v1-7d9f8c6b5", map[string]string{labelPodTemplateHash: "7d9f8c6b5"}), "reviews-v1"},
		{"replicaset without hash", owned("ReplicaSet", "rs", nil), "rs"},
		{"rollout", owned("ReplicaSet", "ro-5f6d", map[string]string{labelRolloutTemplateHash: "5f6d"}), "ro"},
		{"deploymentconfig", owned("ReplicationController", "dc-1", map[string]string{labelDeploymentConfig: "dc"}), "dc"},
		{"job", owned("Job", "migrate", nil), "migrate"},
		{"cronjob", owned("Job", "backup-28930440", nil), "backup"},
		{"short digits not cronjob", owned("Job", "job-1234567", nil), "job-1234567"},
		{"statefulset", owned("StatefulSet", "db", nil), "db"},
		{"not generated name", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: "p", OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "j", Controller: &yes}},
		}}, "p"},
		{"owner not controller", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: "p-x", GenerateName: "p-", OwnerReferences: []metav1.OwnerReference{{Kind: "Job", Name: "j"}},
		}}, "p-x"},
		{"label override", owned("Job", "j", map[string]string{labelWorkloadName: "custom"}), "custom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := workloadName(tt.pod); got != tt.want {
				t.Errorf("workloadName() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCanonicalService(t *testing.T) {
	tests := []struct {
		name         string
		labels       map[string]string
		wantName     string
		wantRevision string
	}{
		{"defaults", nil, "wl", "latest"},
		{"app and version", map[string]string{"app": "a", "version": "v1"}, "a", "v1"},
		{"kubernetes labels beat app", map[string]string{
			"app": "a", "app.kubernetes.io/name": "k", "version": "v1", "app.kubernetes.io/version": "k1",
		}, "k", "k1"},
		{"istio labels beat all", map[string]string{
			"app": "a", "app.kubernetes.io/name": "k", labelCanonicalName: "c",
			"version": "v1", labelCanonicalRevision: "c1",
		}, "c", "c1"},
		{"empty value counts", map[string]string{"app": ""}, "", "latest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, r := canonicalService(tt.labels, "wl")
			if n != tt.wantName || r != tt.wantRevision {
				t.Errorf("canonicalService() = %q, %q; want %q, %q", n, r, tt.wantName, tt.wantRevision)
			}
		})
	}
}

func TestAppProtocol(t *testing.T) {
	ap := func(s string) *string { return &s }
	tests := []struct {
		name string
		port corev1.ServicePort
		want workloadapi.AppProtocol
	}{
		{"http name", corev1.ServicePort{Name: "http-web", Port: 80}, workloadapi.AppProtocol_HTTP11},
		{"upper case", corev1.ServicePort{Name: "HTTP2", Port: 80}, workloadapi.AppProtocol_HTTP2},
		{"grpc", corev1.ServicePort{Name: "grpc-api", Port: 80}, workloadapi.AppProtocol_GRPC},
		{"grpc-web", corev1.ServicePort{Name: "grpc-web-api", Port: 80}, workloadapi.AppProtocol_UNKNOWN},
		{"https", corev1.ServicePort{Name: "https", Port: 443}, workloadapi.AppProtocol_TLS},
		{"tls", corev1.ServicePort{Name: "tls-x", Port: 443}, workloadapi.AppProtocol_TLS},
		{"tcp", corev1.ServicePort{Name: "tcp", Port: 9}, workloadapi.AppProtocol_TCP},
		{"unnamed", corev1.ServicePort{Port: 8080}, workloadapi.AppProtocol_UNKNOWN},
		{"unnamed well-known", corev1.ServicePort{Port: 3306}, workloadapi.AppProtocol_TCP},
		{"mysql name on well-known port", corev1.ServicePort{Name: "mysql", Port: 3306}, workloadapi.AppProtocol_UNKNOWN},
		{"udp", corev1.ServicePort{Name: "http", Port: 53, Protocol: corev1.ProtocolUDP}, workloadapi.AppProtocol_UNKNOWN},
		{"appProtocol wins", corev1.ServicePort{Name: "http", Port: 80, AppProtocol: ap("grpc")}, workloadapi.AppProtocol_GRPC},
		{"h2c", corev1.ServicePort{Port: 80, AppProtocol: ap("kubernetes.io/h2c")}, workloadapi.AppProtocol_HTTP2},
		{"ws", corev1.ServicePort{Port: 80, AppProtocol: ap("kubernetes.io/ws")}, workloadapi.AppProtocol_HTTP11},
		{"wss", corev1.ServicePort{Port: 80, AppProtocol: ap("kubernetes.io/wss")}, workloadapi.AppProtocol_TLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := appProtocol(tt.port); got != tt.want {
				t.Errorf("appProtocol() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWorkloadRejects(t *testing.T) {
	ambient := map[string]string{labelDataplaneMode: "ambient"}
	tests := []struct {
		name string
		pod  *corev1.Pod
	}{
		{"no ip", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: ambient}}},
		{"bad ip", &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: ambient},
			Status:     corev1.PodStatus{PodIP: "not-an-ip"},
		}},
		{"succeeded", &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: ambient},
			Status:     corev1.PodStatus{PodIP: "10.0.0.1", Phase: corev1.PodSucceeded},
		}},
		{"not in mesh", &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p"},
			Status:     corev1.PodStatus{PodIP: "10.0.0.1"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if w, ok := Workload(PodInputs{Pod: tt.pod}, Options{}); ok {
				t.Errorf("Workload() = %v, true; want false", w)
			}
		})
	}
}

func TestPodServicesNamedPortOnNativeSidecar(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"app": "a"}},
		Spec: corev1.PodSpec{InitContainers: []corev1.Container{
			{Name: "init", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 1}}},
			{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 2}}},
		}},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "a"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("web")}},
		},
	}
	got := podServices(pod, []*corev1.Service{svc}, nil, "cluster.local")["ns/s.ns.svc.cluster.local"].GetPorts()
	if len(got) != 1 || got[0].TargetPort != 2 {
		t.Errorf("ports = %v, want one with target 2 (the native sidecar's)", got)
	}
}
