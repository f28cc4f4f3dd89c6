// Package gobuild builds the mesh's binaries (ztunnel, the waypoint, istiod-lite, the CNI
// node agent and plugin) the one way they ship, so the images, the netns tests and
// benchmarks and the integration tests run what ships. It is not a build system: it makes
// the `go build` command; callers add their outputs and packages and run it.
package gobuild

import (
	"context"
	"os"
	"os/exec"
)

// Flags go right after `go build`.
//
// grpcnotrace drops grpc's golang.org/x/net/trace hook (its /debug/requests pages, which
// nothing here serves). That hook links html/template, whose reflection (MethodByName)
// makes the linker keep every exported method of every type: ztunnel measured 28.3 MB
// against 21.6 MB on disk, and an idle ztunnel's resident set 21.3-22.3 MB against
// 18.2-18.9 MB (most of a Go proxy's resident set is its own binary's pages).
var Flags = []string{"-tags=grpcnotrace"}

// Env is added to the build's environment. CGO_ENABLED=0: static binaries, as the images
// ship. (With cgo the binary loads libc and the dynamic loader, whose pages count in the
// resident set the benchmarks report: about 1.3 MB of ztunnel's.)
var Env = []string{"CGO_ENABLED=0"}

// Command returns `go build` with Flags and then args (output and packages), run in dir
// with Env.
func Command(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", append(append([]string{"build"}, Flags...), args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), Env...)
	return cmd
}
