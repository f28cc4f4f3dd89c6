package xdsserver_test

import (
	"context"
	"log/slog"
	"net"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/pkg/xds/xdsserver"
)

// A Server whose Source answers every stream from one snapshot; the caller Pushes the
// names it changed.
func ExampleServer() {
	snapshot := map[string]*xds.Resource{} // filled and replaced by the caller
	srv, err := xdsserver.NewServer(xdsserver.ServerOptions{
		Sources: map[string]xdsserver.Source{
			"type.googleapis.com/istio.workload.Address": xdsserver.SourceFunc(
				func(_ context.Context, req *xdsserver.Request) (*xdsserver.Delta, error) {
					return xdsserver.Diff(snapshot, req), nil
				}),
		},
		Logger: slog.Default(),
	})
	if err != nil {
		return
	}
	defer srv.Close()
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Run(ctx) }()

	srv.Push("type.googleapis.com/istio.workload.Address", []string{"cluster1//Pod/ns/pod-1"})
}
