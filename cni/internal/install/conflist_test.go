package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// testOptions are the options the goldens are rendered with; the binary is a file in dir.
func testOptions(t *testing.T, dir string) Options {
	t.Helper()
	bin := filepath.Join(dir, "src", "ambient-lite-cni")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		if err := os.WriteFile(bin, []byte("#!/bin/sh\necho plugin v1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return Options{
		Log:          slog.New(slog.NewTextHandler(t.Output(), nil)),
		ConfDir:      filepath.Join(dir, "net.d"),
		HostConfDir:  "/etc/cni/net.d",
		BinDir:       filepath.Join(dir, "bin"),
		PluginBinary: bin,
		Plugin: PluginConfig{
			AgentSocket: "/var/run/ambient-lite/cni/plugin.sock",
			Timeout:     20 * time.Second,
			LogLevel:    "debug",
		},
		Kubeconfig: KubeconfigSource{
			Server:    "https://10.96.0.1:443",
			TokenFile: "/var/run/ambient-lite/cni/token",
		},
	}
}

// TestChainGolden chains the plugin into testdata/<case>-in.conf[list] and compares the file
// written (its name, then its contents), or the error, with testdata/<case>.golden.
func TestChainGolden(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		unchanged bool  // the input is already as it must be
		err       error // the error wraps this
	}{
		{name: "bridge", in: "bridge-in.conflist"},
		{name: "flannel", in: "flannel-in.conf"},
		{name: "chained", in: "chained-in.conflist", unchanged: true},
		{name: "stale-entry", in: "stale-entry-in.conflist"},
		{name: "ours-not-last", in: "ours-not-last-in.conflist"},
		{name: "unknown-fields", in: "unknown-fields-in.conflist"},
		{name: "malformed", in: "malformed-in.conflist", err: ErrInvalidConfig},
		{name: "no-plugins", in: "no-plugins-in.conflist", err: ErrInvalidConfig},
		{name: "old-version", in: "old-version-in.conflist", err: ErrInvalidConfig},
		{name: "no-version", in: "no-version-in.conflist", err: ErrInvalidConfig},
		{name: "old-version-conf", in: "old-version-in.conf", err: ErrInvalidConfig},
		{name: "list-in-conf", in: "list-in-conf-in.conf", err: ErrInvalidConfig},
		{name: "plugin-without-type", in: "plugin-without-type-in.conflist", err: ErrInvalidConfig},
		{name: "plugins-not-list", in: "plugins-not-list-in.conflist", err: ErrInvalidConfig},
		{name: "empty-plugins", in: "empty-plugins-in.conflist", err: ErrInvalidConfig},
		{name: "not-object", in: "not-object-in.conflist", err: ErrInvalidConfig},
		{name: "duplicate-key", in: "duplicate-key-in.conflist", err: ErrInvalidConfig},
	}
	in, err := New(testOptions(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.in))
			if err != nil {
				t.Fatal(err)
			}
			outName, out, changed, err := chain(tt.in, data, DefaultPluginName, in.entry)
			var got []byte
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("chain: err = %v, want %v", err, tt.err)
				}
				if !strings.Contains(err.Error(), tt.in) {
					t.Errorf("error %q does not name the file", err)
				}
				got = []byte("error: " + err.Error() + "\n")
			} else {
				if err != nil {
					t.Fatalf("chain: %v", err)
				}
				if changed == tt.unchanged {
					t.Errorf("changed = %v, want %v", changed, !tt.unchanged)
				}
				got = append([]byte("# "+outName+"\n"), out...)
				checkChained(t, outName, out, in.entry)
				checkRoundTrip(t, tt.in, data, outName, out)
			}
			testenv.Golden(t, filepath.Join("testdata", tt.name+".golden"), got, *update)
		})
	}
}

