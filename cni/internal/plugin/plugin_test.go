package plugin_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/testutils"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/ambient-lite/ambient-lite/cni/internal/plugin"
	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
	"github.com/ambient-lite/ambient-lite/pkg/ambient"
)

const (
	testToken = "test-token"
	testNetns = "/var/run/netns/cni-0123"
	testUID   = "6a1c7e2e-0000-4000-8000-000000000001"
)

// chainedVersions are the spec versions with prevResult; the plugin supports exactly these.
func chainedVersions(t *testing.T) []string {
	var vs []string
	for _, v := range testutils.AllSpecVersions {
		if testutils.SpecVersionHasChaining(v) {
			vs = append(vs, v)
		}
	}
	if got := plugin.SupportedVersions.SupportedVersions(); !reflect.DeepEqual(got, vs) {
		t.Fatalf("SupportedVersions = %v, want every version with chaining %v", got, vs)
	}
	return vs
}

// fakeAgent is a node agent: pluginapi.Handler over a real unix socket.
type fakeAgent struct {
	// enrollment answers Enrollment; nil answers with an error (an agent that cannot tell).
	enrollment func(pluginapi.EnrollmentRequest) (pluginapi.EnrollmentResponse, error)

	socket string

	mu       sync.Mutex
	adds     []pluginapi.AddRequest
	dels     []pluginapi.DelRequest
	checks   []pluginapi.CheckRequest
	addResp  pluginapi.AddResponse
	addErr   error
	checkErr error
}

func (a *fakeAgent) Add(_ context.Context, req pluginapi.AddRequest) (pluginapi.AddResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.adds = append(a.adds, req)
	return a.addResp, a.addErr
}

func (a *fakeAgent) Enrollment(_ context.Context, req pluginapi.EnrollmentRequest) (pluginapi.EnrollmentResponse, error) {
	a.mu.Lock()
	f := a.enrollment
	a.mu.Unlock()
	if f == nil {
		return pluginapi.EnrollmentResponse{}, errors.New("fake agent: no enrollment answer configured")
	}
	return f(req)
}

func (a *fakeAgent) Del(_ context.Context, req pluginapi.DelRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dels = append(a.dels, req)
	return nil
}

func (a *fakeAgent) Check(_ context.Context, req pluginapi.CheckRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.checks = append(a.checks, req)
	return a.checkErr
}

func (a *fakeAgent) calls() (adds []pluginapi.AddRequest, dels []pluginapi.DelRequest, checks []pluginapi.CheckRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append(adds, a.adds...), append(dels, a.dels...), append(checks, a.checks...)
}

func (a *fakeAgent) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.adds, a.dels, a.checks = nil, nil, nil
}

// shortDir is a temporary directory with a path short enough for a unix socket.
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "cni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func startAgent(t *testing.T) *fakeAgent {
	a := &fakeAgent{addResp: pluginapi.AddResponse{Redirected: true}, socket: filepath.Join(shortDir(t), "plugin.sock")}
	l, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: pluginapi.Handler(a), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return a
}

// fakeAPIServer serves pods and namespaces to GETs with the test token.
type fakeAPIServer struct {
	srv      *httptest.Server
	mu       sync.Mutex
	pods     map[string]*corev1.Pod
	ns       map[string]*corev1.Namespace
	failNext atomic.Int32 // answer this many requests with 503 first
	requests atomic.Int32
}

func startAPIServer(t *testing.T) *fakeAPIServer {
	f := &fakeAPIServer{pods: map[string]*corev1.Pod{}, ns: map[string]*corev1.Namespace{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/namespaces/{ns}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		ns := f.ns[r.PathValue("ns")]
		f.mu.Unlock()
		f.answer(w, ns, "namespaces", r.PathValue("ns"))
	})
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/pods/{name}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		pod := f.pods[r.PathValue("ns")+"/"+r.PathValue("name")]
		f.mu.Unlock()
		f.answer(w, pod, "pods", r.PathValue("name"))
	})
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			writeStatus(w, http.StatusUnauthorized, "Unauthorized")
			return
		}
		if f.failNext.Load() > 0 {
			f.failNext.Add(-1)
			writeStatus(w, http.StatusServiceUnavailable, "etcd leader changed")
			return
		}
		mux.ServeHTTP(w, r)
	}))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshake failures are expected
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPIServer) answer(w http.ResponseWriter, obj any, resource, name string) {
	if reflect.ValueOf(obj).IsNil() {
		writeStatus(w, http.StatusNotFound, fmt.Sprintf("%s %q not found", resource, name))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(obj)
}

func writeStatus(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(metav1.Status{Status: "Failure", Message: msg, Code: int32(code)})
}

func (f *fakeAPIServer) setNamespace(name string, labels map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ns[name] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func (f *fakeAPIServer) setPod(pod *corev1.Pod) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[pod.Namespace+"/"+pod.Name] = pod
}

func (f *fakeAPIServer) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
}

