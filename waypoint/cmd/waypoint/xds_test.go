//go:build unix

package main

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

// xdsServer stands in for istiod-lite: pkg/xds over gRPC with TLS on a unix socket, serving
// a snapshot per type URL that the test replaces. A type without a snapshot yet holds its
// streams' answers back, so the waypoint can be seen unready. NACKs are recorded from the
// server's log.
type xdsServer struct {
	address string // unix:///…/xds.sock
	srv     *xdsserver.Server

	mu      sync.Mutex
	version int
	snaps   map[string]map[string]*xds.Resource
	ready   map[string]chan struct{} // closed once the type has a snapshot
	nacks   []string                 // details of the NACKs, in order
	asked   map[string]bool          // types a stream asked for
}

func startXDS(t *testing.T, ca *testCA, typeURLs ...string) *xdsServer {
	t.Helper()
	s := &xdsServer{snaps: map[string]map[string]*xds.Resource{}, ready: map[string]chan struct{}{}, asked: map[string]bool{}}
	sources := map[string]xdsserver.Source{}
	for _, typeURL := range typeURLs {
		s.ready[typeURL] = make(chan struct{})
		sources[typeURL] = xdsserver.SourceFunc(func(ctx context.Context, req *xdsserver.Request) (*xdsserver.Delta, error) {
			s.mu.Lock()
			s.asked[typeURL] = true
			s.mu.Unlock()
			select {
			case <-s.ready[typeURL]:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			return xdsserver.Diff(s.snaps[typeURL], req), nil
		})
	}
	srv, err := xdsserver.NewServer(xdsserver.ServerOptions{Sources: sources, Debounce: -1, Logger: slog.New(nackRecorder{s})})
	if err != nil {
		t.Fatal(err)
	}
	s.srv = srv
	sock := filepath.Join(t.TempDir(), "xds.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(ca.serving(t)))
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
	s.address = "unix://" + sock
	return s
}

// set replaces the snapshot of typeURL (every resource gets a new version) and pushes it.
func (s *xdsServer) set(t *testing.T, typeURL string, resources map[string]proto.Message) {
	t.Helper()
	s.mu.Lock()
	s.version++
	snap := map[string]*xds.Resource{}
	for name, msg := range resources {
		a, err := anypb.New(msg)
		if err != nil {
			s.mu.Unlock()
			t.Fatal(err)
		}
		snap[name] = &xds.Resource{Name: name, Version: strconv.Itoa(s.version), Resource: a}
	}
	_, had := s.snaps[typeURL]
	s.snaps[typeURL] = snap
	s.mu.Unlock()
	if !had {
		close(s.ready[typeURL])
	}
	s.srv.Push(typeURL, nil)
}

// askedFor reports whether a stream asked for typeURL. Types are answered in order, so
// every type before it was answered.
func (s *xdsServer) askedFor(typeURL string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked[typeURL]
}

// rejected returns the details of the NACKs so far.
func (s *xdsServer) rejected() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.nacks...)
}

// nackRecorder is the server's log handler: it keeps the detail of each NACK.
type nackRecorder struct{ s *xdsServer }

func (nackRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h nackRecorder) WithAttrs([]slog.Attr) slog.Handler     { return h }
func (h nackRecorder) WithGroup(string) slog.Handler          { return h }

func (h nackRecorder) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "xds response rejected (NACK)" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "detail" {
			h.s.mu.Lock()
			h.s.nacks = append(h.s.nacks, a.Value.String())
			h.s.mu.Unlock()
		}
		return true
	})
	return nil
}
