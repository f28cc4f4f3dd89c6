package netns

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// l7MeshConfig is the mesh of TestWaypointL7, as both ztunnels read it and as the test xDS
// server serves it to the waypoint. Node A: client (sa sleep) and client-other (sa other).
// Node B: echo-v1, echo-v2 (both behind Service echo, which uses the waypoint), mirror,
// and the waypoint pod (not captured, like Istio's), named by its Service VIP 10.96.0.30.
var l7MeshConfig = fmt.Sprintf(`
workloads:
- uid: Kubernetes//Pod/default/client
  name: client
  namespace: default
  serviceAccount: sleep
  workloadName: client
  canonicalName: client
  addresses: [10.10.1.2]
  tunnelProtocol: HBONE
  node: node-a
- uid: Kubernetes//Pod/default/client-other
  name: client-other
  namespace: default
  serviceAccount: other
  workloadName: client-other
  canonicalName: client-other
  addresses: [10.10.6.2]
  tunnelProtocol: HBONE
  node: node-a
- uid: Kubernetes//Pod/default/echo-v1
  name: echo-v1
  namespace: default
  serviceAccount: echo
  workloadName: echo-v1
  canonicalName: echo
  canonicalRevision: v1
  addresses: [10.10.2.2]
  tunnelProtocol: HBONE
  node: node-b
  services:
    default/echo.default.svc.cluster.local: {}
    default/echo-v1.default.svc.cluster.local: {}
- uid: Kubernetes//Pod/default/echo-v2
  name: echo-v2
  namespace: default
  serviceAccount: echo
  workloadName: echo-v2
  canonicalName: echo
  canonicalRevision: v2
  addresses: [10.10.4.2]
  tunnelProtocol: HBONE
  node: node-b
  services:
    default/echo.default.svc.cluster.local: {}
    default/echo-v2.default.svc.cluster.local: {}
- uid: Kubernetes//Pod/default/mirror
  name: mirror
  namespace: default
  serviceAccount: mirror
  workloadName: mirror
  canonicalName: mirror
  addresses: [10.10.5.2]
  tunnelProtocol: HBONE
  node: node-b
  services:
    default/mirror.default.svc.cluster.local: {}
- uid: Kubernetes//Pod/default/waypoint
  name: waypoint
  namespace: default
  serviceAccount: waypoint
  workloadName: waypoint
  canonicalName: waypoint
  addresses: [10.10.3.2]
  node: node-b
  services:
    default/waypoint.default.svc.cluster.local: {}
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: [10.96.0.20]
  ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: {address: {address: %[1]q}, hboneMtlsPort: 15008}
- name: echo-v1
  namespace: default
  hostname: echo-v1.default.svc.cluster.local
  addresses: [10.96.0.21]
  ports: [{servicePort: 80, targetPort: 8080}]
- name: echo-v2
  namespace: default
  hostname: echo-v2.default.svc.cluster.local
  addresses: [10.96.0.22]
  ports: [{servicePort: 80, targetPort: 8080}]
- name: mirror
  namespace: default
  hostname: mirror.default.svc.cluster.local
  addresses: [10.96.0.23]
  ports: [{servicePort: 80, targetPort: 8080}]
- name: waypoint
  namespace: default
  hostname: waypoint.default.svc.cluster.local
  addresses: [10.96.0.30]
  ports: [{servicePort: 15021, targetPort: 15021}, {servicePort: 15008, targetPort: 15008}]
`, base64.StdEncoding.EncodeToString(netip.MustParseAddr("10.96.0.30").AsSlice()))

// l7Route is the HTTPRoute on Service echo: an 80/20 split by default, a header match and
// a path match, a redirect, a rewrite and a mirror.
const l7Route = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80, weight: 80}, {name: echo-v2, port: 80, weight: 20}]
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /pinned}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: redirected.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: mirror, port: 80}}
    backendRefs: [{name: echo-v1, port: 80}]
`

// l7Policies are L7 AuthorizationPolicies on the waypoint (targetRefs to its Gateway):
// DENY /admin/*, ALLOW only the client's principal.
var l7Policies = []string{`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
`, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]
`}

