package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
)

// debounce is how long Run waits after the last file event before it re-checks: a primary CNI
// writing several files, or a file in several steps, causes one pass.
const debounce = 100 * time.Millisecond

// Rewrites of the config list within fightWindow beyond fightRewrites mean another component
// keeps taking the plugin out again.
const (
	fightWindow   = time.Minute
	fightRewrites = 5
)

// Run installs the plugin and keeps it installed until ctx ends, then returns nil. It watches
// ConfDir and BinDir and re-runs Install shortly after a config file, the kubeconfig or the
// binary changes (the primary CNI rewrote its file without the plugin, a lexically earlier
// config appeared, the binary was deleted), and every Resync as a safety net. Failures do not
// stop it: without a primary config it logs once that it waits, and other errors are logged
// (once until they change) and retried on the next event or resync. Run does not uninstall.
func (i *Installer) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("install: watching the CNI directories: %w", err)
	}
	defer w.Close()
	r := &runner{i: i, w: w, lastErr: "not started"}
	r.reconcile(ctx)

	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	resync := time.NewTicker(i.opts.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("install: the file watcher stopped")
			}
			if i.relevant(ev) {
				quiet.Reset(debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("install: the file watcher stopped")
			}
			// Typically an event queue overflow: events were lost, so look again.
			i.log.Warn("watching the CNI directories", "err", err)
			quiet.Reset(debounce)
		case <-quiet.C:
			r.reconcile(ctx)
		case <-resync.C:
			r.reconcile(ctx)
		}
	}
}

// relevant reports whether ev may mean the installation needs repair.
func (i *Installer) relevant(ev fsnotify.Event) bool {
	confDir, binDir := filepath.Clean(i.opts.ConfDir), filepath.Clean(i.opts.BinDir)
	name := filepath.Clean(ev.Name)
	if name == confDir || name == binDir {
		return true // the directory itself was removed or moved
	}
	dir, base := filepath.Split(name)
	dir = filepath.Clean(dir)
	if dir == binDir && base == i.opts.PluginName {
		return true // includes chmod: a binary that lost its execute bit is broken too
	}
	if dir != confDir || ev.Op == fsnotify.Chmod {
		return false // a config's mode does not change what the runtime loads; Resync fixes the kubeconfig's
	}
	return isConfigFile(base) || base == i.opts.KubeconfigName
}

// runner is Run's state between passes.
type runner struct {
	i       *Installer
	w       *fsnotify.Watcher
	lastErr string // the last pass's error, "" after a success: log only changes
	// rewrites are the times the config list was rewritten within the last fightWindow.
	rewrites []time.Time
	warned   time.Time
}

// reconcile makes sure both directories are watched, then runs one Install pass.
func (r *runner) reconcile(ctx context.Context) {
	i := r.i
	for _, dir := range []string{i.opts.ConfDir, i.opts.BinDir} {
		if slices.Contains(r.w.WatchList(), dir) {
			continue
		}
		// Watch before installing, so that no change after this pass goes unseen.
		err := os.MkdirAll(dir, 0o755)
		if err == nil {
			err = r.w.Add(dir)
		}
		if err != nil {
			i.log.Warn("watching a CNI directory; relying on the periodic re-check", "dir", dir, "err", err)
		}
	}
	rewrote, err := i.install(ctx)
	if ctx.Err() != nil {
		return
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	switch {
	case msg == r.lastErr:
	case errors.Is(err, ErrNoPrimaryConfig):
		i.log.Info("waiting for the primary CNI to write its config before chaining the CNI plugin", "dir", i.opts.ConfDir)
	case err != nil:
		i.log.Error("installing the CNI plugin; retrying on the next change", "err", err)
	default:
		i.log.Info("CNI plugin installed", "pluginBinary", i.binPath, "kubeconfig", i.kubeconfigPath)
	}
	r.lastErr = msg
	if rewrote {
		r.noteRewrite(time.Now())
	}
}

// noteRewrite warns when the config list had to be rewritten too often: something keeps
// taking the plugin out (a primary CNI that owns its directory exclusively, another installer).
func (r *runner) noteRewrite(now time.Time) {
	r.rewrites = append(r.rewrites, now)
	r.rewrites = slices.DeleteFunc(r.rewrites, func(t time.Time) bool { return now.Sub(t) > fightWindow })
	if len(r.rewrites) > fightRewrites && now.Sub(r.warned) > fightWindow {
		r.warned = now
		r.i.log.Warn("the primary CNI config keeps losing the CNI plugin: another component rewrites it",
			"rewrites", len(r.rewrites), "within", fightWindow,
			"hint", "make the primary CNI leave other plugins in its config (Cilium: cni.exclusive=false)")
	}
}
