package l7

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// TestGolden translates testdata/<case>-in.yaml (Services, one Gateway, HTTPRoutes,
// AuthorizationPolicies; a Service is bound when labelled istio.io/use-waypoint with the
// Gateway's name) and compares the resources, errors and route statuses with
// testdata/<case>.yaml. Every resource must pass go-control-plane's validation.
func TestGolden(t *testing.T) {
	for _, name := range []string{"no-routes", "routes", "filters", "backends", "policies", "trust-domain"} {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", name+"-in.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			in, err := decodeInput(raw)
			if err != nil {
				t.Fatalf("decoding %s-in.yaml: %v", name, err)
			}
			out := Translate(in)
			for n, rc := range out.Resources {
				validate(t, n, rc)
			}
			got, err := render(in, out)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Golden(t, filepath.Join("testdata", name+".yaml"), got, *update)
		})
	}
}

// validate runs the generated validators on rc and on the RBACPerRoute it carries.
func validate(t *testing.T, name string, rc *routev3.RouteConfiguration) {
	t.Helper()
	if err := rc.ValidateAll(); err != nil {
		t.Errorf("resource %s is invalid: %v", name, err)
	}
	for _, vh := range rc.GetVirtualHosts() {
		for key, a := range vh.GetTypedPerFilterConfig() {
			per := &rbachttp.RBACPerRoute{}
			if err := a.UnmarshalTo(per); err != nil {
				t.Errorf("resource %s virtual host %s %s: %v", name, vh.GetName(), key, err)
				continue
			}
			if err := per.ValidateAll(); err != nil {
				t.Errorf("resource %s virtual host %s %s is invalid: %v", name, vh.GetName(), key, err)
			}
		}
	}
}

const labelUseWaypoint = "istio.io/use-waypoint"

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func decodeInput(raw []byte) (Input, error) {
	var in Input
	in.Services = map[types.NamespacedName]Service{}
	var gateways []*gatewayv1.Gateway
	for i, doc := range docSeparator.Split(string(raw), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return in, fmt.Errorf("document %d: %w", i, err)
		}
		var err error
		switch tm.Kind {
		case "":
			continue
		case "Options":
			var o struct {
				Kind         string `json:"kind"`
				TrustDomain  string `json:"trustDomain"`
				DomainSuffix string `json:"domainSuffix"`
			}
			err = yaml.UnmarshalStrict([]byte(doc), &o)
			in.TrustDomain, in.DomainSuffix = o.TrustDomain, o.DomainSuffix
		case "Service":
			s := &corev1.Service{}
			if err = yaml.UnmarshalStrict([]byte(doc), s); err == nil {
				svc := Service{Namespace: s.Namespace, Name: s.Name, Hostname: fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, in.domainSuffix())}
				for _, p := range s.Spec.Ports {
					svc.Ports = append(svc.Ports, p.Port)
				}
				if w := s.Labels[labelUseWaypoint]; w != "" {
					svc.Waypoint = types.NamespacedName{Namespace: s.Namespace, Name: w}
				}
				in.Services[svc.key()] = svc
			}
		case "Gateway":
			g := &gatewayv1.Gateway{}
			err = yaml.UnmarshalStrict([]byte(doc), g)
			gateways = append(gateways, g)
		case "HTTPRoute":
			r := &gatewayv1.HTTPRoute{}
			err = yaml.UnmarshalStrict([]byte(doc), r)
			in.HTTPRoutes = append(in.HTTPRoutes, r)
		case "AuthorizationPolicy":
			p := &securityclient.AuthorizationPolicy{}
			err = yaml.UnmarshalStrict([]byte(doc), p)
			in.AuthorizationPolicies = append(in.AuthorizationPolicies, p)
		default:
			err = fmt.Errorf("unsupported kind %q", tm.Kind)
		}
		if err != nil {
			return in, fmt.Errorf("document %d: %w", i, err)
		}
	}
	if len(gateways) != 1 {
		return in, fmt.Errorf("want one Gateway, got %d", len(gateways))
	}
	in.Gateway = types.NamespacedName{Namespace: gateways[0].Namespace, Name: gateways[0].Name}
	for _, s := range in.Services {
		if s.Waypoint == in.Gateway {
			in.Bound = append(in.Bound, s)
		}
	}
	slices.SortFunc(in.Bound, func(a, b Service) int { return cmpString(a.Hostname, b.Hostname) })
	return in, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// render writes the resources (by name), the errors and every route's status as YAML;
// sigs.k8s.io/yaml sorts keys, so the output is stable whatever protojson's spacing.
func render(in Input, out Output) ([]byte, error) {
	doc := struct {
		Resources map[string]json.RawMessage               `json:"resources"`
		Errors    []string                                 `json:"errors,omitempty"`
		Status    map[string][]gatewayv1.RouteParentStatus `json:"status,omitempty"`
	}{Resources: map[string]json.RawMessage{}, Status: map[string][]gatewayv1.RouteParentStatus{}}
	for name, rc := range out.Resources {
		b, err := protojson.Marshal(rc)
		if err != nil {
			return nil, fmt.Errorf("marshaling %s: %w", name, err)
		}
		doc.Resources[name] = b
	}
	for _, e := range out.Errors {
		doc.Errors = append(doc.Errors, e.Error())
	}
	for _, r := range in.HTTPRoutes {
		doc.Status[r.Namespace+"/"+r.Name] = HTTPRouteStatus(r, in.Services, in.DomainSuffix)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}