// checkChained checks that libcni loads out as a list ending with entry, once.
func checkChained(t *testing.T, name string, out []byte, entry json.RawMessage) {
	t.Helper()
	list, err := libcni.ConfListFromBytes(out)
	if err != nil {
		t.Fatalf("libcni cannot load %s: %v", name, err)
	}
	last := list.Plugins[len(list.Plugins)-1]
	if !sameJSON(last.Bytes, entry) {
		t.Errorf("last plugin = %s, want %s", last.Bytes, entry)
	}
	for _, p := range list.Plugins[:len(list.Plugins)-1] {
		if p.Network.Type == DefaultPluginName {
			t.Errorf("%s holds the plugin more than once", name)
		}
	}
	// Chaining again changes nothing.
	if _, _, changed, err := chain(name, out, DefaultPluginName, entry); err != nil || changed {
		t.Errorf("chaining %s again: changed=%v err=%v, want no change", name, changed, err)
	}
}

// checkRoundTrip checks that unchaining out gives back the input's other plugins, and every
// other field of the input, as the same JSON values.
func checkRoundTrip(t *testing.T, inName string, in []byte, outName string, out []byte) {
	t.Helper()
	back, _, err := unchain(outName, out, DefaultPluginName)
	if err != nil {
		t.Fatalf("unchain: %v", err)
	}
	var want, got map[string]any
	if err := json.Unmarshal(back, &got); err != nil {
		t.Fatal(err)
	}
	if filepath.Ext(inName) == extConf {
		var conf map[string]any
		if err := json.Unmarshal(in, &conf); err != nil {
			t.Fatal(err)
		}
		// As libcni reads a .conf: a list with the .conf's name and version.
		want = map[string]any{"name": conf["name"], "cniVersion": conf["cniVersion"], "plugins": []any{conf}}
	} else {
		if err := json.Unmarshal(in, &want); err != nil {
			t.Fatal(err)
		}
		var kept []any
		for _, p := range want["plugins"].([]any) {
			if p.(map[string]any)["type"] != DefaultPluginName {
				kept = append(kept, p)
			}
		}
		want["plugins"] = kept
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("unchained:\n%s\nwant the input without the plugin:\n%s", back, in)
	}
}

// TestUnknownFieldsKept checks the exact spelling of what the primary CNI wrote survives:
// numbers beyond float64, escapes, key order.
func TestUnknownFieldsKept(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "unknown-fields-in.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	_, out, _, err := chain("x.conflist", data, DefaultPluginName, json.RawMessage(`{"type":"ambient-lite-cni","kubeconfig":"/k"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`12345678901234567890`, `1.50`, `"a<b>&c"`, `"\u00e9\u2028"`, `1e3`, `-0`} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("output lost %s:\n%s", want, out)
		}
	}
	keys := []string{`"name"`, `"cniVersion"`, `"x-vendor-annotation"`, `"disableCheck"`, `"plugins"`, `"trailing-unknown"`}
	last := -1
	for _, k := range keys {
		i := bytes.Index(out, []byte(k))
		if i < last {
			t.Errorf("key %s moved: the order must stay as written", k)
		}
		last = i
	}
}

func TestUnchainLeavesOthersAlone(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{name: "conf", in: `{"cniVersion":"1.0.0","name":"n","type":"ambient-lite-cni"}`},
		{name: "no entry", in: `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := "a.conflist"
			if tt.name == "conf" {
				file = "a.conf"
			}
			out, changed, err := unchain(file, []byte(tt.in), DefaultPluginName)
			if err != nil || changed || string(out) != tt.in {
				t.Errorf("unchain = %s, %v, %v; want the input unchanged", out, changed, err)
			}
		})
	}
}

func FuzzChain(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*-in.conf*"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(filepath.Ext(file) == extConf, data)
	}
	entry := json.RawMessage(`{"type":"ambient-lite-cni","kubeconfig":"/k"}`)
	f.Fuzz(func(t *testing.T, conf bool, data []byte) {
		name := "x.conflist"
		if conf {
			name = "x.conf"
		}
		outName, out, changed, err := chain(name, data, DefaultPluginName, entry)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error does not wrap ErrInvalidConfig: %v", err)
			}
			return
		}
		if !changed {
			return
		}
		if _, _, again, err := chain(outName, out, DefaultPluginName, entry); err != nil || again {
			t.Fatalf("chaining the output again: changed=%v err=%v\n%s", again, err, out)
		}
		if _, _, err := unchain(outName, out, DefaultPluginName); err != nil {
			t.Fatalf("unchaining the output: %v", err)
		}
	})
}
