package images

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/gobuild"
)

// Registry and Tag name every image of the catalog: Registry/<name>:Tag. Nothing is pulled
// from that registry; the nodes hold the images and pods use imagePullPolicy IfNotPresent.
const (
	Registry = "ambient-lite.local"
	Tag      = "dev"
)

// Ref is the reference of the catalog image name.
func Ref(name string) string { return Registry + "/" + name + ":" + Tag }

// Catalog image names.
const (
	Pause     = "pause"       // the pod sandbox (tests/images/pause)
	CoreDNS   = "coredns"     // cluster DNS
	Echo      = "echo"        // Istio's echo server and client, with a busybox shell
	Fortio    = "fortio"      // load generator and server, with a busybox shell
	Ztunnel   = "ztunnel"     // the mesh's node proxy
	IstiodLit = "istiod-lite" // the mesh's control plane
	CNI       = "cni"         // the CNI node agent with the plugin binary
	Waypoint  = "waypoint"    // the L7 proxy of a Gateway of class istio-waypoint
)

// All lists every catalog image.
var All = []string{Pause, CoreDNS, Echo, Fortio, Ztunnel, IstiodLit, CNI, Waypoint}

// goBinaries are the catalog's binaries built from this repository: name -> package.
var goBinaries = map[string]string{
	"pause":       "./tests/images/pause",
	"ztunnel":     "./ztunnel/cmd/ztunnel",
	"istiod-lite": "./istiod-lite/cmd/istiod-lite",
	"node-agent":  "./cni/cmd/node-agent",
	"cni-plugin":  "./cni/cmd/cni-plugin",
	"waypoint":    "./waypoint/cmd/waypoint",
}

// busybox is the static shell the test app images carry (Debian's busybox-static).
const busybox = "/bin/busybox"

// Builder builds catalog images.
type Builder struct {
	// RepoRoot is this repository, whose binaries are built with `go build`.
	RepoRoot string
	// ToolBin holds the pinned tools (tools/build.sh): coredns, echo-server, echo-client, fortio.
	ToolBin string
	// OutDir receives the built binaries (bin/) and the image archives.
	OutDir string
	// Log receives progress; nil means slog.Default().
	Log *slog.Logger
}

// Build builds the named images (changed ones only) and returns them by name.
func (b *Builder) Build(ctx context.Context, names ...string) (map[string]Image, error) {
	log := b.Log
	if log == nil {
		log = slog.Default()
	}
	specs := map[string]func() (Spec, error){}
	var goBins []string
	for _, n := range names {
		s, bins, err := b.spec(n)
		if err != nil {
			return nil, err
		}
		specs[n] = s
		goBins = append(goBins, bins...)
	}
	start := time.Now()
	if err := b.goBuild(ctx, goBins); err != nil {
		return nil, err
	}
	out := map[string]Image{}
	for _, n := range names {
		spec, err := specs[n]()
		if err != nil {
			return nil, err
		}
		img, err := Write(spec, b.OutDir)
		if err != nil {
			return nil, err
		}
		out[n] = img
	}
	log.Info("images ready", "images", strings.Join(names, ","), "took", time.Since(start).Round(time.Millisecond))
	return out, nil
}

func (b *Builder) bin(name string) string { return filepath.Join(b.OutDir, "bin", name) }

// tool returns a pinned tool's path, or an error naming the make target that builds it.
func (b *Builder) tool(name string) (string, error) {
	p := filepath.Join(b.ToolBin, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%w: %s is not in %s (run `make tools`)", ErrMissing, name, b.ToolBin)
	}
	return p, nil
}

