package pluginapi_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
)

// fakeAgent records requests and answers with the configured results.
type fakeAgent struct {
	// enrollment answers Enrollment; nil answers with an error (an agent that cannot tell).
	enrollment func(pluginapi.EnrollmentRequest) (pluginapi.EnrollmentResponse, error)

	mu       sync.Mutex
	adds     []pluginapi.AddRequest
	dels     []pluginapi.DelRequest
	checks   []pluginapi.CheckRequest
	addResp  pluginapi.AddResponse
	addErr   error
	delErr   error
	checkErr error
	block    chan struct{} // if set, Add waits for it or ctx
}

func (a *fakeAgent) Add(ctx context.Context, req pluginapi.AddRequest) (pluginapi.AddResponse, error) {
	a.mu.Lock()
	a.adds = append(a.adds, req)
	block := a.block
	a.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return pluginapi.AddResponse{}, ctx.Err()
		}
	}
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
	return a.delErr
}

func (a *fakeAgent) Check(_ context.Context, req pluginapi.CheckRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.checks = append(a.checks, req)
	return a.checkErr
}

func (a *fakeAgent) setCheckErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.checkErr = err
}

// serve starts Handler(agent) on a unix socket in a temporary directory and returns its path.
func serve(t *testing.T, agent pluginapi.Agent) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "plugin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: pluginapi.Handler(agent), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return sock
}

var validAdd = pluginapi.AddRequest{
	PodName: "p", PodNamespace: "ns", PodUID: "uid-1", ContainerID: "c1",
	Netns: "/var/run/netns/cni-1", IfName: "eth0", PodIPs: []string{"10.0.0.5", "fd00::5"},
}

func TestAdd(t *testing.T) {
	agent := &fakeAgent{addResp: pluginapi.AddResponse{Redirected: true}}
	c := pluginapi.NewClient(serve(t, agent), 5*time.Second)
	resp, err := c.Add(context.Background(), validAdd)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Redirected {
		t.Error("Redirected = false, want true")
	}
	if len(agent.adds) != 1 {
		t.Fatalf("agent saw %d adds, want 1", len(agent.adds))
	}
	got := agent.adds[0]
	if got.Netns != validAdd.Netns || got.PodUID != validAdd.PodUID || got.IfName != "eth0" ||
		strings.Join(got.PodIPs, ",") != "10.0.0.5,fd00::5" {
		t.Errorf("agent got %+v, want %+v", got, validAdd)
	}
}

func TestAddRefused(t *testing.T) {
	agent := &fakeAgent{addErr: errors.New("no ztunnel connected on node n1")}
	c := pluginapi.NewClient(serve(t, agent), 5*time.Second)
	_, err := c.Add(context.Background(), validAdd)
	var se *pluginapi.StatusError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a StatusError", err)
	}
	if se.StatusCode != http.StatusInternalServerError || se.Message != "no ztunnel connected on node n1" {
		t.Errorf("StatusError = %+v", se)
	}
}

func TestValidation(t *testing.T) {
	agent := &fakeAgent{addResp: pluginapi.AddResponse{Redirected: true}}
	c := pluginapi.NewClient(serve(t, agent), 5*time.Second)
	ctx := context.Background()
	mod := func(f func(*pluginapi.AddRequest)) pluginapi.AddRequest {
		r := validAdd
		r.PodIPs = append([]string(nil), validAdd.PodIPs...)
		f(&r)
		return r
	}
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"add without netns", func() error {
			_, err := c.Add(ctx, mod(func(r *pluginapi.AddRequest) { r.Netns = "" }))
			return err
		}, "netns"},
		{"add without name and namespace", func() error {
			_, err := c.Add(ctx, mod(func(r *pluginapi.AddRequest) { r.PodName, r.PodNamespace = "", "" }))
			return err
		}, "podName, podNamespace"},
		{"add without IPs", func() error {
			_, err := c.Add(ctx, mod(func(r *pluginapi.AddRequest) { r.PodIPs = nil }))
			return err
		}, "podIPs"},
		{"add with a bad IP", func() error {
			_, err := c.Add(ctx, mod(func(r *pluginapi.AddRequest) { r.PodIPs = []string{"10.0.0.0/8"} }))
			return err
		}, `"10.0.0.0/8" is not an IP address`},
		{"del without container ID", func() error {
			return c.Del(ctx, pluginapi.DelRequest{PodName: "p", PodNamespace: "ns"})
		}, "containerID"},
		{"check without netns", func() error {
			return c.Check(ctx, pluginapi.CheckRequest{PodName: "p", PodNamespace: "ns", ContainerID: "c"})
		}, "netns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var se *pluginapi.StatusError
			if !errors.As(err, &se) || se.StatusCode != http.StatusBadRequest || !strings.Contains(se.Message, tt.want) {
				t.Errorf("err = %v, want 400 mentioning %q", err, tt.want)
			}
		})
	}
	if len(agent.adds)+len(agent.dels)+len(agent.checks) != 0 {
		t.Error("invalid requests reached the agent")
	}
}

