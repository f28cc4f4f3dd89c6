package netns

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

// redirectToolSource is a tiny command around cni/internal/redirect: the CNI's real
// Install and Remove of a pod's eBPF redirection. Go's internal-package rule keeps tests/
// from importing it, so the test builds this command as if it lived in that package's tree,
// through a build overlay: no file is added to the repository.
const redirectToolSource = `package main

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/ambient-lite/ambient-lite/cni/internal/redirect"
)

func main() {
	var err error
	switch os.Args[1] {
	case "install": // install <netns path> <pin dir> <pod ip>
		err = redirect.Install(os.Args[2], os.Args[3], redirect.Config{PodIPs: []netip.Addr{netip.MustParseAddr(os.Args[4])}})
	case "remove": // remove <netns path> <pin dir>
		err = redirect.Remove(os.Args[2], os.Args[3])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
`

var redirectTool struct {
	once sync.Once
	path string
	err  error
}

// buildRedirectTool builds the redirect command once per test binary.
func buildRedirectTool(t testing.TB) string {
	t.Helper()
	redirectTool.once.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			redirectTool.err = err
			return
		}
		src := filepath.Join(binDir, "redirect-tool.go")
		if err := os.WriteFile(src, []byte(redirectToolSource), 0o600); err != nil {
			redirectTool.err = err
			return
		}
		virtual := filepath.Join(root, "cni", "internal", "redirect", "inpodtesttool", "main.go")
		overlay, err := json.Marshal(map[string]map[string]string{"Replace": {virtual: src}})
		if err != nil {
			redirectTool.err = err
			return
		}
		overlayPath := filepath.Join(binDir, "redirect-tool-overlay.json")
		if err := os.WriteFile(overlayPath, overlay, 0o600); err != nil {
			redirectTool.err = err
			return
		}
		redirectTool.path = filepath.Join(binDir, "redirect-tool")
		cmd := exec.Command("go", "build", "-overlay", overlayPath, "-o", redirectTool.path, "./cni/internal/redirect/inpodtesttool")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			redirectTool.err = fmt.Errorf("building the redirect tool: %v\n%s", err, out)
		}
	})
	if redirectTool.err != nil {
		t.Fatal(redirectTool.err)
	}
	return redirectTool.path
}

// installRedirect installs the CNI's redirection into the pod netns ns (pins under
// pinRoot), and removes it when the test ends.
func installRedirect(t testing.TB, ns, pinRoot, podIP string) {
	t.Helper()
	tool := buildRedirectTool(t)
	nsPath, pinDir := "/var/run/netns/"+ns, filepath.Join(pinRoot, ns)
	if out, err := exec.Command(tool, "install", nsPath, pinDir, podIP).CombinedOutput(); err != nil {
		t.Fatalf("installing the redirection in %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(tool, "remove", nsPath, pinDir).CombinedOutput(); err != nil {
			t.Errorf("removing the redirection of %s: %v\n%s", ns, err, out)
		}
	})
}

// privateBPFFS mounts a bpffs for this test's pins, unmounted when the test ends.
func privateBPFFS(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting bpffs: %v", err)
		}
	})
	return dir
}

// fdCount is how many file descriptors process pid has open.
func fdCount(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("listing fds of %d: %v", pid, err)
	}
	return len(ents)
}

// goroutines is how many goroutines ztunnel in ns runs (its admin server's pprof).
func goroutines(t testing.TB, tp *Topology, ns string) int {
	t.Helper()
	resp, err := tp.HTTPClient(ns).Get("http://127.0.0.1:15000/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatalf("goroutine profile in %s: %v", ns, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("goroutine profile in %s: %s", ns, resp.Status)
	}
	var total int
	buf := make([]byte, 256)
	n, _ := resp.Body.Read(buf)
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &total); err != nil {
		t.Fatalf("goroutine profile in %s starts %q: %v", ns, line, err)
	}
	return total
}