// spec returns a function making the named image's spec (once its binaries exist) and the
// Go binaries it needs built first.
func (b *Builder) spec(name string) (func() (Spec, error), []string, error) {
	simple := func(bin, dst string, extra ...File) func() (Spec, error) {
		return func() (Spec, error) {
			return Spec{
				Ref:        Ref(name),
				Files:      append([]File{{Path: dst, Src: b.bin(bin)}}, extra...),
				Entrypoint: []string{dst},
			}, nil
		}
	}
	switch name {
	case Pause:
		return func() (Spec, error) {
			return Spec{Ref: Ref(name), Files: []File{{Path: "/pause", Src: b.bin("pause")}},
				Entrypoint: []string{"/pause"}, User: "65535:65535"}, nil
		}, []string{"pause"}, nil
	case CoreDNS:
		return func() (Spec, error) {
			p, err := b.tool("coredns")
			if err != nil {
				return Spec{}, err
			}
			return Spec{Ref: Ref(name), Files: []File{{Path: "/coredns", Src: p}}, Entrypoint: []string{"/coredns"}}, nil
		}, nil, nil
	case Echo:
		return func() (Spec, error) {
			server, err := b.tool("echo-server")
			if err != nil {
				return Spec{}, err
			}
			client, err := b.tool("echo-client")
			if err != nil {
				return Spec{}, err
			}
			files, err := shellFiles()
			if err != nil {
				return Spec{}, err
			}
			files = append(files, File{Path: "/usr/local/bin/server", Src: server}, File{Path: "/usr/local/bin/client", Src: client})
			return Spec{Ref: Ref(name), Files: files, Entrypoint: []string{"/usr/local/bin/server"},
				Env: []string{"PATH=/usr/local/bin:/bin"}}, nil
		}, nil, nil
	case Fortio:
		return func() (Spec, error) {
			p, err := b.tool("fortio")
			if err != nil {
				return Spec{}, err
			}
			files, err := shellFiles()
			if err != nil {
				return Spec{}, err
			}
			files = append(files, File{Path: "/usr/bin/fortio", Src: p})
			return Spec{Ref: Ref(name), Files: files, Entrypoint: []string{"/usr/bin/fortio"}, Cmd: []string{"server"},
				Env: []string{"PATH=/usr/bin:/bin"}}, nil
		}, nil, nil
	case Ztunnel:
		return simple("ztunnel", "/usr/local/bin/ztunnel"), []string{"ztunnel"}, nil
	case Waypoint:
		return simple("waypoint", "/usr/local/bin/waypoint"), []string{"waypoint"}, nil
	case IstiodLit:
		return simple("istiod-lite", "/usr/local/bin/istiod-lite"), []string{"istiod-lite"}, nil
	case CNI:
		return simple("node-agent", "/usr/local/bin/node-agent",
			File{Path: "/opt/ambient-lite/ambient-lite-cni", Src: b.bin("cni-plugin")}), []string{"node-agent", "cni-plugin"}, nil
	}
	known := append([]string(nil), All...)
	sort.Strings(known)
	return nil, nil, fmt.Errorf("unknown image %q (known: %s)", name, strings.Join(known, ", "))
}

// goBuild builds this repository's binaries, static, into OutDir/bin; the Go build cache
// makes an unchanged one cost only the up-to-date check.
func (b *Builder) goBuild(ctx context.Context, bins []string) error {
	if len(bins) == 0 {
		return nil
	}
	seen := map[string]bool{}
	var pkgs []string
	for _, n := range bins {
		if !seen[n] {
			seen[n] = true
			pkgs = append(pkgs, goBinaries[n])
		}
	}
	sort.Strings(pkgs)
	args := append([]string{"-trimpath", "-ldflags=-s -w", "-o", filepath.Join(b.OutDir, "bin") + "/"}, pkgs...)
	cmd := gobuild.Command(ctx, b.RepoRoot, args...)
	cmd.Env = append(cmd.Env, "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building image binaries (%s): %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return nil
}

// shellFiles are busybox and its applets, plus the passwd and group files and a /tmp, so
// `kubectl exec` into a test app finds a shell, nslookup, wget and the usual tools.
func shellFiles() ([]File, error) {
	if _, err := os.Stat(busybox); err != nil {
		return nil, fmt.Errorf("%w: %s (Debian's busybox-static; run `make setup`)", ErrMissing, busybox)
	}
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("listing busybox applets: %w", err)
	}
	files := []File{
		{Path: "/bin/busybox", Src: busybox},
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{Path: "/tmp", Mode: 0o1777},
		{Path: "/root", Mode: 0o700},
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			files = append(files, File{Path: "/bin/" + a, Link: "busybox"})
		}
	}
	return files, nil
}
