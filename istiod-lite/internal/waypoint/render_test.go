package waypoint

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

var testRender = RenderOptions{
	Image:        "ambient-lite.local/waypoint:dev",
	CAAddress:    "istiod.istio-system.svc:15012",
	XDSAddress:   "istiod.istio-system.svc:15012",
	CAServerName: "istiod.istio-system.svc",
	TrustDomain:  "cluster.local",
}

// TestRender renders testdata/<case>-in.yaml (one Gateway) and compares the ServiceAccount,
// Deployment and Service with testdata/<case>.yaml.
func TestRender(t *testing.T) {
	tests := []struct {
		name string
		opts RenderOptions
	}{
		{name: "waypoint", opts: testRender},
		{name: "overrides", opts: RenderOptions{Image: "registry.example/waypoint:1.0", PullPolicy: corev1.PullAlways,
			CAAddress: "ca.example:15012", XDSAddress: "xds.example:15012"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := readInput(t, tt.name)
			objs := Render(in.gateway, tt.opts)
			testenv.Golden(t, filepath.Join("testdata", tt.name+".yaml"), toYAML(t, objs.ServiceAccount, objs.Deployment, objs.Service), *update)
		})
	}
}

// TestGatewayStatus computes the status of testdata/status-<case>-in.yaml (a Gateway with its
// current status, and the Service and EndpointSlices when present) and compares it with
// testdata/status-<case>.yaml.
func TestGatewayStatus(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, name := range []string{"no-service", "no-endpoints", "ready", "keeps-addresses", "bad-listener", "missing-port"} {
		t.Run(name, func(t *testing.T) {
			in := readInput(t, "status-"+name)
			got := GatewayStatus(in.gateway, in.observed, DefaultClusterDomain, now)
			testenv.Golden(t, filepath.Join("testdata", "status-"+name+".yaml"), toYAML(t, got), *update)
		})
	}
}

func TestClassStatus(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	before := metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	tests := []struct {
		name     string
		existing []metav1.Condition
		want     metav1.Time
	}{
		{name: "new", want: metav1.NewTime(now)},
		{name: "pending default", existing: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionUnknown, LastTransitionTime: before}}, want: metav1.NewTime(now)},
		{name: "already accepted", existing: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, LastTransitionTime: before}}, want: before},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gc := &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: ClassName, Generation: 4}, Status: gatewayv1.GatewayClassStatus{Conditions: tt.existing}}
			got := ClassStatus(gc, now)
			conds := got.Status.Conditions
			if len(conds) != 1 {
				t.Fatalf("conditions = %d, want 1", len(conds))
			}
			c := conds[0]
			if *c.Type != "Accepted" || *c.Status != metav1.ConditionTrue || *c.Reason != "Accepted" || *c.ObservedGeneration != 4 ||
				*c.Message != "Handled by Istio controller" || !c.LastTransitionTime.Equal(&tt.want) {
				t.Errorf("condition = %s", toYAML(t, c))
			}
		})
	}
}

func TestServicePortNames(t *testing.T) {
	long := strings.Repeat("a", 70)
	tests := []struct {
		name      string
		listeners []gatewayv1.Listener
		want      []string
	}{
		{"mesh", []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: ProtocolHBONE}}, []string{"status-port/15021/tcp", "mesh/15008/hbone"}},
		{"dots and duplicate ports", []gatewayv1.Listener{{Name: "a.b", Port: 15008, Protocol: ProtocolHBONE}, {Name: "c", Port: 15008, Protocol: "HTTP"}},
			[]string{"status-port/15021/tcp", "a-b/15008/hbone"}},
		{"name clash with status-port", []gatewayv1.Listener{{Name: "status-port", Port: 15008, Protocol: ProtocolHBONE}},
			[]string{"status-port/15021/tcp", "status-port-15008/15008/hbone"}},
		{"long names cut to 63", []gatewayv1.Listener{{Name: gatewayv1.SectionName(long), Port: 1, Protocol: "TCP"}, {Name: gatewayv1.SectionName(long + "b"), Port: 2, Protocol: "TCP"}},
			[]string{"status-port/15021/tcp", long[:63] + "/1/tcp", long[:61] + "-2/2/tcp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, p := range servicePorts(&gatewayv1.Gateway{Spec: gatewayv1.GatewaySpec{Listeners: tt.listeners}}) {
				got = append(got, fmt.Sprintf("%s/%d/%s", *p.Name, *p.Port, *p.AppProtocol))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("ports = %v, want %v", got, tt.want)
			}
		})
	}
}

type input struct {
	gateway  *gatewayv1.Gateway
	observed Observed
}

// readInput decodes testdata/<name>-in.yaml: one Gateway, at most one Service, EndpointSlices.
func readInput(t *testing.T, name string) input {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+"-in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var in input
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch tm.Kind {
		case "Gateway":
			in.gateway = &gatewayv1.Gateway{}
			obj = in.gateway
		case "Service":
			in.observed.Service = &corev1.Service{}
			obj = in.observed.Service
		case "EndpointSlice":
			s := &discoveryv1.EndpointSlice{}
			in.observed.EndpointSlices = append(in.observed.EndpointSlices, s)
			obj = s
		default:
			t.Fatalf("%s-in.yaml: unexpected kind %q", name, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s-in.yaml: %v", name, err)
		}
	}
	if in.gateway == nil {
		t.Fatalf("%s-in.yaml has no Gateway", name)
	}
	return in
}

func toYAML(t *testing.T, objs ...any) []byte {
	t.Helper()
	var out bytes.Buffer
	for i, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(b)
	}
	return out.Bytes()
}

func TestStatusCurrent(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	in := readInput(t, "status-ready")
	want := GatewayStatus(in.gateway, in.observed, DefaultClusterDomain, now).Status
	applied := func() gatewayv1.GatewayStatus {
		var s gatewayv1.GatewayStatus
		if !convert(want, &s) {
			t.Fatal("converting the status")
		}
		return s
	}
	tests := []struct {
		name   string
		mutate func(s *gatewayv1.GatewayStatus)
		want   bool
	}{
		{"as applied", func(*gatewayv1.GatewayStatus) {}, true},
		{"another controller's condition", func(s *gatewayv1.GatewayStatus) {
			s.Conditions = append(s.Conditions, metav1.Condition{Type: "example.com/Extra", Status: metav1.ConditionTrue})
		}, true},
		{"a message changed", func(s *gatewayv1.GatewayStatus) { s.Conditions[1].Message = "old" }, false},
		{"a condition missing", func(s *gatewayv1.GatewayStatus) { s.Conditions = s.Conditions[:2] }, false},
		{"a transition time changed", func(s *gatewayv1.GatewayStatus) {
			s.Conditions[0].LastTransitionTime = metav1.NewTime(now.Add(time.Hour))
		}, false},
		{"no addresses yet", func(s *gatewayv1.GatewayStatus) { s.Addresses = nil }, false},
		{"a removed listener still reported", func(s *gatewayv1.GatewayStatus) {
			s.Listeners = append(s.Listeners, gatewayv1.ListenerStatus{Name: "gone"})
		}, false},
		{"attached routes differ", func(s *gatewayv1.GatewayStatus) { s.Listeners[0].AttachedRoutes = 7 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			have := applied()
			tt.mutate(&have)
			if got := StatusCurrent(have, want); got != tt.want {
				t.Errorf("StatusCurrent = %v, want %v", got, tt.want)
			}
		})
	}
}
