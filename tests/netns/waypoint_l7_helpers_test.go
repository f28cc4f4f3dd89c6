package netns

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/gobuild"
	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// Type URLs the waypoint subscribes to (waypoint/README.md).
const (
	addressTypeURL = "type.googleapis.com/istio.workload.Address"
	routeTypeURL   = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// addressesFromLocalConfig turns ztunnel's local configuration (tests/netns's meshConfig
// form: the workload API in protojson field names, addresses as IP strings) into the
// workload API resources istiod would send, so the waypoint's xDS and the ztunnels' files
// describe the same mesh. Resources are named as istiod names them: workload uid,
// namespace/hostname.
func addressesFromLocalConfig(t testing.TB, config string) map[string]*workloadapi.Address {
	t.Helper()
	var f struct {
		Workloads []map[string]any `json:"workloads"`
		Services  []map[string]any `json:"services"`
	}
	if err := yaml.UnmarshalStrict([]byte(config), &f); err != nil {
		t.Fatalf("parsing the mesh config: %v", err)
	}
	ipBytes := func(v any) string {
		ip, err := netip.ParseAddr(fmt.Sprint(v))
		if err != nil {
			t.Fatalf("mesh config address %v: %v", v, err)
		}
		return base64.StdEncoding.EncodeToString(ip.AsSlice())
	}
	decode := func(raw map[string]any, msg proto.Message) {
		b, err := json.Marshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := protojson.Unmarshal(b, msg); err != nil {
			t.Fatalf("mesh config entry %s: %v", b, err)
		}
	}
	out := map[string]*workloadapi.Address{}
	for _, raw := range f.Workloads {
		list, _ := raw["addresses"].([]any)
		for i, a := range list {
			list[i] = ipBytes(a)
		}
		w := &workloadapi.Workload{}
		decode(raw, w)
		out[w.GetUid()] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	for _, raw := range f.Services {
		list, _ := raw["addresses"].([]any)
		for i, a := range list {
			list[i] = map[string]any{"address": ipBytes(a)}
		}
		s := &workloadapi.Service{}
		decode(raw, s)
		out[s.GetNamespace()+"/"+s.GetHostname()] = &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
	}
	return out
}

// xdsServer is a delta xDS server standing in for istiod-lite: pkg/xds with static sources,
// over gRPC with TLS (the CA's serving certificate for testca.ServerName) on a unix socket,
// reachable from every network namespace.
type xdsServer struct {
	// Address is the target for XDS_ADDRESS, unix:///…/xds.sock.
	Address string

	mu    sync.Mutex
	nodes []string // node ids of the streams, in order
	auth  []string // authorization headers of the streams
}

// startXDS serves resources (type URL → name → message) until the test ends.
func startXDS(t testing.TB, ca *testca.Server, resources map[string]map[string]proto.Message) *xdsServer {
	t.Helper()
	s := &xdsServer{}
	sources := map[string]xdsserver.Source{}
	for typeURL, byName := range resources {
		snapshot := map[string]*xds.Resource{}
		for name, msg := range byName {
			a, err := anypb.New(msg)
			if err != nil {
				t.Fatal(err)
			}
			if a.GetTypeUrl() != typeURL {
				t.Fatalf("resource %s is a %s, served as %s", name, a.GetTypeUrl(), typeURL)
			}
			snapshot[name] = &xds.Resource{Name: name, Version: "1", Resource: a}
		}
		sources[typeURL] = xdsserver.SourceFunc(func(_ context.Context, req *xdsserver.Request) (*xdsserver.Delta, error) {
			s.mu.Lock()
			s.nodes = append(s.nodes, req.Stream.NodeID)
			s.mu.Unlock()
			return xdsserver.Diff(snapshot, req), nil
		})
	}
	srv, err := xdsserver.NewServer(xdsserver.ServerOptions{Sources: sources, Authenticate: func(ctx context.Context) (any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.auth = append(s.auth, strings.Join(metadata.ValueFromIncomingContext(ctx, "authorization"), ","))
		return nil, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.CA.IssueServing([]string{testca.ServerName}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "xds.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*serving}, MinVersion: tls.VersionTLS12})))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = g.Serve(l) }()
	go func() { defer wg.Done(); _ = srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		_ = srv.Close()
		g.Stop()
		wg.Wait()
	})
	s.Address = "unix://" + sock
	return s
}

// seen returns the node ids and authorization headers of the streams so far.
func (s *xdsServer) seen() (nodes, auth []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.nodes...), append([]string(nil), s.auth...)
}

// l7Service is istiod-lite's l7.Service, field for field, for l7translate's input.
type l7Service struct {
	Namespace, Name, Hostname string
	Ports                     []int32
	Waypoint                  types.NamespacedName
}

// l7Input is the input of tests/netns/testdata/l7translate.
type l7Input struct {
	Gateway               types.NamespacedName
	Bound                 []l7Service
	Services              []l7Service
	HTTPRoutes            []*gatewayv1.HTTPRoute
	AuthorizationPolicies []*securityclient.AuthorizationPolicy
}

// translateL7 runs istiod-lite's l7.Translate on in (through the l7translate helper, as
// tests/ cannot import istiod-lite's internal packages) and returns the route
// configurations by resource name; any translation error fails the test.
func translateL7(t testing.TB, in l7Input) map[string]*routev3.RouteConfiguration {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildL7Translate(t))
	cmd.Stdin = bytes.NewReader(b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("l7translate: %v\n%s", err, stderr.String())
	}
	var out struct {
		Resources map[string][]byte `json:"resources"`
		Errors    []string          `json:"errors"`
	}
	if err := json.Unmarshal(stdout, &out); err != nil {
		t.Fatalf("l7translate output: %v", err)
	}
	if len(out.Errors) > 0 {
		t.Fatalf("l7.Translate reported errors: %q", out.Errors)
	}
	rcs := map[string]*routev3.RouteConfiguration{}
	for name, raw := range out.Resources {
		rc := &routev3.RouteConfiguration{}
		if err := proto.Unmarshal(raw, rc); err != nil {
			t.Fatalf("route configuration %s: %v", name, err)
		}
		if err := rc.ValidateAll(); err != nil {
			t.Fatalf("route configuration %s is invalid: %v", name, err)
		}
		rcs[name] = rc
	}
	return rcs
}

// decodeYAML decodes a Kubernetes object strictly, as the apiserver would reject unknown
// fields.
func decodeYAML[T any](t testing.TB, doc string) *T {
	t.Helper()
	obj := new(T)
	if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
		t.Fatalf("decoding %T: %v\n%s", obj, err, doc)
	}
	return obj
}

var (
	waypointBin, l7translateBin buildOnce
)

type buildOnce struct {
	once sync.Once
	path string
	err  error
}

// build runs `go build` in the repository root once per test binary.
func (b *buildOnce) build(t testing.TB, name string, args ...string) string {
	t.Helper()
	b.once.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(binDir, name)
		cmd := gobuild.Command(context.Background(), root, append([]string{"-o", b.path}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building %s: %v\n%s", name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// buildWaypoint builds the waypoint binary.
func buildWaypoint(t testing.TB) string {
	t.Helper()
	return waypointBin.build(t, "waypoint", "./waypoint/cmd/waypoint")
}

// buildL7Translate builds testdata/l7translate as if it lived under istiod-lite/ (a build
// overlay: nothing is written into istiod-lite/).
func buildL7Translate(t testing.TB) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	overlay, err := json.Marshal(map[string]any{"Replace": map[string]string{
		filepath.Join(root, "istiod-lite", "netnstest-l7translate", "main.go"): filepath.Join(root, "tests", "netns", "testdata", "l7translate", "main.go"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(binDir, "l7translate-overlay.json")
	if err := os.WriteFile(path, overlay, 0o600); err != nil {
		t.Fatal(err)
	}
	return l7translateBin.build(t, "l7translate", "-overlay", path, "./istiod-lite/netnstest-l7translate")
}

// seenRequest is what a recording server got.
type seenRequest struct {
	Method, Path, Host, Proto, Body string
	Header                          http.Header
}

// recorder is an HTTP server in a pod that records every request and answers with its
// name.
type recorder struct {
	name string
	mu   sync.Mutex
	reqs []seenRequest
}

// recordingServer serves HTTP/1.1 and h2c on addr inside ns until the test ends.
func recordingServer(t testing.TB, tp *Topology, ns, addr, name string) *recorder {
	t.Helper()
	rec := &recorder{name: name}
	var l net.Listener
	if err := tp.Do(ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, seenRequest{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Proto: r.Proto, Body: string(body), Header: r.Header.Clone()})
		rec.mu.Unlock()
		w.Header().Set("X-Served-By", name)
		_, _ = io.WriteString(w, name)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return rec
}

// matching returns the requests whose path contains s.
func (r *recorder) matching(s string) []seenRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seenRequest
	for _, q := range r.reqs {
		if strings.Contains(q.Path, s) {
			out = append(out, q)
		}
	}
	return out
}

// capture is a tcpdump on one interface of a namespace.
type capture struct {
	what string
	pcap string
	cmd  *exec.Cmd
	errs *testenv.Buffer
}

// startCapture captures TCP on iface inside ns until stop.
func startCapture(t testing.TB, tp *Topology, ns, iface, what string) *capture {
	t.Helper()
	c := &capture{what: what, pcap: filepath.Join(t.TempDir(), strings.ReplaceAll(what, " ", "-")+".pcap"), errs: &testenv.Buffer{}}
	c.cmd = tp.Command(ns, "tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-s", "0", "-w", c.pcap, "tcp")
	c.cmd.Stderr = c.errs
	if err := cluster.StartChild(c.cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			_ = c.cmd.Wait()
		}
	})
	waitFor(t, 5*time.Second, "tcpdump on "+what+" to listen", func() bool { return strings.Contains(c.errs.String(), "listening on") })
	return c
}

// tcpLine is the start of tcpdump's line for an IPv4 TCP packet: source and destination
// with their ports.
var tcpLine = regexp.MustCompile(`IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): `)

// stop ends the capture and returns its packet lines (tcpdump -n) and its text with
// payloads (tcpdump -A).
func (c *capture) stop(t testing.TB) (packets []string, text []byte) {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // let tcpdump flush the last packets
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	_ = c.cmd.Wait()
	lines, err := exec.Command("tcpdump", "-r", c.pcap, "-n", "-tt").CombinedOutput()
	if err != nil {
		t.Fatalf("reading the capture on %s: %v\n%s", c.what, err, lines)
	}
	for _, l := range strings.Split(string(lines), "\n") {
		if tcpLine.MatchString(l) {
			packets = append(packets, l)
		}
	}
	text, err = exec.Command("tcpdump", "-r", c.pcap, "-n", "-A").CombinedOutput()
	if err != nil {
		t.Fatalf("reading the capture on %s: %v\n%s", c.what, err, text)
	}
	return packets, text
}
