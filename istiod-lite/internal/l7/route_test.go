package l7

import (
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// fromYAML decodes a Gateway API object written as YAML, failing the test on error.
func fromYAML[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := yaml.UnmarshalStrict([]byte(s), &v); err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
	return v
}

// protoEqual fails t if got is not want (both given in protojson).
func protoEqual(t *testing.T, got proto.Message, wantJSON string) {
	t.Helper()
	want := got.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal([]byte(wantJSON), want); err != nil {
		t.Fatalf("bad expectation %s: %v", wantJSON, err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("got  %s\nwant %s", protojson.Format(got), protojson.Format(want))
	}
}

func TestPrecedence(t *testing.T) {
	older := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	newer := metav1.NewTime(older.Add(time.Hour))
	mk := func(name, match string, created metav1.Time, route string, rule int) entry {
		m := fromYAML[gatewayv1.HTTPRouteMatch](t, match)
		return entry{match: normalizeMatch(m), created: created, ns: "app", name: route, rule: rule, route: &routev3.Route{Name: name}}
	}
	tests := []struct {
		name string
		in   []entry // want: sorted to the names a, b, c...
	}{
		{"exact before prefix before regex", []entry{
			mk("c", "{path: {type: RegularExpression, value: /aaaaaaaaaa.*}}", older, "r", 0),
			mk("b", "{path: {type: PathPrefix, value: /a}}", older, "r", 1),
			mk("a", "{path: {type: Exact, value: /a}}", newer, "r", 2),
		}},
		{"longest prefix, trailing slash ignored", []entry{
			mk("c", "{path: {type: PathPrefix, value: /}}", older, "r", 0),
			mk("b", "{path: {type: PathPrefix, value: /ab/}}", older, "r", 1),
			mk("a", "{path: {type: PathPrefix, value: /abc}}", newer, "r", 2),
		}},
		{"method, then most headers, then most query params", []entry{
			mk("d", "{}", older, "r", 0),
			mk("c", "{queryParams: [{name: q, value: v}]}", older, "r", 1),
			mk("b", "{headers: [{name: h, value: v}]}", older, "r", 2),
			mk("a", "{method: GET}", newer, "r", 3),
		}},
		{"headers counted once per name", []entry{
			mk("b", "{headers: [{name: h, value: v}, {name: H, value: w}]}", older, "r", 0),
			mk("a", "{headers: [{name: h, value: v}, {name: i, value: w}]}", newer, "r", 1),
		}},
		{"oldest route, then namespace/name, then rule order", []entry{
			mk("c", "{}", newer, "a-route", 0),
			mk("b", "{}", older, "z-route", 0),
			mk("a", "{}", older, "y-route", 1),
			mk("d", "{}", newer, "a-route", 1),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := append([]entry(nil), tt.in...)
			sortEntries(es)
			var got []string
			for _, e := range es {
				got = append(got, e.route.Name)
			}
			want := "a b c d"[:2*len(got)-1]
			if strings.Join(got, " ") != want {
				t.Errorf("order %v, want %s", got, want)
			}
		})
	}
}

func TestRouteMatch(t *testing.T) {
	tests := []struct {
		name, match, want, err string
	}{
		{"default", `{}`, `{"prefix": "/"}`, ""},
		{"exact", `{path: {type: Exact, value: /a/}}`, `{"path": "/a/"}`, ""},
		{"prefix has segment semantics", `{path: {type: PathPrefix, value: /a/}}`, `{"pathSeparatedPrefix": "/a"}`, ""},
		{"root prefix", `{path: {type: PathPrefix, value: /}}`, `{"prefix": "/"}`, ""},
		{"regex", `{path: {type: RegularExpression, value: "/a[0-9]+"}}`, `{"safeRegex": {"regex": "/a[0-9]+"}}`, ""},
		{"bad regex", `{path: {type: RegularExpression, value: "/a("}}`, "", `path regular expression "/a("`},
		{"headers sorted, lowercased, first wins", `{headers: [{name: X-B, value: "1"}, {name: x-a, type: RegularExpression, value: "v.*"}, {name: x-b, value: "2"}]}`,
			`{"prefix": "/", "headers": [{"name": "x-a", "stringMatch": {"safeRegex": {"regex": "v.*"}}}, {"name": "x-b", "stringMatch": {"exact": "1"}}]}`, ""},
		{"header regex star is presence", `{headers: [{name: x, type: RegularExpression, value: "*"}]}`,
			`{"prefix": "/", "headers": [{"name": "x", "presentMatch": true}]}`, ""},
		{"bad header regex", `{headers: [{name: x, type: RegularExpression, value: "("}]}`, "", `header "x" regular expression`},
		{"method after headers", `{method: PUT, headers: [{name: x, value: "y"}]}`,
			`{"prefix": "/", "headers": [{"name": "x", "stringMatch": {"exact": "y"}}, {"name": ":method", "stringMatch": {"exact": "PUT"}}]}`, ""},
		{"query params, first wins", `{queryParams: [{name: a, value: "1"}, {name: b, type: RegularExpression, value: "x|y"}, {name: a, value: "2"}]}`,
			`{"prefix": "/", "queryParameters": [{"name": "a", "stringMatch": {"exact": "1"}}, {"name": "b", "stringMatch": {"safeRegex": {"regex": "x|y"}}}]}`, ""},
		{"bad query regex", `{queryParams: [{name: a, type: RegularExpression, value: "[a"}]}`, "", `query parameter "a" regular expression`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := routeMatch(normalizeMatch(fromYAML[gatewayv1.HTTPRouteMatch](t, tt.match)))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			protoEqual(t, got, tt.want)
		})
	}
}

// ruleRoute translates one rule of a route in namespace app for port 8080 against the
// Services app/web (port 8080) and other/api; it returns the first route and the issues.
func ruleRoute(t *testing.T, rule string) (*routev3.Route, []issue) {
	t.Helper()
	in := Input{Services: map[types.NamespacedName]Service{
		{Namespace: "app", Name: "web"}:   {Namespace: "app", Name: "web", Hostname: "web.app.svc.cluster.local", Ports: []int32{8080}},
		{Namespace: "other", Name: "api"}: {Namespace: "other", Name: "api", Hostname: "api.other.svc.cluster.local", Ports: []int32{80}},
	}}
	r := &gatewayv1.HTTPRoute{}
	r.Namespace, r.Name = "app", "r"
	r.Spec.Rules = []gatewayv1.HTTPRouteRule{fromYAML[gatewayv1.HTTPRouteRule](t, rule)}
	es, issues := routeEntries(in, r, 8080)
	if len(es) == 0 {
		return nil, issues
	}
	es[0].route.Match, es[0].route.Name = nil, ""
	return es[0].route, issues
}

func TestRule(t *testing.T) {
	const web = `"cluster": "outbound|8080||web.app.svc.cluster.local", "clusterNotFoundResponseCode": "INTERNAL_SERVER_ERROR", "timeout": "0s"`
	tests := []struct {
		name, rule, want string
		issues           []string // reasons
	}{
		{"single backend", `{backendRefs: [{name: web, port: 8080}]}`, `{"route": {` + web + `}}`, nil},
		{"cross-namespace backend", `{backendRefs: [{name: api, namespace: other, port: 80}]}`,
			`{"route": {"cluster": "outbound|80||api.other.svc.cluster.local", "clusterNotFoundResponseCode": "INTERNAL_SERVER_ERROR", "timeout": "0s"}}`, nil},
		{"no backends answer 500", `{}`, `{"directResponse": {"status": 500}}`, nil},
		{"missing backend answers 500", `{backendRefs: [{name: nope, port: 80}]}`, `{"directResponse": {"status": 500}}`, []string{"BackendNotFound"}},
		{"backend without port answers 500", `{backendRefs: [{name: web}]}`, `{"directResponse": {"status": 500}}`, []string{"BackendNotFound"}},
		{"unsupported kind", `{backendRefs: [{name: web, port: 8080}, {group: x.io, kind: Thing, name: t, port: 1}]}`,
			`{"route": {"clusterNotFoundResponseCode": "INTERNAL_SERVER_ERROR", "timeout": "0s", "weightedClusters": {"clusters": [
				{"name": "outbound|8080||web.app.svc.cluster.local", "weight": 1}, {"name": "outbound|1||t.app.thing.invalid", "weight": 1}]}}}`,
			[]string{"InvalidKind"}},
		{"extension ref answers 500", `{filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: F, name: f}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"directResponse": {"status": 500}}`, []string{"InvalidFilter"}},
		{"CORS answers 500", `{filters: [{type: CORS, cors: {allowOrigins: ["https://a.example"]}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"directResponse": {"status": 500}}`, []string{"InvalidFilter"}},
		{"unknown filter answers 500", `{filters: [{type: Teleport}], backendRefs: [{name: web, port: 8080}]}`,
			`{"directResponse": {"status": 500}}`, []string{"UnsupportedValue"}},
		{"bad header value answers 500", `{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: "a\nb"}]}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"directResponse": {"status": 500}, "requestHeadersToAdd": []}`, []string{"InvalidFilter"}},
		{"unsupported backend filter answers 500", `{backendRefs: [{name: web, port: 8080, filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web, port: 8080}}}]}]}`,
			`{"directResponse": {"status": 500}}`, []string{"InvalidFilter"}},
		{"header modifiers", `{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-A, value: "1"}], remove: [X-R, host]}}, {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-s, value: "2"}]}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"route": {` + web + `}, "requestHeadersToAdd": [{"header": {"key": "x-a", "value": "1"}}], "requestHeadersToRemove": ["x-r"],
			  "responseHeadersToAdd": [{"header": {"key": "x-s", "value": "2"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}]}`, nil},
		{"host header set rewrites host", `{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: Host, value: a.example}], set: [{name: host, value: b.example}]}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"route": {` + web + `, "hostRewriteLiteral": "b.example"}}`, nil},
		{"URL rewrite host wins over host header", `{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: host, value: b.example}]}}, {type: URLRewrite, urlRewrite: {hostname: c.example}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"route": {` + web + `, "hostRewriteLiteral": "c.example"}}`, nil},
		{"redirect keeps the request port", `{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]}`,
			`{"redirect": {"portRedirect": 8080}}`, nil},
		{"redirect scheme implies its port", `{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302}}]}`,
			`{"redirect": {"schemeRedirect": "https", "responseCode": "FOUND"}}`, nil},
		{"redirect default port left implicit", `{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 443, hostname: a.example}}]}`,
			`{"redirect": {"schemeRedirect": "https", "hostRedirect": "a.example", "responseCode": "FOUND"}}`, nil},
		{"redirect 308", `{filters: [{type: RequestRedirect, requestRedirect: {port: 9000, statusCode: 308, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]}`,
			`{"redirect": {"portRedirect": 9000, "responseCode": "PERMANENT_REDIRECT", "pathRedirect": "/x"}}`, nil},
		{"redirect bad code answers 500", `{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 399}}]}`,
			`{"directResponse": {"status": 500}}`, []string{"UnsupportedValue"}},
		{"mirror percent", `{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: api, namespace: other, port: 80}, percent: 25}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"route": {` + web + `, "requestMirrorPolicies": [{"cluster": "outbound|80||api.other.svc.cluster.local", "runtimeFraction": {"defaultValue": {"numerator": 25}}}]}}`, nil},
		{"mirror to missing backend is dropped", `{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nope, port: 80}}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"route": {` + web + `}}`, []string{"BackendNotFound"}},
		{"timeouts", `{timeouts: {request: 1m, backendRequest: 250ms}, backendRefs: [{name: web, port: 8080}]}`,
			`{"route": {"cluster": "outbound|8080||web.app.svc.cluster.local", "clusterNotFoundResponseCode": "INTERNAL_SERVER_ERROR", "timeout": "60s", "retryPolicy": {"perTryTimeout": "0.250s"}}}`, nil},
		{"bad timeout is left out", `{timeouts: {request: soon}, backendRefs: [{name: web, port: 8080}]}`,
			`{"route": {` + web + `}}`, []string{"UnsupportedValue"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, issues := ruleRoute(t, tt.rule)
			var reasons []string
			for _, i := range issues {
				reasons = append(reasons, string(i.reason))
			}
			if strings.Join(reasons, ",") != strings.Join(tt.issues, ",") {
				t.Errorf("issues %v, want reasons %v", issues, tt.issues)
			}
			protoEqual(t, got, tt.want)
		})
	}
}

func TestRewritePerMatch(t *testing.T) {
	tests := []struct {
		name, rule, want, err string
	}{
		{"replace prefix", `{matches: [{path: {type: PathPrefix, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b/}}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"prefixRewrite": "/b"}`, ""},
		{"remove prefix", `{matches: [{path: {type: PathPrefix, value: /a.b}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"regexRewrite": {"pattern": {"regex": "^/a\\.b(/?)(.*)"}, "substitution": "/\\2"}}`, ""},
		{"replace full path", `{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /z}}}], backendRefs: [{name: web, port: 8080}]}`,
			`{"regexRewrite": {"pattern": {"regex": "^/.*$"}, "substitution": "/z"}}`, ""},
		{"replace prefix of an exact match answers 500", `{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}], backendRefs: [{name: web, port: 8080}]}`,
			"", "needs a PathPrefix match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, issues := ruleRoute(t, tt.rule)
			if tt.err != "" {
				if len(issues) != 1 || !strings.Contains(issues[0].msg, tt.err) || got.GetDirectResponse().GetStatus() != 500 {
					t.Fatalf("got %v with issues %v, want 500 and an issue containing %q", got, issues, tt.err)
				}
				return
			}
			if len(issues) > 0 {
				t.Fatalf("issues %v", issues)
			}
			a := got.GetRoute()
			rewrite := &routev3.RouteAction{PrefixRewrite: a.GetPrefixRewrite(), RegexRewrite: a.GetRegexRewrite()}
			protoEqual(t, rewrite, tt.want)
		})
	}
}