func TestDelAndCheck(t *testing.T) {
	agent := &fakeAgent{}
	sock := serve(t, agent)
	c := pluginapi.NewClient(sock, 5*time.Second)
	ctx := context.Background()
	del := pluginapi.DelRequest{PodName: "p", PodNamespace: "ns", ContainerID: "c1"}
	for range 2 {
		if err := c.Del(ctx, del); err != nil {
			t.Fatalf("Del: %v", err)
		}
	}
	if len(agent.dels) != 2 || agent.dels[0] != del {
		t.Errorf("agent dels = %+v", agent.dels)
	}
	check := pluginapi.CheckRequest{PodName: "p", PodNamespace: "ns", PodUID: "u", ContainerID: "c1", Netns: "/n"}
	if err := c.Check(ctx, check); err != nil {
		t.Fatalf("Check: %v", err)
	}
	agent.setCheckErr(errors.New("pod ns/p is not redirected"))
	err := c.Check(ctx, check)
	var se *pluginapi.StatusError
	if !errors.As(err, &se) || se.Message != "pod ns/p is not redirected" {
		t.Errorf("Check err = %v", err)
	}

	// GET /v1/check with a query carries the same request.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	agent.setCheckErr(nil)
	resp, err := hc.Get("http://agent/v1/check?podName=p&podNamespace=ns&podUID=u&containerID=c1&netns=/n")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || agent.checks[len(agent.checks)-1] != check {
		t.Errorf("GET check: status %d, agent saw %+v", resp.StatusCode, agent.checks[len(agent.checks)-1])
	}
	resp, err = hc.Get("http://agent/v1/check?podName=p")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET check without fields: status %d, want 400", resp.StatusCode)
	}
	resp, err = hc.Post("http://agent/v1/add", "application/json", strings.NewReader(`{"podName": 5}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed add: status %d, want 400", resp.StatusCode)
	}
	resp, err = hc.Get("http://agent/v1/add")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET add: status %d, want 405", resp.StatusCode)
	}
}

func TestPing(t *testing.T) {
	c := pluginapi.NewClient(serve(t, &fakeAgent{}), 5*time.Second)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachable(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		sock string
	}{
		{"no socket file", filepath.Join(dir, "missing.sock")},
		{"nobody listening", func() string {
			p := filepath.Join(dir, "stale.sock")
			l, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			l.Close()
			if _, err := os.Stat(p); err != nil {
				t.Fatal(err)
			}
			return p
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := pluginapi.NewClient(tt.sock, time.Second)
			err := c.Ping(context.Background())
			var ue *pluginapi.UnreachableError
			if !errors.As(err, &ue) || ue.Socket != tt.sock {
				t.Fatalf("err = %v, want an UnreachableError for %s", err, tt.sock)
			}
			if !strings.Contains(err.Error(), tt.sock) || strings.Contains(err.Error(), "http://agent") {
				t.Errorf("message %q should name the socket and not the placeholder URL", err)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	agent := &fakeAgent{block: make(chan struct{})}
	defer close(agent.block)
	c := pluginapi.NewClient(serve(t, agent), 100*time.Millisecond)
	_, err := c.Add(context.Background(), validAdd)
	var ue *pluginapi.UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v, want an UnreachableError", err)
	}
}
