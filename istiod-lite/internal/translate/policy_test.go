package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestPolicyGolden translates testdata/policy-<case>-in.yaml (AuthorizationPolicies,
// PeerAuthentications, and Pods standing for workloads) and compares with
// testdata/policy-<case>.yaml: the Authorizations served, sorted by key; the skipped policies
// with their reasons; and each pod's Workload.AuthorizationPolicies keys.
func TestPolicyGolden(t *testing.T) {
	tests := []struct {
		name string
		opts PolicyOptions
	}{
		{name: "global-deny"},
		{name: "namespace-allow-principals-namespaces"},
		{name: "selector-allow-ports-ipblocks"},
		{name: "not-principals-not-namespaces"},
		{name: "service-accounts"},
		{name: "when-conditions"},
		{name: "l7-allow-rule-dropped"},
		{name: "l7-deny-rule-fails-closed-matches-all"},
		{name: "audit-custom-skipped"},
		{name: "target-refs-waypoint"},
		{name: "dry-run-disabled"},
		{name: "dry-run-enabled", opts: PolicyOptions{DryRun: true}},
		{name: "custom-root-namespace", opts: PolicyOptions{RootNamespace: "mesh-root"}},
		{name: "peer-authentication-strict"},
		{name: "peer-authentication-strict-port-permissive"},
		{name: "peer-authentication-permissive-port-strict"},
		{name: "peer-authentication-unset-under-strict-mesh"},
		{name: "peer-authentication-disable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", "policy-"+tt.name+"-in.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decodePolicyObjects(in)
			if err != nil {
				t.Fatalf("decoding policy-%s-in.yaml: %v", tt.name, err)
			}
			got, err := renderPolicies(objs, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Golden(t, filepath.Join("testdata", "policy-"+tt.name+".yaml"), got, *update)
		})
	}
}

type policyObjects struct {
	aps  []*securityclient.AuthorizationPolicy
	pas  []*securityclient.PeerAuthentication
	pods []*corev1.Pod
}

func decodePolicyObjects(in []byte) (policyObjects, error) {
	var objs policyObjects
	err := decodeDocs(in, func(kind string, doc []byte) error {
		switch kind {
		case "AuthorizationPolicy":
			ap := &securityclient.AuthorizationPolicy{}
			objs.aps = append(objs.aps, ap)
			return yaml.UnmarshalStrict(doc, ap)
		case "PeerAuthentication":
			pa := &securityclient.PeerAuthentication{}
			objs.pas = append(objs.pas, pa)
			return yaml.UnmarshalStrict(doc, pa)
		case "Pod":
			pod := &corev1.Pod{}
			objs.pods = append(objs.pods, pod)
			return yaml.UnmarshalStrict(doc, pod)
		}
		return fmt.Errorf("unsupported kind %q", kind)
	})
	return objs, err
}

// renderPolicies writes the translation as YAML; sigs.k8s.io/yaml sorts map keys, and
// Policies sorts the Authorizations, so the output is stable.
func renderPolicies(objs policyObjects, opts PolicyOptions) ([]byte, error) {
	auths, skipped := Policies(objs.aps, objs.pas, opts)
	out := struct {
		Authorizations []json.RawMessage   `json:"authorizations"`
		Skipped        []Skipped           `json:"skipped,omitempty"`
		Workloads      map[string][]string `json:"workloadPolicies,omitempty"`
	}{Authorizations: []json.RawMessage{}}
	for _, a := range auths {
		b, err := protojson.Marshal(a)
		if err != nil {
			return nil, fmt.Errorf("marshaling authorization %s/%s: %w", a.Namespace, a.Name, err)
		}
		out.Authorizations = append(out.Authorizations, b)
	}
	out.Skipped = skipped
	if len(objs.pods) > 0 {
		out.Workloads = map[string][]string{}
	}
	for _, pod := range objs.pods {
		keys := WorkloadPolicies(pod.Namespace, pod.Labels, objs.aps, objs.pas, opts)
		if keys == nil {
			keys = []string{}
		}
		out.Workloads[pod.Namespace+"/"+pod.Name] = keys
	}
	j, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

func TestAuthorizationPolicyErrors(t *testing.T) {
	ap := func(y string) *securityclient.AuthorizationPolicy {
		t.Helper()
		p := &securityclient.AuthorizationPolicy{}
		if err := yaml.Unmarshal([]byte(y), p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const head = "metadata: {name: p, namespace: ns}\nspec:\n"
	tests := []struct {
		name    string
		policy  string
		wantIs  error
		wantMsg string
	}{
		{"audit", head + "  action: AUDIT\n", ErrUnsupportedAction, "authorization policy ns/p"},
		{"custom", head + "  action: CUSTOM\n  provider: {name: x}\n", ErrUnsupportedAction, "CUSTOM"},
		{"targetRef", head + "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: w}\n", ErrWaypointPolicy, "ns/p"},
		{"targetRefs", head + "  targetRefs: [{kind: Service, group: '', name: s}]\n", ErrWaypointPolicy, "ns/p"},
		{"bad port", head + "  rules: [{to: [{operation: {ports: ['80', 'http']}}]}]\n", nil, `rule 0: to 0: ports: port "http"`},
		{"port too large", head + "  rules: [{to: [{operation: {notPorts: ['70000']}}]}]\n", nil, "notPorts"},
		{"bad ip block", head + "  rules: [{from: [{source: {ipBlocks: ['10.0.0.0/33']}}]}]\n", nil, `ipBlocks: "10.0.0.0/33"`},
		{"bad when ip", head + "  rules: [{when: [{key: destination.ip, notValues: ['x']}]}]\n", nil, "when 0 (destination.ip): notValues"},
		{"bad when port", head + "  rules: [{when: [{key: destination.port, values: ['-1']}]}]\n", nil, "when 0 (destination.port): values"},
		{"bad dry-run annotation", "metadata: {name: p, namespace: ns, annotations: {istio.io/dry-run: maybe}}\n", nil, "istio.io/dry-run"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AuthorizationPolicy(ap(tt.policy), PolicyOptions{})
			if err == nil {
				t.Fatalf("AuthorizationPolicy() = %v, nil; want error", got)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q is not %v", err, tt.wantIs)
			}
			if !bytes.Contains([]byte(err.Error()), []byte(tt.wantMsg)) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			if !bytes.Contains([]byte(err.Error()), []byte("ns/p")) {
				t.Errorf("error %q does not name the policy", err)
			}
		})
	}
}

func TestL7Attributes(t *testing.T) {
	p := &securityclient.AuthorizationPolicy{}
	err := yaml.Unmarshal([]byte(`
spec:
  rules:
  - to: [{operation: {methods: [GET], ports: ["80"]}}]
    from: [{source: {requestPrincipals: ["*"], remoteIpBlocks: [1.2.3.4]}}]
    when: [{key: "request.headers[x]", values: [v]}, {key: source.ip, values: [1.2.3.4]}]
  - to: [{operation: {paths: [/a], methods: [POST]}}]
    from: [{source: {trustDomains: [td]}}]
`), p)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(L7Attributes(p))
	want := "[methods paths remoteIpBlocks request.headers[x] requestPrincipals trustDomains]"
	if got != want {
		t.Errorf("L7Attributes() = %s, want %s", got, want)
	}
}
