package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// node is a node's CNI directories under a test's temporary directory.
type node struct {
	dir  string
	opts Options
}

func newNode(t *testing.T) *node {
	dir := t.TempDir()
	opts := testOptions(t, dir)
	opts.HostConfDir = "" // the test sees the node's paths
	for _, d := range []string{opts.ConfDir, opts.BinDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &node{dir: dir, opts: opts}
}

func (n *node) installer(t *testing.T) *Installer {
	t.Helper()
	in, err := New(n.opts)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func (n *node) conf(name string) string { return filepath.Join(n.opts.ConfDir, name) }

// copyTestdata writes testdata/src into ConfDir as name.
func (n *node) copyTestdata(t *testing.T, src, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", src))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.conf(name), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

type fileID struct {
	ino   uint64
	mtime int64
}

func idOf(t *testing.T, path string) fileID {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileID{ino: fi.Sys().(*syscall.Stat_t).Ino, mtime: fi.ModTime().UnixNano()}
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// pluginTypes returns the types of the plugins in a conflist file.
func pluginTypes(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var l struct{ Plugins []struct{ Type string } }
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var types []string
	for _, p := range l.Plugins {
		types = append(types, p.Type)
	}
	return types
}

// plugins returns the plugins of a conflist file as JSON values.
func pluginValues(t *testing.T, data []byte) []any {
	t.Helper()
	var l struct{ Plugins []any }
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatal(err)
	}
	return l.Plugins
}

func TestInstall(t *testing.T) {
	n := newNode(t)
	n.copyTestdata(t, "bridge-in.conflist", "10-bridge.conflist")
	if err := os.Chmod(n.conf("10-bridge.conflist"), 0o640); err != nil {
		t.Fatal(err)
	}
	in := n.installer(t)
	if err := in.Check(); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Check before Install = %v, want ErrNotInstalled", err)
	}
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := in.Check(); err != nil {
		t.Fatalf("Check after Install: %v", err)
	}

	bin := filepath.Join(n.opts.BinDir, DefaultPluginName)
	got, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(n.opts.PluginBinary)
	if !bytes.Equal(got, want) {
		t.Errorf("installed binary differs from %s", n.opts.PluginBinary)
	}
	if m := mode(t, bin); m != 0o755 {
		t.Errorf("binary mode = %v, want 0755", m)
	}
	kc := n.conf(DefaultKubeconfigName)
	if m := mode(t, kc); m != 0o600 {
		t.Errorf("kubeconfig mode = %v, want 0600", m)
	}
	if m := mode(t, n.conf("10-bridge.conflist")); m != 0o640 {
		t.Errorf("conflist mode = %v, want the primary CNI's 0640 kept", m)
	}
	if got, want := pluginTypes(t, n.conf("10-bridge.conflist")), []string{"bridge", "portmap", DefaultPluginName}; !reflect.DeepEqual(got, want) {
		t.Errorf("plugins = %v, want %v", got, want)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(n.opts.ConfDir, ".*.tmp")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// A second pass, by this installer or a new one (an agent restart), rewrites nothing.
	paths := []string{bin, kc, n.conf("10-bridge.conflist")}
	before := map[string]fileID{}
	for _, p := range paths {
		before[p] = idOf(t, p)
	}
	for _, inst := range []*Installer{in, n.installer(t)} {
		if err := inst.Install(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range paths {
		if after := idOf(t, p); after != before[p] {
			t.Errorf("%s was rewritten by a pass with nothing to do", filepath.Base(p))
		}
	}
}

func TestInstallAlreadyChainedUntouched(t *testing.T) {
	n := newNode(t)
	n.opts.HostConfDir = "/etc/cni/net.d" // as chained-in.conflist names the kubeconfig
	n.copyTestdata(t, "chained-in.conflist", "10-ptp.conflist")
	before := idOf(t, n.conf("10-ptp.conflist"))
	in := n.installer(t)
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if after := idOf(t, n.conf("10-ptp.conflist")); after != before {
		t.Error("an already chained conflist was rewritten")
	}
	if err := in.Check(); err != nil {
		t.Error(err)
	}
}

func TestInstallConvertsConf(t *testing.T) {
	n := newNode(t)
	orig := n.copyTestdata(t, "flannel-in.conf", "10-flannel.conf")
	in := n.installer(t)
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.conf("10-flannel.conf")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("10-flannel.conf still there after conversion (err %v)", err)
	}
	if got, want := pluginTypes(t, n.conf("10-flannel.conflist")), []string{"flannel", DefaultPluginName}; !reflect.DeepEqual(got, want) {
		t.Errorf("plugins = %v, want %v", got, want)
	}
	if err := in.Check(); err != nil {
		t.Error(err)
	}

	// The primary CNI writes its .conf again: it is converted again.
	n.copyTestdata(t, "flannel-in.conf", "10-flannel.conf")
	if err := in.Check(); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Check with a fresh .conf = %v, want ErrNotInstalled", err)
	}
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.conf("10-flannel.conf")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("10-flannel.conf not converted the second time")
	}

	// Uninstall leaves the .conf's plugin alone in the list.
	if err := in.Uninstall(); err != nil {
		t.Fatal(err)
	}
	var conf any
	_ = json.Unmarshal(orig, &conf)
	data, _ := os.ReadFile(n.conf("10-flannel.conflist"))
	if got := pluginValues(t, data); !reflect.DeepEqual(got, []any{conf}) {
		t.Errorf("after Uninstall plugins = %v, want the .conf's plugin alone", got)
	}
}

func TestInstallErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string // in ConfDir
		want  error
		msg   string // the error contains it
	}{
		{name: "no primary config", files: map[string]string{"README": "x", "99-other.json.bak": "{}"}, want: ErrNoPrimaryConfig, msg: "net.d"},
		{name: "malformed", files: map[string]string{"10-a.conflist": `{"cniVersion": "1.0.0",`}, want: ErrInvalidConfig, msg: "10-a.conflist: unexpected end of input"},
		{name: "malformed first wins", files: map[string]string{"05-a.conf": `{`, "10-b.conflist": `{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}`}, want: ErrInvalidConfig, msg: "05-a.conf"},
		{name: "no plugins", files: map[string]string{"10-a.conflist": `{"cniVersion":"1.0.0","name":"a"}`}, want: ErrInvalidConfig, msg: `10-a.conflist: no "plugins" list`},
		{name: "unsupported version", files: map[string]string{"10-a.conflist": `{"cniVersion":"0.2.0","name":"a","plugins":[{"type":"bridge"}]}`}, want: ErrInvalidConfig, msg: `cniVersion "0.2.0" is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			for name, data := range tt.files {
				if err := os.WriteFile(n.conf(name), []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			in := n.installer(t)
			err := in.Install(context.Background())
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Install = %v, want %v mentioning %q", err, tt.want, tt.msg)
			}
			if err := in.Check(); !errors.Is(err, tt.want) {
				t.Errorf("Check = %v, want %v", err, tt.want)
			}
			// The binary and kubeconfig are in place all the same, ready for when the
			// primary config is.
			for _, p := range []string{filepath.Join(n.opts.BinDir, DefaultPluginName), n.conf(DefaultKubeconfigName)} {
				if _, err := os.Stat(p); err != nil {
					t.Error(err)
				}
			}
			for name, data := range tt.files {
				if got, _ := os.ReadFile(n.conf(name)); string(got) != data {
					t.Errorf("%s was modified", name)
				}
			}
		})
	}
}

func TestInstallUpdatesBinary(t *testing.T) {
	n := newNode(t)
	n.copyTestdata(t, "bridge-in.conflist", "10-bridge.conflist")
	in := n.installer(t)
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(n.opts.BinDir, DefaultPluginName)
	for _, tc := range []struct {
		name   string
		change func()
	}{
		{"new plugin version", func() { os.WriteFile(n.opts.PluginBinary, []byte("#!/bin/sh\necho plugin v2\n"), 0o755) }},
		{"binary corrupted in place", func() { os.WriteFile(bin, []byte("garbage"), 0o755) }},
		{"execute bit lost", func() { os.Chmod(bin, 0o644) }},
		{"binary deleted", func() { os.Remove(bin) }},
	} {
		tc.change()
		if err := in.Install(context.Background()); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, _ := os.ReadFile(bin)
		want, _ := os.ReadFile(n.opts.PluginBinary)
		if !bytes.Equal(got, want) || mode(t, bin) != 0o755 {
			t.Errorf("%s: the installed binary was not repaired", tc.name)
		}
	}
}

func TestUninstall(t *testing.T) {
	n := newNode(t)
	orig := n.copyTestdata(t, "bridge-in.conflist", "10-bridge.conflist")
	other := n.copyTestdata(t, "unknown-fields-in.conflist", "20-calico.conflist")
	in := n.installer(t)
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A lexically earlier config appears and is chained too: both hold the plugin.
	n.copyTestdata(t, "chained-in.conflist", "05-ptp.conflist") // an entry with other settings
	if err := in.Install(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := in.Uninstall(); err != nil {
			t.Fatalf("Uninstall #%d: %v", i+1, err)
		}
	}
	got, _ := os.ReadFile(n.conf("10-bridge.conflist"))
	if !reflect.DeepEqual(pluginValues(t, got), pluginValues(t, orig)) {
		t.Errorf("after Uninstall 10-bridge.conflist =\n%s\nwant the original plugins\n%s", got, orig)
	}
	if got, _ := os.ReadFile(n.conf("20-calico.conflist")); !bytes.Equal(got, other) {
		t.Error("20-calico.conflist, never the primary, was modified")
	}
	if got := pluginTypes(t, n.conf("05-ptp.conflist")); !reflect.DeepEqual(got, []string{"ptp"}) {
		t.Errorf("05-ptp.conflist plugins = %v, want [ptp]", got)
	}
	for _, p := range []string{filepath.Join(n.opts.BinDir, DefaultPluginName), n.conf(DefaultKubeconfigName)} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still there after Uninstall", p)
		}
	}
	if err := in.Check(); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Check after Uninstall = %v, want ErrNotInstalled", err)
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Options)
		msg    string
	}{
		{"no conf dir", func(o *Options) { o.ConfDir = "" }, "ConfDir is required"},
		{"no bin dir", func(o *Options) { o.BinDir = "" }, "BinDir is required"},
		{"missing binary", func(o *Options) { o.PluginBinary += ".missing" }, "plugin binary"},
		{"plugin name with slash", func(o *Options) { o.PluginName = "a/b" }, "PluginName"},
		{"kubeconfig loaded as network", func(o *Options) { o.KubeconfigName = "zz.conf" }, "would load it as a network config"},
		{"http server", func(o *Options) { o.Kubeconfig.Server = "http://10.0.0.1" }, "want an https:// URL"},
		{"no server", func(o *Options) { o.Kubeconfig.Server = "" }, "Server is required"},
		{"bad CA", func(o *Options) { o.Kubeconfig.CAData = []byte("not pem") }, "no PEM certificate"},
		{"relative token file", func(o *Options) { o.Kubeconfig.TokenFile = "token" }, "not an absolute path"},
		{"relative host conf dir", func(o *Options) { o.HostConfDir = "net.d" }, `"kubeconfig"`},
		{"bad log level", func(o *Options) { o.Plugin.LogLevel = "loud" }, `"logLevel"`},
		{"relative agent socket", func(o *Options) { o.Plugin.AgentSocket = "plugin.sock" }, `"agentSocket"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions(t, t.TempDir())
			tt.modify(&opts)
			_, err := New(opts)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("New = %v, want an error mentioning %q", err, tt.msg)
			}
		})
	}
}