// writeKubeconfig writes a kubeconfig for f with an inline CA and token.
func (f *fakeAPIServer) writeKubeconfig(t *testing.T) string {
	return writeFile(t, t.TempDir(), "kubeconfig", fmt.Sprintf(`apiVersion: v1
kind: Config
current-context: cni
clusters:
- name: local
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: cni
  user:
    token: %s
contexts:
- name: cni
  context: {cluster: local, user: cni}
`, f.srv.URL, base64.StdEncoding.EncodeToString(f.caPEM()), testToken))
}

func writeFile(t *testing.T, dir, name, content string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testPod(name string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Namespace: "apps", Name: name, UID: k8stypes.UID(testUID), Labels: labels, Annotations: annotations,
	}}
}

var ambientLabel = map[string]string{ambient.LabelDataplaneMode: ambient.DataplaneModeAmbient}

// prevResult is a primary plugin's result: a host veth and the pod's eth0 with v4 and v6.
func prevResult(t *testing.T, ver string) map[string]any {
	one := 1
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: "veth1234", Mac: "aa:bb:cc:dd:ee:01"},
			{Name: "eth0", Mac: "aa:bb:cc:dd:ee:02", Sandbox: testNetns},
		},
		IPs: []*types100.IPConfig{
			{Interface: &one, Address: mustCIDR(t, "10.1.0.5/24"), Gateway: net.ParseIP("10.1.0.1")},
			{Interface: &one, Address: mustCIDR(t, "fd00::5/64"), Gateway: net.ParseIP("fd00::1")},
		},
		Routes: []*types.Route{{Dst: mustCIDR(t, "0.0.0.0/0"), GW: net.ParseIP("10.1.0.1")}},
		DNS:    types.DNS{Nameservers: []string{"10.96.0.10"}, Search: []string{"apps.svc.cluster.local"}},
	}
	conv, err := res.GetAsVersion(ver)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(conv)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustCIDR(t *testing.T, s string) net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return *n
}

// env is one test's world: an apiserver, a node agent and a config pointing at both.
type env struct {
	api        *fakeAPIServer
	agent      *fakeAgent
	kubeconfig string
	plugin     *plugin.Plugin
	logs       *strings.Builder
}

func newEnv(t *testing.T) *env {
	e := &env{api: startAPIServer(t), agent: startAgent(t), logs: &strings.Builder{}}
	e.kubeconfig = e.api.writeKubeconfig(t)
	e.plugin = &plugin.Plugin{Stderr: e.logs}
	e.api.setNamespace("apps", nil)
	e.api.setNamespace("mesh", ambientLabel)
	return e
}

