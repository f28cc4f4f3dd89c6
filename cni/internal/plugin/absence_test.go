package plugin_test

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
)

// deadSocket leaves a socket file nobody listens on, as a node agent stopped for a restart
// does.
func deadSocket(t *testing.T) string {
	path := filepath.Join(shortDir(t), "plugin.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	return path
}

// TestAddAgentGone: after an uninstall that left the chain entry behind, the plugin must
// not fail every pod of the node: with the agent's socket gone, a kubeconfig that is gone
// or refused by the apiserver means there is no mesh left to put the pod in.
func TestAddAgentGone(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil)) // enrolled
	e.api.setPod(testPod("q", nil, nil))
	missing := filepath.Join(shortDir(t), "gone.sock")
	refused := writeFile(t, t.TempDir(), "kubeconfig", strings.Replace(readFile(t, e.kubeconfig), testToken, "deleted-sa", 1))
	tests := []struct {
		name, socket, kubeconfig string
		passes                   bool
		want                     string // in the error when it fails
	}{
		{"socket and kubeconfig gone", missing, filepath.Join(t.TempDir(), "removed-kubeconfig"), true, ""},
		{"socket gone, token refused (ServiceAccount deleted)", missing, refused, true, ""},
		{"socket there, token refused: restarting agent, not gone", deadSocket(t), refused, false, "401"},
	}
	for _, ver := range chainedVersions(t) {
		for _, tt := range tests {
			if !tt.passes && ver != "1.1.0" {
				continue // it waits for the agent until the timeout: once is enough
			}
			for _, name := range []string{"p", "q"} {
				t.Run(ver+"/"+tt.name+"/"+name, func(t *testing.T) {
					conf := e.conf(t, ver, func(m map[string]any) {
						m["agentSocket"], m["kubeconfig"], m["timeout"] = tt.socket, tt.kubeconfig, "600ms"
					})
					out, err := e.add(t, args(conf, "apps", name))
					switch {
					case tt.passes && err != nil:
						t.Fatalf("ADD failed: %v", err)
					case tt.passes:
						assertPassedThrough(t, conf, out)
					case err == nil || !strings.Contains(err.Error(), tt.want):
						t.Errorf("err = %v, want one mentioning %q", err, tt.want)
					}
				})
			}
		}
	}
}

// TestAddAgentRestarting: an enrolled pod created while the node agent restarts waits for
// the next agent instead of starting outside the mesh (or failing at once).
func TestAddAgentRestarting(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	socket := deadSocket(t)
	a := &fakeAgent{addResp: pluginapi.AddResponse{Redirected: true}, socket: socket}
	go func() {
		time.Sleep(700 * time.Millisecond)
		os.Remove(socket) // as the agent does before it listens
		l, err := net.Listen("unix", socket)
		if err != nil {
			t.Error(err)
			return
		}
		srv := &http.Server{Handler: pluginapi.Handler(a), ReadHeaderTimeout: 5 * time.Second}
		t.Cleanup(func() { _ = srv.Close() })
		_ = srv.Serve(l)
	}()
	conf := e.conf(t, "1.1.0", func(m map[string]any) { m["agentSocket"] = socket })
	out, err := e.add(t, args(conf, "apps", "p"))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	assertPassedThrough(t, conf, out)
	if adds, _, _ := a.calls(); len(adds) != 1 {
		t.Errorf("the restarted agent got %d adds, want 1", len(adds))
	}

	t.Run("not back before the timeout", func(t *testing.T) {
		conf := e.conf(t, "1.1.0", func(m map[string]any) { m["agentSocket"] = deadSocket(t); m["timeout"] = "500ms" })
		start := time.Now()
		_, err := e.add(t, args(conf, "apps", "p"))
		if err == nil || !strings.Contains(err.Error(), "node agent is unreachable") {
			t.Errorf("err = %v, want the agent unreachable", err)
		}
		if d := time.Since(start); d < 400*time.Millisecond {
			t.Errorf("failed after %v, before waiting for the agent", d)
		}
	})
}

// TestAddAgentStarting: 503 (the agent has not reconciled its node yet) is waited out.
func TestAddAgentStarting(t *testing.T) {
	e := newEnv(t)
	e.api.setPod(testPod("p", ambientLabel, nil))
	e.agent.mu.Lock()
	e.agent.addErr = pluginapi.ErrUnavailable
	e.agent.mu.Unlock()
	time.AfterFunc(600*time.Millisecond, func() {
		e.agent.mu.Lock()
		e.agent.addErr = nil
		e.agent.mu.Unlock()
	})
	if _, err := e.add(t, args(e.conf(t, "1.1.0", nil), "apps", "p")); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if adds, _, _ := e.agent.calls(); len(adds) < 2 {
		t.Errorf("agent got %d adds, want retries", len(adds))
	}
}
