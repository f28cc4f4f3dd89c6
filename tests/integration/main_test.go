package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
)

var binaries struct {
	dir  string
	mu   sync.Mutex
	done map[string]error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ambient-lite-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binaries.dir, binaries.done = dir, map[string]error{}
	code := cluster.Main(m)
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// binary builds the command at pkg (relative to the repository root) once per test binary
// and returns its path.
func binary(t testing.TB, pkg string) string {
	t.Helper()
	out := filepath.Join(binaries.dir, filepath.Base(pkg))
	binaries.mu.Lock()
	defer binaries.mu.Unlock()
	err, built := binaries.done[pkg]
	if !built {
		root, rerr := testenv.RepoRoot()
		if rerr != nil {
			t.Fatal(rerr)
		}
		cmd := exec.Command("go", "build", "-o", out, "./"+pkg)
		cmd.Dir = root
		if b, cerr := cmd.CombinedOutput(); cerr != nil {
			err = fmt.Errorf("building %s: %v\n%s", pkg, cerr, b)
		}
		binaries.done[pkg] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}