// l7Mesh is TestWaypointL7's topology.
type l7Mesh struct {
	*mesh
	clientOther, serverV2, mirror, waypoint string
	v1, v2, mirrorRec                       *recorder
	xds                                     *xdsServer
}

// newL7Mesh builds the two nodes of newMeshWith, adds client-other on node A, echo-v2 and
// mirror and the real waypoint binary on node B, and configures the waypoint over delta xDS
// with the workloads and the RouteConfigurations l7.Translate makes of l7Route and
// l7Policies.
func newL7Mesh(t *testing.T) *l7Mesh {
	t.Helper()
	ca := testca.Start(t)
	m := &l7Mesh{mesh: newMeshWith(t, node{ca: ca, config: l7MeshConfig}, node{ca: ca, config: l7MeshConfig})}
	tp := m.tp
	m.clientOther, m.serverV2, m.mirror, m.waypoint = tp.Namespace("client-other"), tp.Namespace("echo-v2"), tp.Namespace("mirror"), tp.Namespace("waypoint")
	tp.Link(m.clientOther, "eth0", "10.10.6.2/24", m.nodeA, "vclient2", "10.10.6.1/24")
	tp.Link(m.serverV2, "eth0", "10.10.4.2/24", m.nodeB, "vserver2", "10.10.4.1/24")
	tp.Link(m.mirror, "eth0", "10.10.5.2/24", m.nodeB, "vmirror", "10.10.5.1/24")
	tp.Link(m.waypoint, "eth0", "10.10.3.2/24", m.nodeB, "vwaypoint", "10.10.3.1/24")
	tp.Route(m.clientOther, "default", "10.10.6.1")
	tp.Route(m.serverV2, "default", "10.10.4.1")
	tp.Route(m.mirror, "default", "10.10.5.1")
	tp.Route(m.waypoint, "default", "10.10.3.1")
	for _, cidr := range []string{"10.10.3.0/24", "10.10.4.0/24", "10.10.5.0/24"} {
		tp.Route(m.nodeA, cidr, "10.0.0.2")
	}
	tp.Route(m.nodeB, "10.10.6.0/24", "10.0.0.1")
	// Node A captures client-other too; node B sends HBONE for any of its pods, from node A
	// or from the waypoint, to ztunnel's inbound port.
	nft(t, tp, m.nodeA, `add rule ip mesh prerouting iifname "vclient2" meta l4proto tcp redirect to :15001`)
	nft(t, tp, m.nodeB, `add rule ip mesh prerouting iifname { "eth0", "vwaypoint" } ip daddr { 10.10.2.0/24, 10.10.4.0/24, 10.10.5.0/24 } tcp dport 15008 redirect to :15008`)

	m.v1 = recordingServer(t, tp, m.server, "10.10.2.2:8080", "echo-v1")
	m.v2 = recordingServer(t, tp, m.serverV2, "10.10.4.2:8080", "echo-v2")
	m.mirrorRec = recordingServer(t, tp, m.mirror, "10.10.5.2:8080", "mirror")

	// The waypoint's configuration, as istiod-lite would make it.
	svc := func(name string, waypoint bool) l7Service {
		s := l7Service{Namespace: "default", Name: name, Hostname: name + ".default.svc.cluster.local", Ports: []int32{80}}
		if waypoint {
			s.Waypoint = types.NamespacedName{Namespace: "default", Name: "waypoint"}
		}
		return s
	}
	in := l7Input{
		Gateway:    types.NamespacedName{Namespace: "default", Name: "waypoint"},
		Bound:      []l7Service{svc("echo", true)},
		Services:   []l7Service{svc("echo", true), svc("echo-v1", false), svc("echo-v2", false), svc("mirror", false)},
		HTTPRoutes: []*gatewayv1.HTTPRoute{decodeYAML[gatewayv1.HTTPRoute](t, l7Route)},
	}
	for _, p := range l7Policies {
		in.AuthorizationPolicies = append(in.AuthorizationPolicies, decodeYAML[securityclient.AuthorizationPolicy](t, p))
	}
	rcs := translateL7(t, in)
	for _, want := range []string{"default/echo.default.svc.cluster.local", "gateway/default/waypoint"} {
		if rcs[want] == nil {
			t.Fatalf("l7.Translate made no %s (made %d resources)", want, len(rcs))
		}
	}
	resources := map[string]map[string]proto.Message{addressTypeURL: {}, routeTypeURL: {}}
	for name, a := range addressesFromLocalConfig(t, l7MeshConfig) {
		resources[addressTypeURL][name] = a
	}
	for name, rc := range rcs {
		resources[routeTypeURL][name] = rc
	}
	m.xds = startXDS(t, ca, resources)

	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("waypoint-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	startIn(t, tp, m.waypoint, "waypoint", []string{
		"XDS_ADDRESS=" + m.xds.Address, "CA_ADDRESS=" + ca.Address, "CA_SERVER_NAME=" + testca.ServerName,
		"ROOT_CERT_PATH=" + ca.RootPath, "TOKEN_PATH=" + token, "POD_NAME=waypoint", "POD_NAMESPACE=default",
		"INSTANCE_IP=10.10.3.2", "GATEWAY_NAME=waypoint", "SERVICE_ACCOUNT=waypoint", "LOG_LEVEL=debug", "DRAIN_DURATION=1s",
		"GODEBUG=" + envconfig.DataPlaneGODEBUG, // as deployed
	}, buildWaypoint(t))
	m.waitReady(t, m.waypoint)
	return m
}

