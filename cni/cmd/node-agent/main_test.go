package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestLoggerKeysUnique: a sub-component's "component" does not repeat a key of the
// binary's logger.
func TestLoggerKeysUnique(t *testing.T) {
	var b bytes.Buffer
	newLogger(&b, slog.LevelInfo).With("component", "install").Info("hello")
	line := b.String()
	if n := strings.Count(line, `"component":`); n != 1 {
		t.Errorf("%d component keys in %s", n, line)
	}
	if !strings.Contains(line, `"binary":"node-agent"`) {
		t.Errorf("no binary key in %s", line)
	}
}

func TestConfigOwner(t *testing.T) {
	env := map[string]string{"NODE_NAME": "n1"}
	getenv := func(k string) string { return env[k] }
	inCluster := func(p string) ([]byte, error) {
		if p == serviceAccountNamespace {
			return []byte("istio-system\n"), nil
		}
		return nil, os.ErrNotExist
	}
	outside := func(string) ([]byte, error) { return nil, os.ErrNotExist }
	tests := []struct {
		name           string
		env            map[string]string
		read           func(string) ([]byte, error)
		wantNS, wantDS string
	}{
		{"in cluster: the pod's namespace, Istio's DaemonSet name", nil, inCluster, "istio-system", "istio-cni-node"},
		{"outside a cluster: no namespace (never uninstalls)", nil, outside, "", "istio-cni-node"},
		{"environment wins", map[string]string{"POD_NAMESPACE": "mesh", "DAEMONSET_NAME": "cni"}, inCluster, "mesh", "cni"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clear(env)
			env["NODE_NAME"] = "n1"
			for k, v := range tt.env {
				env[k] = v
			}
			c, err := parseConfig(nil, getenv, tt.read, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.Namespace != tt.wantNS || c.DaemonSet != tt.wantDS {
				t.Errorf("namespace %q, daemonset %q; want %q, %q", c.Namespace, c.DaemonSet, tt.wantNS, tt.wantDS)
			}
		})
	}
}
