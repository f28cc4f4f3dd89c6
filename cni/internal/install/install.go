// Package install puts the ambient-lite CNI plugin on a node and keeps it there: it copies the
// plugin binary into the node's CNI bin directory, writes the kubeconfig the plugin reads, and
// chains the plugin, last, into the primary CNI's config list (the first .conf or .conflist in
// the config directory in lexical order, the one the container runtime loads; containerd also
// loads .json files, which are not considered here). Run repeats
// that whenever the primary CNI rewrites its file, a new primary file appears or the binary
// goes away; Uninstall takes it all back out.
//
// The node agent (cni/cmd/node-agent) is its only user. The package does not decide
// when to uninstall (an agent restart or upgrade must leave the plugin in place; only the
// DaemonSet's removal should call Uninstall), does not create the primary CNI's config, never
// writes a config file of its own that the runtime would load, and does not run the plugin. The
// rewriting of the config list is pure (conflist.go) and keeps every field of every other
// plugin as written, including fields it does not know.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ambient-lite/ambient-lite/cni/internal/plugin"
)

// Defaults for the Options fields left zero.
const (
	DefaultPluginName     = "ambient-lite-cni"
	DefaultKubeconfigName = "ZZZ-ambient-lite-kubeconfig"
	DefaultResync         = 30 * time.Second
)

// Errors callers branch on.
var (
	// ErrNoPrimaryConfig means the config directory holds no .conf or .conflist yet: the
	// primary CNI has not written its config. Run waits for one.
	ErrNoPrimaryConfig = errors.New("no primary CNI config")
	// ErrInvalidConfig means the primary config cannot be chained into: malformed JSON, a
	// .conflist without "plugins", a cniVersion the plugin does not support. The error names
	// the file and the problem.
	ErrInvalidConfig = errors.New("invalid primary CNI config")
	// ErrNotInstalled is returned by Check when the plugin is not (or no longer) chained
	// into the primary config as Install would chain it, or its binary or kubeconfig is missing.
	ErrNotInstalled = errors.New("ambient-lite CNI plugin not installed")
)

// PluginConfig holds the plugin's settings written into its entry in the config list (see
// plugin.Config); "kubeconfig" is filled in from Options.
type PluginConfig struct {
	// AgentSocket is the node agent's unix socket as the plugin sees it on the node. If
	// empty, the plugin's default (pluginapi.DefaultSocketPath).
	AgentSocket string
	// Timeout bounds one plugin command. If zero, the plugin's default (plugin.DefaultTimeout).
	Timeout time.Duration
	// LogLevel is debug, info, warn or error. If empty, the plugin logs at info.
	LogLevel string
}

// Options configure an Installer. Paths are as this process sees them unless a field says
// otherwise.
type Options struct {
	// ConfDir is the node's CNI config directory (/etc/cni/net.d on the node; often mounted
	// elsewhere in the agent's container). Required. Created if missing.
	ConfDir string
	// HostConfDir is ConfDir as the container runtime sees it on the node: the plugin's
	// entry names its kubeconfig under it, so it must be absolute. If empty, ConfDir (the
	// agent sees the node's paths).
	HostConfDir string
	// BinDir is the node's CNI bin directory (/opt/cni/bin on the node). Required. Created
	// if missing.
	BinDir string
	// PluginBinary is the plugin binary to copy into BinDir (a file in the agent's image).
	// Required.
	PluginBinary string
	// PluginName is the binary's name in BinDir, which is also its "type" in the config list.
	// If empty, DefaultPluginName.
	PluginName string
	// Plugin holds the plugin's settings.
	Plugin PluginConfig
	// Kubeconfig says what the plugin's kubeconfig holds. Server and TokenFile are required.
	Kubeconfig KubeconfigSource
	// KubeconfigName is the kubeconfig's file name in ConfDir. It must not end in .conf,
	// .conflist or .json, which runtimes would load as network configs. If empty,
	// DefaultKubeconfigName.
	KubeconfigName string
	// Resync is how often Run re-checks everything even without a file event. If zero,
	// DefaultResync.
	Resync time.Duration
	// Log receives the installer's logs. If nil, slog.Default().
	Log *slog.Logger
}