func TestDomains(t *testing.T) {
	got := domains(Service{Namespace: "ns", Name: "a", Hostname: "a.ns.svc.cluster.local"}, 80)
	want := "a.ns.svc.cluster.local a.ns.svc.cluster.local:80 a.ns.svc a.ns.svc:80 a.ns a.ns:80 a a:80"
	if strings.Join(got, " ") != want {
		t.Errorf("domains %v, want %s", got, want)
	}
	got = domains(Service{Namespace: "ns", Name: "a", Hostname: "a.example.com"}, 80)
	if strings.Join(got, " ") != "a.example.com a.example.com:80" {
		t.Errorf("domains of a non-cluster hostname %v", got)
	}
}

func TestAttached(t *testing.T) {
	svc := Service{Namespace: "app", Name: "web", Hostname: "web.app.svc.cluster.local", Ports: []int32{80, 81}}
	tests := []struct {
		name, ns, parent string
		port             int32
		want             bool
	}{
		{"same namespace", "app", `{kind: Service, name: web}`, 80, true},
		{"core group", "app", `{group: core, kind: Service, name: web}`, 80, true},
		{"port given", "app", `{kind: Service, name: web, port: 81}`, 81, true},
		{"other port", "app", `{kind: Service, name: web, port: 81}`, 80, false},
		{"waypoint namespace", "mesh", `{kind: Service, name: web, namespace: app}`, 80, true},
		{"consumer namespace", "client", `{kind: Service, name: web, namespace: app}`, 80, false},
		{"a Gateway parent", "app", `{name: web}`, 80, false},
		{"another Service", "app", `{kind: Service, name: api}`, 80, false},
		{"another group", "app", `{group: x.io, kind: Service, name: web}`, 80, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &gatewayv1.HTTPRoute{}
			r.Namespace = tt.ns
			r.Spec.ParentRefs = []gatewayv1.ParentReference{fromYAML[gatewayv1.ParentReference](t, tt.parent)}
			rt := newRouter(Input{Gateway: types.NamespacedName{Namespace: "mesh", Name: "waypoint"}})
			if got := rt.attached(r, svc, tt.port); got != tt.want {
				t.Errorf("attached = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMirrorFraction(t *testing.T) {
	tests := []struct{ filter, want string }{
		{`{backendRef: {name: a}}`, `{"defaultValue": {"numerator": 100}}`},
		{`{backendRef: {name: a}, percent: 5}`, `{"defaultValue": {"numerator": 5}}`},
		{`{backendRef: {name: a}, fraction: {numerator: 7}}`, `{"defaultValue": {"numerator": 7}}`},
		{`{backendRef: {name: a}, fraction: {numerator: 1, denominator: 8}}`, `{"defaultValue": {"numerator": 125000, "denominator": "MILLION"}}`},
	}
	for _, tt := range tests {
		protoEqual(t, mirrorFraction(ptr.To(fromYAML[gatewayv1.HTTPRequestMirrorFilter](t, tt.filter))), tt.want)
	}
}