// conf is the plugin's config at ver with a prevResult; edit changes it before encoding.
func (e *env) conf(t *testing.T, ver string, edit func(map[string]any)) []byte {
	m := map[string]any{
		"cniVersion":  ver,
		"name":        "k8s-pod-network",
		"type":        "ambient-lite-cni",
		"kubeconfig":  e.kubeconfig,
		"agentSocket": e.agent.socket,
		"timeout":     "5s",
		"logLevel":    "debug",
		"prevResult":  prevResult(t, ver),
	}
	if edit != nil {
		edit(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func args(conf []byte, namespace, name string) *skel.CmdArgs {
	a := &skel.CmdArgs{ContainerID: "c0ffee", Netns: testNetns, IfName: "eth0", StdinData: conf}
	if name != "" {
		a.Args = fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=%s", namespace, name, testUID)
	}
	return a
}

func (e *env) add(t *testing.T, a *skel.CmdArgs) ([]byte, error) {
	t.Helper()
	_, out, err := testutils.CmdAddWithArgs(a, func() error { return e.plugin.Add(a) })
	return out, err
}

// assertPassedThrough checks ADD printed exactly the prevResult of conf.
func assertPassedThrough(t *testing.T, conf, out []byte) {
	t.Helper()
	var in struct {
		CNIVersion string         `json:"cniVersion"`
		PrevResult map[string]any `json:"prevResult"`
	}
	if err := json.Unmarshal(conf, &in); err != nil {
		t.Fatal(err)
	}
	want := in.PrevResult
	if _, ok := want["cniVersion"]; !ok {
		want["cniVersion"] = in.CNIVersion
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ADD output differs from prevResult\n got: %s\nwant: %v", out, want)
	}
	if _, err := version.NewResult(in.CNIVersion, out); err != nil {
		t.Errorf("output is not a %s result: %v", in.CNIVersion, err)
	}
}

func TestAddEnrolled(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("labelled", ambientLabel, nil))
	mp := testPod("in-ns", nil, nil)
	mp.Namespace = "mesh"
	e.api.setPod(mp)
	for _, ver := range chainedVersions(t) {
		for _, target := range []struct{ ns, name string }{{"apps", "labelled"}, {"mesh", "in-ns"}} {
			t.Run(ver+"/"+target.ns+"/"+target.name, func(t *testing.T) {
				e.agent.reset()
				conf := e.conf(t, ver, nil)
				out, err := e.add(t, args(conf, target.ns, target.name))
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				assertPassedThrough(t, conf, out)
				adds, _, _ := e.agent.calls()
				if len(adds) != 1 {
					t.Fatalf("agent got %d adds, want 1", len(adds))
				}
				want := pluginapi.AddRequest{
					PodName: target.name, PodNamespace: target.ns, PodUID: testUID, ContainerID: "c0ffee",
					Netns: testNetns, IfName: "eth0", PodIPs: []string{"10.1.0.5", "fd00::5"},
				}
				if !reflect.DeepEqual(adds[0], want) {
					t.Errorf("agent got %+v\nwant %+v", adds[0], want)
				}
			})
		}
	}
}

func TestAddNotEnrolled(t *testing.T) {
	e := newEnv(t)
	none := map[string]string{ambient.LabelDataplaneMode: ambient.DataplaneModeNone}
	optedOut := testPod("opted-out", none, nil)
	optedOut.Namespace = "mesh"
	e.api.setPod(optedOut)
	e.api.setPod(testPod("plain", nil, nil))
	sidecar := testPod("sidecar", ambientLabel, map[string]string{ambient.AnnotationSidecarStatus: "{}"})
	e.api.setPod(sidecar)
	hostNet := testPod("host-net", ambientLabel, nil)
	hostNet.Spec.HostNetwork = true
	e.api.setPod(hostNet)
	for _, ver := range chainedVersions(t) {
		for _, target := range []struct{ ns, name string }{{"mesh", "opted-out"}, {"apps", "plain"}, {"apps", "sidecar"}, {"apps", "host-net"}} {
			t.Run(ver+"/"+target.name, func(t *testing.T) {
				e.agent.reset()
				conf := e.conf(t, ver, nil)
				out, err := e.add(t, args(conf, target.ns, target.name))
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				assertPassedThrough(t, conf, out)
				if adds, _, _ := e.agent.calls(); len(adds) != 0 {
					t.Errorf("agent called for a pod outside the mesh: %+v", adds)
				}
			})
		}
	}
}

// TestAddAgentAnswersEnrollment: when the node agent answers whether the pod is enrolled,
// the plugin trusts it and never reads the apiserver (the fast path every pod's ADD takes).
func TestAddAgentAnswersEnrollment(t *testing.T) {
	e := newEnv(t)
	for _, ver := range chainedVersions(t) {
		for _, enrolled := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/enrolled=%v", ver, enrolled), func(t *testing.T) {
				e.agent.reset()
				var asked []pluginapi.EnrollmentRequest
				e.agent.mu.Lock()
				e.agent.enrollment = func(req pluginapi.EnrollmentRequest) (pluginapi.EnrollmentResponse, error) {
					asked = append(asked, req)
					return pluginapi.EnrollmentResponse{Enrolled: enrolled}, nil
				}
				e.agent.mu.Unlock()
				defer func() { e.agent.mu.Lock(); e.agent.enrollment = nil; e.agent.mu.Unlock() }()
				before := e.api.requests.Load()
				conf := e.conf(t, ver, nil)
				out, err := e.add(t, args(conf, "apps", "unknown-to-the-apiserver"))
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				assertPassedThrough(t, conf, out)
				if n := e.api.requests.Load() - before; n != 0 {
					t.Errorf("the plugin made %d apiserver requests although the agent answered", n)
				}
				want := []pluginapi.EnrollmentRequest{{PodName: "unknown-to-the-apiserver", PodNamespace: "apps", PodUID: testUID}}
				if !reflect.DeepEqual(asked, want) {
					t.Errorf("agent asked %+v, want %+v", asked, want)
				}
				if adds, _, _ := e.agent.calls(); (len(adds) == 1) != enrolled {
					t.Errorf("agent got %d adds for enrolled=%v", len(adds), enrolled)
				}
			})
		}
	}
}