// Installer installs the plugin on one node. Its methods are safe for concurrent use.
type Installer struct {
	opts           Options
	log            *slog.Logger
	entry          json.RawMessage // our plugin's entry in the config list
	kubeconfig     []byte
	binPath        string
	kubeconfigPath string

	mu sync.Mutex // serializes Install and Uninstall, and guards sums
	// sums caches file digests by what stat says of the file, so that re-checking an
	// unchanged binary does not read it again.
	sums map[string]digest
}

// digest is a file's SHA-256 together with the stat data it was computed for.
type digest struct {
	stamp fileStamp
	sum   [sha256.Size]byte
}

type fileStamp struct {
	size  int64
	mtime time.Time
	ino   uint64
	mode  fs.FileMode
}

func stampOf(fi fs.FileInfo) fileStamp {
	s := fileStamp{size: fi.Size(), mtime: fi.ModTime(), mode: fi.Mode()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

// New validates opts and renders the plugin's entry and kubeconfig. It touches nothing on
// the node.
func New(opts Options) (*Installer, error) {
	if opts.ConfDir == "" {
		return nil, errors.New("install: ConfDir is required")
	}
	if opts.BinDir == "" {
		return nil, errors.New("install: BinDir is required")
	}
	if opts.PluginBinary == "" {
		return nil, errors.New("install: PluginBinary is required")
	}
	fi, err := os.Stat(opts.PluginBinary)
	if err != nil {
		return nil, fmt.Errorf("install: plugin binary: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("install: plugin binary %s is not a regular file", opts.PluginBinary)
	}
	if opts.HostConfDir == "" {
		opts.HostConfDir = opts.ConfDir
	}
	if opts.PluginName == "" {
		opts.PluginName = DefaultPluginName
	}
	if err := plainName(opts.PluginName); err != nil {
		return nil, fmt.Errorf("install: PluginName: %w", err)
	}
	if opts.KubeconfigName == "" {
		opts.KubeconfigName = DefaultKubeconfigName
	}
	if err := plainName(opts.KubeconfigName); err != nil {
		return nil, fmt.Errorf("install: KubeconfigName: %w", err)
	}
	if ext := filepath.Ext(opts.KubeconfigName); isConfigFile(opts.KubeconfigName) || ext == ".json" {
		return nil, fmt.Errorf("install: KubeconfigName %q ends in %s: the runtime would load it as a network config", opts.KubeconfigName, ext)
	}
	if err := opts.Kubeconfig.validate(); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if opts.Resync <= 0 {
		opts.Resync = DefaultResync
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}

	entry, err := renderEntry(opts)
	if err != nil {
		return nil, err
	}
	return &Installer{
		opts:           opts,
		log:            log,
		entry:          entry,
		kubeconfig:     renderKubeconfig(opts.Kubeconfig),
		binPath:        filepath.Join(opts.BinDir, opts.PluginName),
		kubeconfigPath: filepath.Join(opts.ConfDir, opts.KubeconfigName),
		sums:           map[string]digest{},
	}, nil
}

func plainName(name string) error {
	if name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return fmt.Errorf("%q is not a plain file name", name)
	}
	return nil
}

// renderEntry returns the plugin's entry in the config list, checked by the plugin's own
// config parser so that the node never gets an entry the plugin would refuse.
func renderEntry(opts Options) (json.RawMessage, error) {
	e := struct {
		Type        string `json:"type"`
		Kubeconfig  string `json:"kubeconfig"`
		AgentSocket string `json:"agentSocket,omitempty"`
		Timeout     string `json:"timeout,omitempty"`
		LogLevel    string `json:"logLevel,omitempty"`
	}{
		Type:        opts.PluginName,
		Kubeconfig:  filepath.Join(opts.HostConfDir, opts.KubeconfigName),
		AgentSocket: opts.Plugin.AgentSocket,
		LogLevel:    opts.Plugin.LogLevel,
	}
	if opts.Plugin.Timeout < 0 {
		return nil, fmt.Errorf("install: Plugin.Timeout %v is negative", opts.Plugin.Timeout)
	}
	if opts.Plugin.Timeout > 0 {
		e.Timeout = opts.Plugin.Timeout.String()
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return nil, fmt.Errorf("install: rendering the plugin's entry: %w", err)
	}
	// As the runtime passes it: the list's cniVersion and name injected.
	var m map[string]any
	_ = json.Unmarshal(b.Bytes(), &m)
	m["cniVersion"], m["name"] = "1.0.0", "check"
	asRun, _ := json.Marshal(m)
	if _, err := plugin.ParseConfig(asRun); err != nil {
		return nil, fmt.Errorf("install: the options make an entry the plugin refuses: %w", err)
	}
	return bytes.TrimSpace(b.Bytes()), nil
}

// Entry returns the plugin's entry as Install writes it into the config list.
func (i *Installer) Entry() json.RawMessage { return bytes.Clone(i.entry) }

// Install does one pass: it copies the binary, writes the kubeconfig, and chains the plugin
// into the primary config, in that order (the runtime must not find the entry before the
// binary and kubeconfig it needs), each only if it differs from what is on disk. It returns
// ErrNoPrimaryConfig (wrapped) if there is no primary config yet, and ErrInvalidConfig if
// the primary config cannot be chained into.
func (i *Installer) Install(ctx context.Context) error {
	_, err := i.install(ctx)
	return err
}

// install is Install; rewrote says whether it wrote the config list.
func (i *Installer) install(ctx context.Context) (rewrote bool, err error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, dir := range []string{i.opts.BinDir, i.opts.ConfDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	if err := i.installBinary(); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := i.installKubeconfig(); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return i.installConflist()
}

func (i *Installer) installBinary() error {
	want, err := i.digest(i.opts.PluginBinary)
	if err != nil {
		return fmt.Errorf("reading plugin binary: %w", err)
	}
	have, err := i.digest(i.binPath)
	if err == nil && have.sum == want.sum && have.stamp.mode.Perm() == 0o755 {
		return nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading installed plugin binary: %w", err)
	}
	src, err := os.Open(i.opts.PluginBinary)
	if err != nil {
		return fmt.Errorf("reading plugin binary: %w", err)
	}
	defer src.Close()
	if err := writeAtomic(i.binPath, src, 0o755); err != nil {
		return fmt.Errorf("installing plugin binary: %w", err)
	}
	i.log.Info("installed CNI plugin binary", "path", i.binPath)
	return nil
}

// digest returns the SHA-256 of path, from the cache if stat says the file is unchanged.
func (i *Installer) digest(path string) (digest, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return digest{}, err
	}
	st := stampOf(fi)
	if d, ok := i.sums[path]; ok && d.stamp == st {
		return d, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return digest{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return digest{}, err
	}
	d := digest{stamp: st}
	h.Sum(d.sum[:0])
	i.sums[path] = d
	return d, nil
}

func (i *Installer) installKubeconfig() error {
	have, err := os.ReadFile(i.kubeconfigPath)
	if err == nil && bytes.Equal(have, i.kubeconfig) {
		if fi, err := os.Stat(i.kubeconfigPath); err == nil && fi.Mode().Perm() == 0o600 {
			return nil
		}
	}
	if err := writeAtomic(i.kubeconfigPath, bytes.NewReader(i.kubeconfig), 0o600); err != nil {
		return fmt.Errorf("writing the plugin's kubeconfig: %w", err)
	}
	i.log.Info("wrote the CNI plugin's kubeconfig", "path", i.kubeconfigPath)
	return nil
}

// installConflist chains the plugin into the primary config if it is not chained as it must be.
// A primary .conf replaces a .conflist of the same base name, which is what an earlier pass
// made of the same primary CNI's previous .conf.
func (i *Installer) installConflist() (bool, error) {
	name, err := primary(i.opts.ConfDir)
	if err != nil {
		return false, err
	}
	path := filepath.Join(i.opts.ConfDir, name)
	data, mode, err := readConfig(path)
	if err != nil {
		return false, err
	}
	outPath, out, changed, err := chain(path, data, i.opts.PluginName, i.entry)
	if err != nil || !changed {
		return false, err
	}
	if err := writeAtomic(outPath, bytes.NewReader(out), mode); err != nil {
		return false, fmt.Errorf("chaining the plugin into %s: %w", outPath, err)
	}
	if outPath != path {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return true, fmt.Errorf("removing %s after converting it to %s: %w", path, outPath, err)
		}
		i.log.Info("converted the primary CNI config to a list and chained the CNI plugin", "from", path, "to", outPath)
		return true, nil
	}
	i.log.Info("chained the CNI plugin into the primary CNI config", "path", outPath)
	return true, nil
}

// primary returns the name of the config file the runtime loads: the first .conf or
// .conflist in dir in lexical order.
func primary(dir string) (string, error) {
	entries, err := os.ReadDir(dir) // sorted by name
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading CNI config directory: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() && isConfigFile(e.Name()) {
			return e.Name(), nil
		}
	}
	return "", fmt.Errorf("%w in %s (hint: the primary CNI writes its .conf or .conflist there once it runs on the node)", ErrNoPrimaryConfig, dir)
}

// readConfig reads a config file and its permissions.
func readConfig(path string) ([]byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("reading primary CNI config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("reading primary CNI config: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, 0, fmt.Errorf("reading primary CNI config %s: %w", path, err)
	}
	return data, fi.Mode().Perm(), nil
}

// writeAtomic writes r to path through a temporary file in the same directory, renamed over
// path once synced, so that readers see the old contents or the new, never a part. The
// temporary name ends in .tmp, which runtimes do not load.
func writeAtomic(path string, r io.Reader, mode fs.FileMode) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".ambient-lite-*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil { // make the rename durable; best effort
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Uninstall takes the plugin's entry out of every config list in ConfDir that has one, then
// removes the kubeconfig and the binary. It is idempotent, and goes on after an error so that
// as much as possible is removed; the errors are joined. A .conf that Install converted stays a
// .conflist, now with the primary plugin alone, which the runtime reads the same way.
func (i *Installer) Uninstall() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	var errs []error
	entries, err := os.ReadDir(i.opts.ConfDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("reading CNI config directory: %w", err))
	}
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != extConflist {
			continue
		}
		path := filepath.Join(i.opts.ConfDir, e.Name())
		data, mode, err := readConfig(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out, changed, err := unchain(path, data, i.opts.PluginName)
		if err != nil {
			// Not ours to repair; it matters only if it might hold our entry.
			if bytes.Contains(data, []byte(`"`+i.opts.PluginName+`"`)) {
				errs = append(errs, err)
			}
			continue
		}
		if !changed {
			continue
		}
		if err := writeAtomic(path, bytes.NewReader(out), mode); err != nil {
			errs = append(errs, fmt.Errorf("removing the plugin from %s: %w", path, err))
			continue
		}
		i.log.Info("removed the CNI plugin from a CNI config", "path", path)
	}
	for _, f := range []struct{ what, path string }{{"kubeconfig", i.kubeconfigPath}, {"binary", i.binPath}} {
		err := os.Remove(f.path)
		switch {
		case err == nil:
			i.log.Info("removed the CNI plugin's "+f.what, "path", f.path)
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("removing the plugin's %s: %w", f.what, err))
		}
	}
	clear(i.sums)
	return errors.Join(errs...)
}

