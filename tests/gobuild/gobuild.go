// Package gobuild holds the flags every build of the mesh's binaries (ztunnel, the waypoint,
// istiod-lite, the CNI node agent and plugin) uses, so the images, the netns tests and
// benchmarks and the integration tests run what ships. It is not a build system: callers run
// `go build` themselves, adding Flags.
package gobuild

// Flags go right after `go build`.
//
// grpcnotrace drops grpc's golang.org/x/net/trace hook (its /debug/requests pages, which
// nothing here serves). That hook links html/template, whose reflection (MethodByName)
// makes the linker keep every exported method of every type: ztunnel measured 28.3 MB
// against 21.6 MB on disk, and an idle ztunnel's resident set 21.3-22.3 MB against
// 18.2-18.9 MB (most of a Go proxy's resident set is its own binary's pages).
var Flags = []string{"-tags=grpcnotrace"}
