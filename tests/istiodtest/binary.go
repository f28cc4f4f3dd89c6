package istiodtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/gobuild"
)

var binaries struct {
	mu   sync.Mutex
	dir  string
	done map[string]error
}

// Binary builds the command at pkg (relative to the repository root) once per test binary
// and returns its path. Call Cleanup from TestMain to remove the builds.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	binaries.mu.Lock()
	defer binaries.mu.Unlock()
	if binaries.dir == "" {
		dir, err := os.MkdirTemp("", "ambient-lite-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binaries.dir, binaries.done = dir, map[string]error{}
	}
	out := filepath.Join(binaries.dir, filepath.Base(pkg))
	err, built := binaries.done[pkg]
	if !built {
		root, rerr := testenv.RepoRoot()
		if rerr != nil {
			t.Fatal(rerr)
		}
		cmd := gobuild.Command(context.Background(), root, "-o", out, "./"+pkg)
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

// Cleanup removes what Binary built; call it from TestMain after the tests ran.
func Cleanup() {
	binaries.mu.Lock()
	defer binaries.mu.Unlock()
	if binaries.dir != "" {
		_ = os.RemoveAll(binaries.dir)
		binaries.dir = ""
	}
}
