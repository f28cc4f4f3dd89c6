// Package testenv decides what a test may assume about the machine it runs on: whether it
// is CI, whether it has the privileges it needs, and where the repository is.
//
// A test that needs something the machine lacks is skipped with the reason on a developer
// machine, and fails in CI (CI=true), where everything is expected to be present; a
// privileged test can therefore never "pass" by skipping in CI. Only _test.go files and
// tests/ may import this package.
package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Module is the path of the repository's Go module.
const Module = "github.com/ambient-lite/ambient-lite"

// InCI reports whether the process runs in CI: CI is set to a true value ("true", "1").
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// SkipOrFail stops tb because a precondition is missing: it skips with reason on a
// developer machine and fails in CI.
func SkipOrFail(tb testing.TB, reason string) {
	tb.Helper()
	if InCI() {
		tb.Fatalf("CI=true, so this test must run, but: %s", reason)
	}
	tb.Skip(reason)
}

// Capability is a Linux capability number (see capabilities(7)).
type Capability uint

// The capabilities the mesh's privileged tests ask for.
const (
	CapNetAdmin Capability = 12
	CapNetRaw   Capability = 13
	CapSysAdmin Capability = 21
	CapPerfmon  Capability = 38
	CapBPF      Capability = 39
)

func (c Capability) String() string {
	switch c {
	case CapNetAdmin:
		return "CAP_NET_ADMIN"
	case CapNetRaw:
		return "CAP_NET_RAW"
	case CapSysAdmin:
		return "CAP_SYS_ADMIN"
	case CapPerfmon:
		return "CAP_PERFMON"
	case CapBPF:
		return "CAP_BPF"
	}
	return "CAP_" + strconv.Itoa(int(c))
}

// RequirePrivileged stops tb (see [SkipOrFail]) unless the process runs as root with every
// capability in caps effective.
func RequirePrivileged(tb testing.TB, caps ...Capability) {
	tb.Helper()
	eff, err := effectiveCaps()
	if err != nil {
		SkipOrFail(tb, fmt.Sprintf("cannot read capabilities: %v", err))
		return
	}
	if reason := privilegeGap(os.Geteuid(), eff, caps); reason != "" {
		SkipOrFail(tb, reason)
	}
}

// privilegeGap says what is missing for a process with euid and effective capability set
// eff to have root and caps; "" means nothing is.
func privilegeGap(euid int, eff uint64, caps []Capability) string {
	var missing []string
	if euid != 0 {
		missing = append(missing, "root (euid "+strconv.Itoa(euid)+")")
	}
	for _, c := range caps {
		if c >= 64 || eff&(1<<c) == 0 {
			missing = append(missing, c.String())
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return "needs " + strings.Join(missing, ", ") + " (run the tests as root, e.g. sudo -E make test)"
}

// effectiveCaps returns the CapEff mask of this process from /proc/self/status.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseCapEff(f)
}

func parseCapEff(r io.Reader) (uint64, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

// RepoRoot returns the repository root: the nearest directory above the working directory
// whose go.mod declares [Module].
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module "+Module+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory", Module)
		}
		dir = parent
	}
}

// Buffer is a bytes.Buffer safe for concurrent writers (a child process's stdout and
// stderr) and readers (the test polling its output).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Golden compares got with the golden file at path, or rewrites the file when update is set
// (the package's -update flag).
func Golden(tb testing.TB, path string, got []byte, update bool) {
	tb.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		tb.Errorf("%s differs (run with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
