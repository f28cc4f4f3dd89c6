package xdsserver

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
)

const (
	typeA = "type.googleapis.com/test.A"
	typeB = "type.googleapis.com/test.B"
)

// snapshot is a Source over a mutable set of resources; it records every request.
type snapshot struct {
	mu   sync.Mutex
	res  map[string]*xds.Resource
	reqs []*Request
}

func newSnapshot(kv ...string) *snapshot {
	s := &snapshot{res: map[string]*xds.Resource{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.set(kv[i], kv[i+1])
	}
	return s
}

func (s *snapshot) set(name, version string) { s.setPayload(name, version, version) }

func (s *snapshot) setPayload(name, version, payload string) {
	a, err := anypb.New(wrapperspb.String(payload))
	if err != nil {
		panic(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res[name] = &xds.Resource{Name: name, Version: version, Resource: a}
}

func (s *snapshot) del(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.res, name)
}

func (s *snapshot) Generate(_ context.Context, req *Request) (*Delta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := *req
	kept.Have = maps.Clone(req.Have) // Have is only valid during Generate
	s.reqs = append(s.reqs, &kept)
	return Diff(s.res, req), nil
}

func (s *snapshot) requests() []*Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Request(nil), s.reqs...)
}

// env is a Server on an in-memory listener.
type env struct {
	srv  *Server
	lis  *bufconn.Listener
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func newEnv(tb testing.TB, opts ServerOptions) *env {
	tb.Helper()
	logs := &syncBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.Debounce == 0 {
		opts.Debounce = time.Millisecond
	}
	srv, err := NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = gs.Serve(lis) }()
	go func() { defer wg.Done(); _ = srv.Run(ctx) }()
	tb.Cleanup(func() {
		_ = srv.Close()
		cancel()
		gs.Stop()
		wg.Wait()
	})
	return &env{srv: srv, lis: lis, logs: logs}
}

// dial opens a new connection (each has its own flow-control window).
func (e *env) dial(tb testing.TB) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// recorder is a Handler that keeps what it was sent.
type recorder struct {
	mu     sync.Mutex
	have   map[string]map[string]string // type → name → version
	calls  []string                     // "type name@version" and "type -name"
	reject func(typeURL string, r *xds.Resource) error
	change chan struct{}
}

func newRecorder() *recorder {
	return &recorder{have: map[string]map[string]string{}, change: make(chan struct{}, 1)}
}

func (r *recorder) handle(typeURL string, upserts []*xds.Resource, removals []string) error {
	r.mu.Lock()
	defer func() {
		r.mu.Unlock()
		select {
		case r.change <- struct{}{}:
		default:
		}
	}()
	for _, u := range upserts {
		r.calls = append(r.calls, fmt.Sprintf("%s %s@%s", typeURL, u.Name, u.Version))
		if r.reject != nil {
			if err := r.reject(typeURL, u); err != nil {
				return err
			}
		}
	}
	for _, n := range removals {
		r.calls = append(r.calls, fmt.Sprintf("%s -%s", typeURL, n))
	}
	m := r.have[typeURL]
	if m == nil {
		m = map[string]string{}
		r.have[typeURL] = m
	}
	for _, u := range upserts {
		m[u.Name] = u.Version
	}
	for _, n := range removals {
		delete(m, n)
	}
	return nil
}

func (r *recorder) state(typeURL string) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.have[typeURL])
}

func (r *recorder) callLog() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// waitState waits until the recorder holds exactly want for typeURL.
func (r *recorder) waitState(tb testing.TB, typeURL string, want map[string]string) {
	tb.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if got := r.state(typeURL); maps.Equal(got, want) {
			return
		}
		select {
		case <-r.change:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			tb.Fatalf("state of %s = %v, want %v; calls %v", typeURL, r.state(typeURL), want, r.callLog())
		}
	}
}

// startClient runs a Client until the test ends.
func startClient(tb testing.TB, conn grpc.ClientConnInterface, h xds.Handler, setup func(c *xds.Client)) *xds.Client {
	tb.Helper()
	c, err := xds.NewClient(xds.ClientOptions{
		Conn: conn, Handler: h, Node: &xds.Node{ID: "ztunnel~10.0.0.1~pod.ns~ns.svc.cluster.local"},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		tb.Fatal(err)
	}
	if setup != nil {
		setup(c)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(context.Background()) }()
	tb.Cleanup(func() { _ = c.Close(); <-done })
	return c
}

// checkLeaks fails the test if goroutines started during it outlive its cleanups.
// Register it first so that it runs last.
func checkLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before, %d after:\n%s", before, runtime.NumGoroutine(), ownStacks(string(buf)))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func ownStacks(all string) string {
	var out []string
	for _, g := range strings.Split(all, "\n\n") {
		if strings.Contains(g, "pkg/xds") || strings.Contains(g, "grpc") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
