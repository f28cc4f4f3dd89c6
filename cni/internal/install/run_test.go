package install

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// repairWithin is how soon Run must repair the installation after a change.
const repairWithin = time.Second

// startRun runs in.Run until the test ends and checks it returns nil.
func startRun(t *testing.T, in *Installer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	})
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeAsPrimaryCNI writes data as a primary CNI daemon does: into a temporary file renamed
// over the config, or in place.
func writeAsPrimaryCNI(t *testing.T, path string, data []byte, inPlace bool) {
	t.Helper()
	if inPlace {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestRunRepairs(t *testing.T) {
	n := newNode(t)
	n.opts.Resync = time.Hour // only file events may trigger a repair
	bridge := n.copyTestdata(t, "bridge-in.conflist", "10-bridge.conflist")
	in := n.installer(t)
	startRun(t, in)
	eventually(t, repairWithin, "initial install", in.Check)

	t.Run("primary rewritten atomically", func(t *testing.T) {
		writeAsPrimaryCNI(t, n.conf("10-bridge.conflist"), bridge, false)
		eventually(t, repairWithin, "re-chained", in.Check)
	})
	t.Run("primary rewritten in place", func(t *testing.T) {
		writeAsPrimaryCNI(t, n.conf("10-bridge.conflist"), bridge, true)
		eventually(t, repairWithin, "re-chained", in.Check)
	})
	t.Run("new primary", func(t *testing.T) {
		n.copyTestdata(t, "flannel-in.conf", "05-flannel.conf")
		eventually(t, repairWithin, "new primary chained", in.Check)
		if got := pluginTypes(t, n.conf("05-flannel.conflist")); !reflect.DeepEqual(got, []string{"flannel", DefaultPluginName}) {
			t.Errorf("05-flannel.conflist plugins = %v", got)
		}
	})
	t.Run("binary deleted", func(t *testing.T) {
		bin := filepath.Join(n.opts.BinDir, DefaultPluginName)
		if err := os.Remove(bin); err != nil {
			t.Fatal(err)
		}
		eventually(t, repairWithin, "binary reinstalled", func() error {
			_, err := os.Stat(bin)
			return err
		})
	})
	t.Run("kubeconfig deleted", func(t *testing.T) {
		kc := n.conf(DefaultKubeconfigName)
		if err := os.Remove(kc); err != nil {
			t.Fatal(err)
		}
		eventually(t, repairWithin, "kubeconfig rewritten", func() error {
			_, err := os.Stat(kc)
			return err
		})
	})
	t.Run("uninstall restores the plugins", func(t *testing.T) {
		flannel, _ := os.ReadFile(filepath.Join("testdata", "flannel-in.conf"))
		if err := in.Uninstall(); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(n.conf("10-bridge.conflist"))
		if !reflect.DeepEqual(pluginValues(t, got), pluginValues(t, bridge)) {
			t.Errorf("10-bridge.conflist after Uninstall:\n%s\nwant the original plugins:\n%s", got, bridge)
		}
		got, _ = os.ReadFile(n.conf("05-flannel.conflist"))
		if !reflect.DeepEqual(pluginValues(t, got), pluginValues(t, []byte(`{"plugins":[`+string(flannel)+`]}`))) {
			t.Errorf("05-flannel.conflist after Uninstall:\n%s\nwant the .conf's plugin alone", got)
		}
	})
}

// syncBuffer is a log sink the test reads while Run writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunWaitsForPrimary(t *testing.T) {
	n := newNode(t)
	if err := os.RemoveAll(n.opts.ConfDir); err != nil { // not even the directory yet
		t.Fatal(err)
	}
	n.opts.Resync = 20 * time.Millisecond // many passes while waiting
	var logs syncBuffer
	n.opts.Log = slog.New(slog.NewTextHandler(&logs, nil))
	in := n.installer(t)
	startRun(t, in)

	const waiting = "waiting for the primary CNI"
	eventually(t, repairWithin, "waiting logged", func() error {
		if !strings.Contains(logs.String(), waiting) {
			return errors.New("not logged")
		}
		return nil
	})
	time.Sleep(10 * n.opts.Resync)
	if err := in.Check(); !errors.Is(err, ErrNoPrimaryConfig) {
		t.Errorf("Check while waiting = %v, want ErrNoPrimaryConfig", err)
	}
	// A malformed file, then a good one: the error is logged once, then the file chained.
	writeAsPrimaryCNI(t, n.conf("10-bridge.conflist"), []byte(`{"cniVersion":`), true)
	eventually(t, repairWithin, "error logged", func() error {
		if !strings.Contains(logs.String(), "10-bridge.conflist: unexpected end of input") {
			return errors.New("not logged")
		}
		return nil
	})
	time.Sleep(10 * n.opts.Resync)
	bridge, _ := os.ReadFile(filepath.Join("testdata", "bridge-in.conflist"))
	writeAsPrimaryCNI(t, n.conf("10-bridge.conflist"), bridge, false)
	eventually(t, repairWithin, "chained once the primary config is valid", in.Check)

	out := logs.String()
	if c := strings.Count(out, waiting); c != 1 {
		t.Errorf("waiting logged %d times, want once:\n%s", c, out)
	}
	if c := strings.Count(out, "installing the CNI plugin; retrying"); c != 1 {
		t.Errorf("the malformed config logged %d times, want once:\n%s", c, out)
	}
}

// TestRunFight checks a component that keeps removing the plugin is reported.
func TestRunFight(t *testing.T) {
	n := newNode(t)
	n.opts.Resync = time.Hour
	var logs syncBuffer
	n.opts.Log = slog.New(slog.NewTextHandler(&logs, nil))
	bridge := n.copyTestdata(t, "bridge-in.conflist", "10-bridge.conflist")
	in := n.installer(t)
	startRun(t, in)
	for i := range fightRewrites + 1 {
		eventually(t, repairWithin, "re-chained", in.Check)
		if i < fightRewrites {
			writeAsPrimaryCNI(t, n.conf("10-bridge.conflist"), bridge, false)
		}
	}
	// The warning follows the last rewrite's write, which Check may see first.
	eventually(t, repairWithin, "the fight reported", func() error {
		if !strings.Contains(logs.String(), "keeps losing the CNI plugin") {
			return errors.New("not reported yet")
		}
		return nil
	})
	if c := strings.Count(logs.String(), "keeps losing the CNI plugin"); c != 1 {
		t.Errorf("fight reported %d times, want once:\n%s", c, logs.String())
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	n := newNode(t)
	in := n.installer(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	eventually(t, repairWithin, "binary installed", func() error {
		_, err := os.Stat(filepath.Join(n.opts.BinDir, DefaultPluginName))
		return err
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// Run does not uninstall: an agent restart must leave the plugin in place.
	if _, err := os.Stat(filepath.Join(n.opts.BinDir, DefaultPluginName)); errors.Is(err, fs.ErrNotExist) {
		t.Error("the binary was removed when Run stopped")
	}
}
