package cluster_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
)

// TestKubeletThatCannotStart: a node whose kubelet exits at once fails Start with an error
// naming the kubelet and showing its log, and the failed start leaves none of its network
// namespaces, mounts, cgroups or files behind.
func TestKubeletThatCannotStart(t *testing.T) {
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin)
	if _, err := cluster.ResolveBinDir(""); err != nil {
		testenv.SkipOrFail(t, err.Error())
	}
	id := "t" + strings.ToLower(utilrand.String(6))
	dir := filepath.Join(t.TempDir(), "cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{
		Nodes: 1, ID: id, Dir: dir, KubeletArgs: []string{"--no-such-flag"},
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err == nil {
		_ = c.Stop()
		t.Fatal("Start succeeded with a kubelet flag that does not exist")
	}
	if errors.Is(err, cluster.ErrNoBinaries) {
		testenv.SkipOrFail(t, err.Error())
	}
	msg := err.Error()
	t.Logf("Start failed as it should:\n%s", msg)
	for _, want := range []string{"node1/kubelet", "exited during start-up", "unknown flag: --no-such-flag"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Start error lacks %q:\n%s", want, msg)
		}
	}
	if left, _ := filepath.Glob("/run/netns/al-" + id + "-*"); len(left) > 0 {
		t.Errorf("network namespaces left after the failed start: %v", left)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/ambient-lite/" + id); len(left) > 0 {
		t.Errorf("cgroups left after the failed start: %v", left)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), dir) {
		t.Errorf("mounts under %s left after the failed start", dir)
	}
	entries, _ := os.ReadDir(dir)
	// The directory was the caller's: Start leaves it, but nothing running in it.
	t.Logf("failed start left %d entries in the caller's dir", len(entries))
}

// TestStartRejectsBadOptions: option errors are reported before anything is created.
func TestStartRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts cluster.Options
		want string
	}{
		{"negative nodes", cluster.Options{Nodes: -1}, "want 0 to 8"},
		{"too many nodes", cluster.Options{Nodes: cluster.MaxNodes + 1}, "want 0 to 8"},
		{"ID with capitals", cluster.Options{Nodes: 1, ID: "Bad_ID"}, "lowercase letters and digits"},
		{"ID too long", cluster.Options{Nodes: 1, ID: "toolongid"}, "lowercase letters and digits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cluster.Start(context.Background(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start(%+v) = %v, want an error containing %q", tc.opts, err, tc.want)
			}
		})
	}
}