// l7Response is what a client got.
type l7Response struct {
	code   int
	body   string
	header http.Header
}

// l7Client sends requests from a pod to Service echo's VIP, with its hostname as Host, and
// does not follow redirects. keepAlive reuses connections (the waypoint chooses per request).
func (m *l7Mesh) l7Client(ns string, keepAlive bool) *http.Client {
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{DialContext: m.tp.DialContext(ns), DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 4},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// h2cClient sends HTTP/2 with prior knowledge (h2c) from a pod.
func (m *l7Mesh) h2cClient(ns string) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: m.tp.DialContext(ns), Protocols: &protos}}
}

func (m *l7Mesh) do(t *testing.T, c *http.Client, path string, header http.Header) l7Response {
	t.Helper()
	return m.send(t, c, http.MethodGet, path, header, "")
}

// send sends one request to Service echo and returns the answer.
func (m *l7Mesh) send(t *testing.T, c *http.Client, method, path string, header http.Header, body string) l7Response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://10.96.0.20"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "echo.default.svc.cluster.local"
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return l7Response{code: resp.StatusCode, body: string(got), header: resp.Header}
}

// TestWaypointL7 is issue 11's end-to-end acceptance test: client pod → ztunnel A (captured)
// → HBONE → the real waypoint binary (certificate from the CA, configuration over delta xDS
// from l7.Translate of an HTTPRoute and AuthorizationPolicies) → HBONE → ztunnel B → server
// pods that record what they receive. It checks a weighted split, header and path matches,
// a redirect, a rewrite, a mirror, L7 DENY and ALLOW policies, and that only HBONE on port
// 15008 crosses between the machines.
func TestWaypointL7(t *testing.T) {
	m := newL7Mesh(t)

	nodes, auth := m.xds.seen()
	if len(nodes) == 0 || !strings.HasPrefix(nodes[0], "waypoint~10.10.3.2~waypoint.default~") {
		t.Errorf("xDS node ids = %q, want waypoint~10.10.3.2~waypoint.default~default.svc.cluster.local", nodes)
	}
	if len(auth) == 0 || auth[0] != "Bearer waypoint-token" {
		t.Errorf("xDS stream authorization = %q, want the waypoint's token", auth)
	}

	// Everything between node A and node B, and between node B and the waypoint pod.
	captures := []*capture{
		startCapture(t, m.tp, m.nodeA, "eth0", "node A to node B"),
		startCapture(t, m.tp, m.nodeB, "vwaypoint", "node B to the waypoint"),
	}
	secret := make([]byte, 12)
	_, _ = rand.Read(secret)
	marker := "l7-marker-" + hex.EncodeToString(secret)
	markHeader := http.Header{"X-Test-Marker": {marker}}
	client := m.l7Client(m.client, true)

	t.Run("split 80/20", func(t *testing.T) {
		const n = 1000
		counts := map[string]int{}
		for i := range n {
			r := m.do(t, client, fmt.Sprintf("/split/%s/%d", marker, i), markHeader)
			if r.code != http.StatusOK {
				t.Fatalf("request %d: %d %q", i, r.code, r.body)
			}
			counts[r.body]++
		}
		v1, v2 := counts["echo-v1"], counts["echo-v2"]
		p1, p2 := 100*float64(v1)/n, 100*float64(v2)/n
		t.Logf("split over %d requests: echo-v1 %d (%.1f%%, want 80±5), echo-v2 %d (%.1f%%, want 20±5)", n, v1, p1, v2, p2)
		if v1+v2 != n {
			t.Errorf("answers other than echo-v1 and echo-v2: %v", counts)
		}
		if math.Abs(p1-80) > 5 || math.Abs(p2-20) > 5 {
			t.Errorf("split echo-v1 %.1f%% / echo-v2 %.1f%%, want 80/20 within 5 points", p1, p2)
		}
		// The servers agree with the answers, and saw what the waypoint forwards.
		s1, s2 := m.v1.matching("/split/"+marker+"/"), m.v2.matching("/split/"+marker+"/")
		if len(s1) != v1 || len(s2) != v2 {
			t.Errorf("servers saw echo-v1 %d, echo-v2 %d requests; the client counted %d and %d", len(s1), len(s2), v1, v2)
		}
		if len(s1) > 0 {
			q := s1[0]
			if q.Host != "echo.default.svc.cluster.local" || q.Header.Get("X-Test-Marker") != marker ||
				q.Header.Get("X-Forwarded-For") != "10.10.1.2" || q.Header.Get("X-Request-Id") == "" {
				t.Errorf("echo-v1 saw host %q, headers %v; want the client's host, its marker header, X-Forwarded-For 10.10.1.2 and an X-Request-Id", q.Host, q.Header)
			}
		}
	})

	t.Run("header match", func(t *testing.T) {
		for i := range 50 {
			if r := m.do(t, client, fmt.Sprintf("/header/%s/%d", marker, i), http.Header{"X-Version": {"v2"}}); r.code != http.StatusOK || r.body != "echo-v2" {
				t.Fatalf("x-version: v2, request %d: %d %q, want echo-v2", i, r.code, r.body)
			}
		}
		if got := len(m.v2.matching("/header/" + marker + "/")); got != 50 {
			t.Errorf("echo-v2 saw %d of the 50 header-matched requests", got)
		}
	})

	t.Run("path match", func(t *testing.T) {
		for i := range 50 {
			if r := m.do(t, client, fmt.Sprintf("/pinned/%s/%d", marker, i), nil); r.code != http.StatusOK || r.body != "echo-v1" {
				t.Fatalf("/pinned, request %d: %d %q, want echo-v1", i, r.code, r.body)
			}
		}
		if got := len(m.v1.matching("/pinned/" + marker + "/")); got != 50 {
			t.Errorf("echo-v1 saw %d of the 50 path-matched requests", got)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		r := m.do(t, client, "/old/"+marker, nil)
		loc, err := url.Parse(r.header.Get("Location"))
		t.Logf("/old/<marker> answered %d, Location %s", r.code, r.header.Get("Location"))
		if r.code != http.StatusMovedPermanently || err != nil || loc.Scheme != "http" || loc.Hostname() != "redirected.example" || loc.Path != "/new/"+marker {
			t.Errorf("redirect = %d Location %q, want 301 to http://redirected.example/new/%s", r.code, r.header.Get("Location"), marker)
		}
		if n := len(m.v1.matching("/old/"+marker)) + len(m.v2.matching("/old/"+marker)); n != 0 {
			t.Errorf("servers saw the redirected request %d times", n)
		}
	})

	t.Run("rewrite", func(t *testing.T) {
		r := m.do(t, client, "/rewrite/"+marker+"?q=1", nil)
		if r.code != http.StatusOK || r.body != "echo-v1" {
			t.Fatalf("/rewrite: %d %q, want echo-v1", r.code, r.body)
		}
		seen := m.v1.matching(marker + "?q=1")
		if len(seen) != 1 {
			t.Fatalf("echo-v1 saw %d requests for the rewrite", len(seen))
		}
		t.Logf("echo-v1 saw the rewrite as %s, Host %s", seen[0].Path, seen[0].Host)
		if seen[0].Path != "/rewritten/"+marker+"?q=1" || seen[0].Host != "rewritten.example" {
			t.Errorf("echo-v1 saw %s with Host %s, want /rewritten/%s?q=1 with Host rewritten.example", seen[0].Path, seen[0].Host, marker)
		}
	})

	t.Run("mirror", func(t *testing.T) {
		r := m.do(t, client, "/mirror/"+marker, markHeader)
		if r.code != http.StatusOK || r.body != "echo-v1" {
			t.Fatalf("/mirror: %d %q, want echo-v1", r.code, r.body)
		}
		waitFor(t, 5*time.Second, "the mirror to see the copy", func() bool { return len(m.mirrorRec.matching("/mirror/"+marker)) > 0 })
		copies := m.mirrorRec.matching("/mirror/" + marker)
		q := copies[0]
		t.Logf("mirror saw %s %s, Host %s", q.Method, q.Path, q.Host)
		if len(copies) != 1 || q.Method != http.MethodGet || q.Host != "echo.default.svc.cluster.local-shadow" || q.Header.Get("X-Test-Marker") != marker {
			t.Errorf("mirror saw %d copies, the first %s %s Host %s marker %q; want one GET with Host echo.default.svc.cluster.local-shadow and the marker",
				len(copies), q.Method, q.Path, q.Host, q.Header.Get("X-Test-Marker"))
		}
		if got := len(m.v1.matching("/mirror/" + marker)); got != 1 {
			t.Errorf("echo-v1 saw the mirrored request %d times, want once", got)
		}
	})

	t.Run("mirror with a body", func(t *testing.T) {
		body := "body-" + marker
		r := m.send(t, client, http.MethodPost, "/mirror/post/"+marker, nil, body)
		if r.code != http.StatusOK || r.body != "echo-v1" {
			t.Fatalf("POST /mirror: %d %q, want echo-v1", r.code, r.body)
		}
		waitFor(t, 5*time.Second, "the mirror to see the POST", func() bool { return len(m.mirrorRec.matching("/mirror/post/"+marker)) > 0 })
		for _, s := range []struct {
			who string
			rec *recorder
		}{{"echo-v1", m.v1}, {"mirror", m.mirrorRec}} {
			seen := s.rec.matching("/mirror/post/" + marker)
			if len(seen) != 1 || seen[0].Method != http.MethodPost || seen[0].Body != body {
				t.Errorf("%s saw %+v, want one POST with body %q", s.who, seen, body)
			}
		}
	})

	t.Run("h2c", func(t *testing.T) {
		h2 := m.h2cClient(m.client)
		for i := range 3 {
			r := m.do(t, h2, fmt.Sprintf("/pinned/h2c/%s/%d", marker, i), nil)
			if r.code != http.StatusOK || r.body != "echo-v1" {
				t.Fatalf("h2c /pinned: %d %q, want echo-v1", r.code, r.body)
			}
		}
		seen := m.v1.matching("/pinned/h2c/" + marker + "/")
		if len(seen) != 3 || seen[0].Proto != "HTTP/2.0" {
			t.Errorf("echo-v1 saw %d h2c requests, the first as %v; want 3 over HTTP/2.0 (the waypoint keeps the client's protocol)", len(seen), seen)
		}
	})

	t.Run("DENY a path", func(t *testing.T) {
		r := m.do(t, client, "/admin/"+marker, nil)
		if r.code != http.StatusForbidden || r.body != "RBAC: access denied" {
			t.Errorf("/admin/...: %d %q, want 403 RBAC: access denied", r.code, r.body)
		}
		if r := m.do(t, client, "/administrator/"+marker, nil); r.code != http.StatusOK {
			t.Errorf("/administrator/... (not under /admin/): %d %q, want 200", r.code, r.body)
		}
		if n := len(m.v1.matching("/admin/"+marker)) + len(m.v2.matching("/admin/"+marker)); n != 0 {
			t.Errorf("servers saw %d denied requests", n)
		}
	})

	t.Run("ALLOW a principal", func(t *testing.T) {
		other := m.l7Client(m.clientOther, false)
		for i := range 5 {
			r := m.do(t, other, fmt.Sprintf("/other/%s/%d", marker, i), nil)
			if r.code != http.StatusForbidden || r.body != "RBAC: access denied" {
				t.Errorf("client-other (sa other): %d %q, want 403 RBAC: access denied", r.code, r.body)
			}
		}
		if r := m.do(t, client, "/allowed/"+marker, nil); r.code != http.StatusOK {
			t.Errorf("client (sa sleep): %d %q, want 200", r.code, r.body)
		}
		if n := len(m.v1.matching("/other/"+marker)) + len(m.v2.matching("/other/"+marker)); n != 0 {
			t.Errorf("servers saw %d requests of client-other", n)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		metrics := m.get(t, m.waypoint, "http://127.0.0.1:15020/metrics")
		// requests sums istio_requests_total over the series carrying every label in want.
		requests := func(want ...string) int {
			n := 0
			for _, l := range strings.Split(metrics, "\n") {
				if !strings.HasPrefix(l, "istio_requests_total{") {
					continue
				}
				ok := true
				for _, w := range want {
					ok = ok && strings.Contains(l, w)
				}
				if ok {
					var v float64
					_, _ = fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
					n += int(v)
				}
			}
			return n
		}
		sleep, other := `source_principal="spiffe://cluster.local/ns/default/sa/sleep"`, `source_principal="spiffe://cluster.local/ns/default/sa/other"`
		// A forwarded request is reported with the backend Service of the route's cluster (as
		// Istio's waypoint takes it from the upstream cluster), a local reply with the Service
		// the client addressed.
		echo, echoV2 := `destination_service="echo.default.svc.cluster.local"`, `destination_service="echo-v2.default.svc.cluster.local"`
		m.v2.mu.Lock()
		servedV2 := len(m.v2.reqs)
		m.v2.mu.Unlock()
		for _, c := range []struct {
			what   string
			labels []string
			want   int
		}{
			{"200s from echo-v2", []string{sleep, echoV2, `destination_workload="echo-v2"`, `response_code="200"`}, servedV2},
			{"403s to client-other", []string{other, echo, `response_code="403"`}, 5},
			{"403s to client", []string{sleep, echo, `response_code="403"`}, 1},
			{"301s", []string{sleep, echo, `response_code="301"`}, 1},
		} {
			if got := requests(append(c.labels, `reporter="waypoint"`)...); got != c.want {
				t.Errorf("waypoint istio_requests_total for %s = %d, want %d", c.what, got, c.want)
			}
		}
		if t.Failed() {
			for _, l := range strings.Split(metrics, "\n") {
				if strings.HasPrefix(l, "istio_requests_total{") {
					t.Log(l)
				}
			}
		}
	})

	// Only HBONE crossed between the machines.
	for _, c := range captures {
		packets, text := c.stop(t)
		flows := map[string]int{} // packets per flow not on port 15008
		for _, p := range packets {
			f := tcpLine.FindStringSubmatch(p)
			if f[2] != "15008" && f[4] != "15008" {
				flows[f[1]+":"+f[2]+" > "+f[3]+":"+f[4]]++
			}
		}
		t.Logf("%s: %d TCP packets captured, %d flows not on port 15008, %d bytes of text", c.what, len(packets), len(flows), len(text))
		if len(packets) < 1000 {
			t.Errorf("%s: only %d packets captured while traffic flowed (tcpdump said %q)", c.what, len(packets), c.errs.String())
		}
		if len(flows) > 0 {
			t.Errorf("%s: TCP not on port 15008 (packets per flow): %v", c.what, flows)
		}
		for _, plain := range []string{marker, "GET /", "HTTP/1.1", "echo-v1", "RBAC: access denied", "rewritten.example"} {
			if bytes.Contains(text, []byte(plain)) {
				t.Errorf("%s: plaintext %q crossed", c.what, plain)
			}
		}
	}
}
