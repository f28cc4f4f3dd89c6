package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
)

// ErrNoBinaries means the control plane binaries are not built; `make tools` builds them.
var ErrNoBinaries = errors.New("control plane binaries not found")

// EnvBinDir overrides where the control plane binaries are looked up.
const EnvBinDir = "AMBIENT_LITE_BIN_DIR"

var shared struct {
	mainCalled bool
	once       sync.Once
	c          *Cluster
	err        error
}

// Main runs the tests of a package that uses [Shared] and then stops the shared control
// plane. Call it from TestMain: func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }.
func Main(m *testing.M) int {
	shared.mainCalled = true
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping shared control plane:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Shared returns the test binary's control plane, starting it on first use. Without the
// binaries it skips tb on a developer machine and fails it in CI.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	if !shared.mainCalled {
		tb.Fatal("cluster.Shared needs TestMain to call cluster.Main, which stops the control plane after the tests")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		shared.c, shared.err = Start(ctx, Options{Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if shared.err == nil {
			tb.Logf("local control plane ready in %s (%s)", shared.c.Ready.Round(time.Millisecond), shared.c.Dir)
		}
	})
	if errors.Is(shared.err, ErrNoBinaries) {
		testenv.SkipOrFail(tb, shared.err.Error())
	}
	if shared.err != nil {
		tb.Fatalf("starting local control plane: %v", shared.err)
	}
	return shared.c
}

var nonDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace named after the test, with extra labels, and deletes it
// when the test ends. It returns the namespace's name.
func (c *Cluster) Namespace(tb testing.TB, labels map[string]string) string {
	tb.Helper()
	base := strings.Trim(nonDNS.ReplaceAllString(strings.ToLower(tb.Name()), "-"), "-")
	if len(base) > 50 {
		base = base[:50]
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: base + "-" + utilrand.String(5), Labels: labels}}
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("creating namespace %s: %v", ns.Name, err)
	}
	tb.Cleanup(func() {
		err := c.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			tb.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// ResolveBinDir returns the directory with the control plane binaries: dir if set, else
// $AMBIENT_LITE_BIN_DIR, else the repository's .bin. It wraps [ErrNoBinaries] when one is missing.
func ResolveBinDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv(EnvBinDir)
	}
	if dir == "" {
		root, err := testenv.RepoRoot()
		if err != nil {
			return "", fmt.Errorf("%w: %v (set %s)", ErrNoBinaries, err, EnvBinDir)
		}
		dir = filepath.Join(root, ".bin")
	}
	for _, name := range []string{etcdName, apiserverName, controllerName, schedulerName} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return "", fmt.Errorf("%w: %s is not in %s (run `make tools`)", ErrNoBinaries, name, dir)
		}
	}
	return dir, nil
}