func TestAddNotKubernetes(t *testing.T) {
	e := newEnv(t)
	for _, ver := range chainedVersions(t) {
		t.Run(ver, func(t *testing.T) {
			conf := e.conf(t, ver, nil)
			out, err := e.add(t, args(conf, "", ""))
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			assertPassedThrough(t, conf, out)
		})
	}
	if n := e.api.requests.Load(); n != 0 {
		t.Errorf("apiserver got %d requests for a non-Kubernetes container", n)
	}
}

func TestAddAgentUnreachable(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	missing := filepath.Join(shortDir(t), "gone.sock")
	for _, ver := range chainedVersions(t) {
		t.Run(ver, func(t *testing.T) {
			conf := e.conf(t, ver, func(m map[string]any) { m["agentSocket"] = missing })
			_, err := e.add(t, args(conf, "apps", "p"))
			if err == nil {
				t.Fatal("ADD succeeded for an enrolled pod with no node agent")
			}
			for _, want := range []string{missing, "check the node agent", "apps/p", "agentSocket"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestAddAgentRefuses(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	tests := []struct {
		name string
		resp pluginapi.AddResponse
		err  error
		want string
	}{
		{"error", pluginapi.AddResponse{}, errors.New("ztunnel did not acknowledge the pod within 5s"), "ztunnel did not acknowledge the pod within 5s"},
		{"not redirected", pluginapi.AddResponse{Redirected: false}, nil, "did not confirm"},
	}
	for _, ver := range chainedVersions(t) {
		for _, tt := range tests {
			t.Run(ver+"/"+tt.name, func(t *testing.T) {
				e.agent.mu.Lock()
				e.agent.addResp, e.agent.addErr = tt.resp, tt.err
				e.agent.mu.Unlock()
				_, err := e.add(t, args(e.conf(t, ver, nil), "apps", "p"))
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("err = %v, want one mentioning %q", err, tt.want)
				}
			})
		}
	}
}

func TestAddBadConfig(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	tests := []struct {
		name string
		conf []byte
		want []string
	}{
		{"missing kubeconfig", e.conf(t, "1.0.0", func(m map[string]any) { delete(m, "kubeconfig") }), []string{`"kubeconfig"`, "required"}},
		{"relative kubeconfig", e.conf(t, "1.0.0", func(m map[string]any) { m["kubeconfig"] = "kc" }), []string{`"kubeconfig"`, "absolute"}},
		{"bad JSON", []byte(`{"cniVersion":"1.0.0","name":"n","kubeconfig":`), []string{"invalid JSON"}},
		{"unknown field", e.conf(t, "1.0.0", func(m map[string]any) { m["agentSockte"] = "/x" }), []string{`"agentSockte"`, "unknown field"}},
		{"wrong type", e.conf(t, "1.0.0", func(m map[string]any) { m["timeout"] = 30 }), []string{`"timeout"`, "want a string"}},
		{"bad timeout", e.conf(t, "1.0.0", func(m map[string]any) { m["timeout"] = "soon" }), []string{`"timeout"`, "soon"}},
		{"bad log level", e.conf(t, "1.0.0", func(m map[string]any) { m["logLevel"] = "chatty" }), []string{`"logLevel"`, "chatty"}},
		{"kubeconfig file missing", e.conf(t, "1.0.0", func(m map[string]any) { m["kubeconfig"] = "/nonexistent/kubeconfig" }),
			[]string{"/nonexistent/kubeconfig", "node agent"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.agent.reset()
			_, err := e.add(t, args(tt.conf, "apps", "p"))
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if adds, _, _ := e.agent.calls(); len(adds) != 0 {
				t.Error("agent called despite a bad config")
			}
		})
	}
}

func TestAddNoPrevResult(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", nil, nil))
	for _, ver := range chainedVersions(t) {
		t.Run(ver, func(t *testing.T) {
			_, err := e.add(t, args(e.conf(t, ver, func(m map[string]any) { delete(m, "prevResult") }), "apps", "p"))
			if err == nil || !strings.Contains(err.Error(), "must be chained after a primary CNI plugin") {
				t.Errorf("err = %v, want the chaining error", err)
			}
		})
	}
}

func TestAddPrevResultWithoutPodIP(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	conf := e.conf(t, "1.1.0", func(m map[string]any) {
		pr := m["prevResult"].(map[string]any)
		ips := pr["ips"].([]any)
		for _, ip := range ips {
			ip.(map[string]any)["interface"] = 0 // the host veth
		}
	})
	_, err := e.add(t, args(conf, "apps", "p"))
	if err == nil || !strings.Contains(err.Error(), "no IP address for the pod") {
		t.Errorf("err = %v, want the missing IP error", err)
	}
}

func TestAddAPIServer(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))

	t.Run("transient errors are retried", func(t *testing.T) {
		e.agent.reset()
		e.api.failNext.Store(3)
		if _, err := e.add(t, args(e.conf(t, "1.1.0", nil), "apps", "p")); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if adds, _, _ := e.agent.calls(); len(adds) != 1 {
			t.Errorf("agent got %d adds, want 1", len(adds))
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		kc := strings.Replace(readFile(t, e.kubeconfig), e.api.srv.URL, "https://"+addr, 1)
		path := writeFile(t, t.TempDir(), "kubeconfig", kc)
		conf := e.conf(t, "1.1.0", func(m map[string]any) { m["kubeconfig"] = path; m["timeout"] = "500ms" })
		_, err = e.add(t, args(conf, "apps", "p"))
		if err == nil || !strings.Contains(err.Error(), "cannot tell whether pod apps/p is in the ambient mesh") ||
			!strings.Contains(err.Error(), addr) {
			t.Errorf("err = %v, want one saying enrollment is unknown and naming %s", err, addr)
		}
	})
	t.Run("pod not found", func(t *testing.T) {
		_, err := e.add(t, args(e.conf(t, "1.1.0", nil), "apps", "ghost"))
		if err == nil || !strings.Contains(err.Error(), `pods "ghost" not found`) {
			t.Errorf("err = %v, want not found", err)
		}
	})
	t.Run("recreated pod", func(t *testing.T) {
		a := args(e.conf(t, "1.1.0", nil), "apps", "p")
		a.Args = strings.Replace(a.Args, testUID, "other-uid", 1)
		_, err := e.add(t, a)
		if err == nil || !strings.Contains(err.Error(), "recreated") {
			t.Errorf("err = %v, want the uid mismatch", err)
		}
	})
	t.Run("forbidden token", func(t *testing.T) {
		kc := strings.Replace(readFile(t, e.kubeconfig), testToken, "wrong", 1)
		path := writeFile(t, t.TempDir(), "kubeconfig", kc)
		_, err := e.add(t, args(e.conf(t, "1.1.0", func(m map[string]any) { m["kubeconfig"] = path }), "apps", "p"))
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("err = %v, want a 401", err)
		}
	})
}

func readFile(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestKubeconfig(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	dir := t.TempDir()
	writeFile(t, dir, "ca.crt", string(e.api.caPEM()))
	writeFile(t, dir, "token", testToken+"\n")
	cluster := func(extra string) string {
		return fmt.Sprintf("clusters:\n- name: c\n  cluster:\n    server: %s\n%s", e.api.srv.URL, extra)
	}
	tests := []struct {
		name    string
		content string
		want    string // empty: ADD succeeds
	}{
		{"CA and token files, relative, single context", cluster("    certificate-authority: ca.crt\n") +
			"users:\n- name: u\n  user:\n    tokenFile: token\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n", ""},
		{"no contexts, one cluster and user, JSON", fmt.Sprintf(
			`{"clusters":[{"name":"c","cluster":{"server":%q,"certificate-authority":%q}}],"users":[{"name":"u","user":{"token":%q}}]}`,
			e.api.srv.URL, filepath.Join(dir, "ca.crt"), testToken), ""},
		{"client certificate rejected", cluster("    certificate-authority: ca.crt\n") +
			"users:\n- name: u\n  user:\n    client-certificate-data: AAAA\n    client-key-data: AAAA\n", `"client-`},
		{"exec rejected", cluster("    certificate-authority: ca.crt\n") +
			"users:\n- name: u\n  user:\n    exec: {command: x}\n", `"exec" is not supported`},
		{"insecure rejected", cluster("    insecure-skip-tls-verify: true\n") +
			"users:\n- name: u\n  user:\n    token: x\n", `"insecure-skip-tls-verify" is not supported`},
		{"http server rejected", "clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\nusers:\n- name: u\n  user:\n    token: x\n", "https://"},
		{"no token", cluster("    certificate-authority: ca.crt\n") + "users:\n- name: u\n  user: {}\n", "no bearer token"},
		{"unknown current context", "current-context: nope\n" + cluster("") + "users:\n- name: u\n  user:\n    token: x\n", `"nope"`},
		{"CA that did not sign the server", cluster("    certificate-authority-data: "+base64.StdEncoding.EncodeToString(otherCA(t))+"\n") +
			"users:\n- name: u\n  user:\n    token: x\n", "certificate signed by unknown authority"},
		{"not YAML", "clusters: [", "parsing YAML"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, "kubeconfig", tt.content)
			conf := e.conf(t, "1.1.0", func(m map[string]any) { m["kubeconfig"] = path; m["timeout"] = "1s" })
			_, err := e.add(t, args(conf, "apps", "p"))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("ADD: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// otherCA is a self-signed CA that did not sign the fake apiserver's certificate.
func otherCA(t *testing.T) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestDel(t *testing.T) {
	e := newEnv(t)
	for _, ver := range chainedVersions(t) {
		t.Run(ver, func(t *testing.T) {
			e.agent.reset()
			a := args(e.conf(t, ver, nil), "apps", "p")
			for range 2 {
				if err := testutils.CmdDelWithArgs(a, func() error { return e.plugin.Del(a) }); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			_, dels, _ := e.agent.calls()
			want := pluginapi.DelRequest{PodName: "p", PodNamespace: "apps", PodUID: testUID, ContainerID: "c0ffee", Netns: testNetns}
			if len(dels) != 2 || dels[0] != want {
				t.Errorf("agent dels = %+v, want two of %+v", dels, want)
			}
		})
		t.Run(ver+"/agent down", func(t *testing.T) {
			gone := filepath.Join(shortDir(t), "gone.sock")
			a := args(e.conf(t, ver, func(m map[string]any) { m["agentSocket"] = gone }), "apps", "p")
			a.Netns = "" // the runtime may have released the netns already
			for range 2 {
				if err := testutils.CmdDelWithArgs(a, func() error { return e.plugin.Del(a) }); err != nil {
					t.Fatalf("DEL with the agent down: %v", err)
				}
			}
		})
		t.Run(ver+"/bad config", func(t *testing.T) {
			a := args([]byte(`{"cniVersion":"`+ver+`","name":"n","bogus":1}`), "apps", "p")
			if err := testutils.CmdDelWithArgs(a, func() error { return e.plugin.Del(a) }); err != nil {
				t.Fatalf("DEL with a bad config: %v", err)
			}
		})
	}
	if n := e.api.requests.Load(); n != 0 {
		t.Errorf("DEL made %d apiserver requests; it needs none", n)
	}
	if !strings.Contains(e.logs.String(), "node agent not told") {
		t.Errorf("DEL with the agent down logged nothing:\n%s", e.logs)
	}
}

func TestCheck(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("in", ambientLabel, nil))
	e.api.setPod(testPod("out", nil, nil))
	for _, ver := range chainedVersions(t) {
		if !testutils.SpecVersionHasCHECK(ver) {
			continue
		}
		check := func(a *skel.CmdArgs) error {
			return testutils.CmdCheckWithArgs(a, func() error { return e.plugin.Check(a) })
		}
		t.Run(ver+"/enrolled", func(t *testing.T) {
			e.agent.reset()
			e.agent.mu.Lock()
			e.agent.checkErr = nil
			e.agent.mu.Unlock()
			if err := check(args(e.conf(t, ver, nil), "apps", "in")); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			_, _, checks := e.agent.calls()
			want := pluginapi.CheckRequest{PodName: "in", PodNamespace: "apps", PodUID: testUID, ContainerID: "c0ffee", Netns: testNetns}
			if len(checks) != 1 || checks[0] != want {
				t.Errorf("agent checks = %+v, want %+v", checks, want)
			}
		})
		t.Run(ver+"/redirection missing", func(t *testing.T) {
			e.agent.mu.Lock()
			e.agent.checkErr = errors.New("pod apps/in has no redirection in its netns")
			e.agent.mu.Unlock()
			err := check(args(e.conf(t, ver, nil), "apps", "in"))
			if err == nil || !strings.Contains(err.Error(), "has no redirection") {
				t.Errorf("err = %v, want the agent's message", err)
			}
		})
		t.Run(ver+"/agent down", func(t *testing.T) {
			gone := filepath.Join(shortDir(t), "gone.sock")
			err := check(args(e.conf(t, ver, func(m map[string]any) { m["agentSocket"] = gone }), "apps", "in"))
			if err == nil || !strings.Contains(err.Error(), gone) {
				t.Errorf("err = %v, want one naming %s", err, gone)
			}
		})
		t.Run(ver+"/not enrolled", func(t *testing.T) {
			e.agent.reset()
			if err := check(args(e.conf(t, ver, nil), "apps", "out")); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			if _, _, checks := e.agent.calls(); len(checks) != 0 {
				t.Errorf("agent asked about a pod outside the mesh")
			}
		})
		t.Run(ver+"/no prevResult", func(t *testing.T) {
			err := check(args(e.conf(t, ver, func(m map[string]any) { delete(m, "prevResult") }), "apps", "in"))
			if err == nil || !strings.Contains(err.Error(), "chained") {
				t.Errorf("err = %v, want the chaining error", err)
			}
		})
	}
}

func TestStatusAndGC(t *testing.T) {
	e := newEnv(t)
	gone := filepath.Join(shortDir(t), "gone.sock")
	for _, ver := range chainedVersions(t) {
		if !testutils.SpecVersionHasSTATUS(ver) {
			continue
		}
		t.Run(ver, func(t *testing.T) {
			// Valid config: ready even with the agent down (it only matters to enrolled pods).
			conf := e.conf(t, ver, func(m map[string]any) { delete(m, "prevResult"); m["agentSocket"] = gone })
			a := &skel.CmdArgs{StdinData: conf}
			if err := testutils.CmdStatus(func() error { return e.plugin.Status(a) }); err != nil {
				t.Errorf("STATUS: %v", err)
			}
			gc := e.conf(t, ver, func(m map[string]any) {
				delete(m, "prevResult")
				m["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "c0ffee", "ifname": "eth0"}}
			})
			ga := &skel.CmdArgs{StdinData: gc}
			if err := testutils.CmdStatus(func() error { return e.plugin.GC(ga) }); err != nil {
				t.Errorf("GC: %v", err)
			}
			bad := &skel.CmdArgs{StdinData: e.conf(t, ver, func(m map[string]any) { delete(m, "kubeconfig") })}
			if err := e.plugin.Status(bad); err == nil || !strings.Contains(err.Error(), `"kubeconfig"`) {
				t.Errorf("STATUS with a bad config: err = %v, want one naming kubeconfig", err)
			}
			if err := e.plugin.GC(bad); err == nil {
				t.Error("GC with a bad config succeeded")
			}
		})
	}
}

// runSkel runs the plugin the way the binary does (skel.PluginMainFuncsWithError), with the
// CNI environment and stdin of a runtime, and returns its stdout.
func runSkel(t *testing.T, e *env, command string, a *skel.CmdArgs) ([]byte, error) {
	t.Helper()
	for k, v := range map[string]string{
		"CNI_COMMAND": command, "CNI_CONTAINERID": a.ContainerID, "CNI_NETNS": a.Netns, "CNI_IFNAME": a.IfName,
		"CNI_ARGS": a.Args, "CNI_PATH": "/opt/cni/bin", "CNI_NETNS_OVERRIDE": "1",
	} {
		t.Setenv(k, v)
	}
	in := writeFile(t, t.TempDir(), "stdin", string(a.StdinData))
	stdin, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	oldIn, oldOut := os.Stdin, os.Stdout
	os.Stdin, os.Stdout = stdin, w
	var terr *types.Error
	func() {
		defer func() { os.Stdin, os.Stdout = oldIn, oldOut }()
		terr = skel.PluginMainFuncsWithError(e.plugin.Funcs(), plugin.SupportedVersions, "test")
	}()
	w.Close()
	out, _ := io.ReadAll(r)
	if terr != nil {
		return out, terr
	}
	return out, nil
}

// TestSkel drives every command through skel, as the binary does, so the spec version
// negotiation (which commands exist in which version) is exercised too.
func TestSkel(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	for _, ver := range testutils.AllSpecVersions {
		t.Run(ver, func(t *testing.T) {
			e.agent.reset()
			a := args(e.conf(t, ver, nil), "apps", "p")
			out, err := runSkel(t, e, "ADD", a)
			if !testutils.SpecVersionHasChaining(ver) {
				var terr *types.Error
				if !errors.As(err, &terr) || terr.Code != types.ErrIncompatibleCNIVersion {
					t.Fatalf("ADD at %s: err = %v, want incompatible version", ver, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			assertPassedThrough(t, a.StdinData, out)
			if adds, _, _ := e.agent.calls(); len(adds) != 1 {
				t.Errorf("agent got %d adds, want 1", len(adds))
			}
			if testutils.SpecVersionHasCHECK(ver) {
				if _, err := runSkel(t, e, "CHECK", a); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if _, err := runSkel(t, e, "DEL", a); err != nil {
				t.Errorf("DEL: %v", err)
			}
			if testutils.SpecVersionHasSTATUS(ver) {
				bare := &skel.CmdArgs{StdinData: e.conf(t, ver, func(m map[string]any) { delete(m, "prevResult") })}
				for _, cmd := range []string{"STATUS", "GC"} {
					if _, err := runSkel(t, e, cmd, bare); err != nil {
						t.Errorf("%s: %v", cmd, err)
					}
				}
			}
		})
	}
	t.Run("VERSION", func(t *testing.T) {
		out, err := runSkel(t, e, "VERSION", &skel.CmdArgs{})
		if err != nil {
			t.Fatal(err)
		}
		var vi struct {
			SupportedVersions []string `json:"supportedVersions"`
		}
		if err := json.Unmarshal(out, &vi); err != nil || strings.Join(vi.SupportedVersions, ",") != "0.3.0,0.3.1,0.4.0,1.0.0,1.1.0" {
			t.Errorf("VERSION = %s (%v)", out, err)
		}
	})
	t.Run("ADD failure is a CNI error with a code", func(t *testing.T) {
		a := args(e.conf(t, "1.1.0", func(m map[string]any) { m["agentSocket"] = "/nonexistent/plugin.sock" }), "apps", "p")
		_, err := runSkel(t, e, "ADD", a)
		var terr *types.Error
		if !errors.As(err, &terr) || terr.Code != types.ErrTryAgainLater || !strings.Contains(terr.Msg, "/nonexistent/plugin.sock") {
			t.Errorf("err = %#v, want a try-again-later error naming the socket", err)
		}
	})
}