// Check reports whether the plugin is installed as Install leaves it: chained last, with the
// current settings, into the primary config, with its binary and kubeconfig in place. It
// writes nothing and is cheap enough for a readiness probe. The error wraps ErrNotInstalled,
// ErrNoPrimaryConfig or ErrInvalidConfig and says what is missing.
func (i *Installer) Check() error {
	for _, f := range []struct{ what, path string }{{"binary", i.binPath}, {"kubeconfig", i.kubeconfigPath}} {
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%w: plugin %s: %v", ErrNotInstalled, f.what, err)
		}
	}
	name, err := primary(i.opts.ConfDir)
	if err != nil {
		return err
	}
	path := filepath.Join(i.opts.ConfDir, name)
	data, _, err := readConfig(path)
	if err != nil {
		return err
	}
	_, _, changed, err := chain(path, data, i.opts.PluginName, i.entry)
	switch {
	case err != nil:
		return err
	case changed && filepath.Ext(name) == extConf:
		return fmt.Errorf("%w: the primary CNI config %s is a single-plugin .conf (Install converts it to a .conflist)", ErrNotInstalled, path)
	case changed:
		return fmt.Errorf("%w: the primary CNI config %s does not end with the plugin's current entry", ErrNotInstalled, path)
	}
	return nil
}
