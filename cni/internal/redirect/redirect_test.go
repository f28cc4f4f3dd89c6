package redirect

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/capture"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func TestConfigValidate(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{PodIPs: []netip.Addr{a("10.0.0.2"), a("fd00::2")}, ProbeSources: []netip.Addr{a("10.0.0.1")}}, ""},
		{"mapped v4 is v4", Config{PodIPs: []netip.Addr{a("::ffff:10.0.0.2")}}, ""},
		{"no pod IP", Config{ProbeSources: []netip.Addr{a("10.0.0.1")}}, "no pod IP"},
		{"v6 only", Config{PodIPs: []netip.Addr{a("fd00::2")}}, "no IPv4 pod IP"},
		{"zero", Config{PodIPs: []netip.Addr{{}}}, "invalid (zero) pod IP"},
		{"loopback", Config{PodIPs: []netip.Addr{a("127.0.0.1")}}, "loopback"},
		{"unspecified probe", Config{PodIPs: []netip.Addr{a("10.0.0.2")}, ProbeSources: []netip.Addr{a("0.0.0.0")}}, "probe source 0.0.0.0"},
		{"probe is pod", Config{PodIPs: []netip.Addr{a("10.0.0.2")}, ProbeSources: []netip.Addr{a("10.0.0.2")}}, "already given as a pod IP"},
		{"too many", Config{PodIPs: make([]netip.Addr, MaxAddrs+1)}, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSpec(t *testing.T) {
	spec, err := loadRedirect()
	if err != nil {
		t.Fatal(err)
	}
	if m := spec.Maps[capture.SocketMapName]; m == nil || m.Type != ebpf.SockMap || m.MaxEntries != 2 ||
		capture.SlotOutbound >= m.MaxEntries || capture.SlotInbound >= m.MaxEntries {
		t.Fatalf("socket map %s does not match pkg/capture's slots: %+v", capture.SocketMapName, m)
	}
	if m := spec.Maps["ambient_config"]; m == nil || m.MaxEntries != MaxAddrs {
		t.Fatalf("address map holds %v entries, want MaxAddrs=%d", m, MaxAddrs)
	}
}

func testConfig() Config {
	return Config{PodIPs: []netip.Addr{netip.MustParseAddr(podIP)}, ProbeSources: []netip.Addr{netip.MustParseAddr(nodeIP)}}
}

// ztunnel is a fake ztunnel's in-pod side: its two listeners, registered in the pod's
// socket map.
type ztunnel struct {
	outbound, inbound *net.TCPListener
}

func startZtunnel(t *testing.T, tp *topo) *ztunnel {
	t.Helper()
	z := &ztunnel{
		outbound: listen(t, tp.pod, "0.0.0.0:15001", capture.ListenConfig()),
		inbound:  listen(t, tp.pod, "0.0.0.0:15006", capture.ListenConfig()),
	}
	f, err := os.Open(nsPath(tp.pod))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := capture.Register(f, z.outbound, z.inbound); err != nil {
		t.Fatalf("Register: %v", err)
	}
	return z
}

const (
	short = 1500 * time.Millisecond // long enough for a local handshake, short enough to wait for a drop
	wait  = 3 * time.Second
)

// TestRedirect proves, with real sockets in a pod/node/server topology, what is captured,
// what is not, that captured traffic fails closed, and that Remove restores plain routing.
func TestRedirect(t *testing.T) {
	tp := newTopo(t)
	pins := bpffs(t)
	pinDir := filepath.Join(pins, "ambient-lite", "pod-uid-1")

	server := listen(t, tp.server, serverIP+":80", nil)
	serve(server, "server")
	app := listen(t, tp.pod, "0.0.0.0:8080", nil)
	hbone := listen(t, tp.pod, "0.0.0.0:15008", capture.ListenConfig()) // ztunnel's, so marked
	local := listen(t, tp.pod, "127.0.0.1:9090", nil)

	if err := Install(nsPath(tp.pod), pinDir, testConfig()); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if err := Check(nsPath(tp.pod), pinDir); err != nil {
		t.Fatalf("Check after Install: %v", err)
	}
	z := startZtunnel(t, tp)

	t.Run("outbound lands on 15001 with the original destination", func(t *testing.T) {
		c, err := dial(tp.pod, serverIP+":80", wait, nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		got, ok := acceptOne(z.outbound, wait)
		if !ok {
			t.Fatal("the outbound listener got no connection")
		}
		defer got.conn.Close()
		if got.local != serverIP+":80" {
			t.Errorf("LocalAddr = %s, want the original destination %s:80", got.local, serverIP)
		}
		if host, _, _ := net.SplitHostPort(got.remote); host != podIP {
			t.Errorf("RemoteAddr = %s, want the pod IP %s", got.remote, podIP)
		}
		// ztunnel dials the real destination with its mark, from the pod netns.
		up, err := dial(tp.pod, got.local, wait, capture.DialControl)
		if err != nil {
			t.Fatalf("marked dial to %s: %v", got.local, err)
		}
		defer up.Close()
		if s := readAll(up); s != "server" {
			t.Fatalf("upstream said %q, want %q", s, "server")
		}
		got.conn.Write([]byte("proxied"))
		got.conn.Close()
		if s := readAll(c); s != "proxied" {
			t.Fatalf("the app read %q through ztunnel, want %q", s, "proxied")
		}
	})

	t.Run("inbound lands on 15006 with the original destination", func(t *testing.T) {
		c, err := dial(tp.server, podIP+":8080", wait, nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		got, ok := acceptOne(z.inbound, wait)
		if !ok {
			t.Fatal("the inbound listener got no connection")
		}
		if got.local != podIP+":8080" {
			t.Errorf("LocalAddr = %s, want %s:8080", got.local, podIP)
		}
		got.conn.Write([]byte("inbound"))
		got.conn.Close()
		if s := readAll(c); s != "inbound" {
			t.Fatalf("the client read %q, want %q", s, "inbound")
		}
	})

	notSteered := []struct {
		name, ns, addr string
		ln             *net.TCPListener
	}{
		{"HBONE port 15008", tp.server, podIP + ":15008", hbone},
		{"loopback", tp.pod, "127.0.0.1:9090", local},
		{"own pod IP", tp.pod, podIP + ":8080", app},
	}
	for _, tt := range notSteered {
		t.Run(tt.name+" is not steered", func(t *testing.T) {
			c, err := dial(tt.ns, tt.addr, wait, nil)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			got, ok := acceptOne(tt.ln, wait)
			if !ok {
				t.Fatalf("%s did not reach its own listener", tt.addr)
			}
			got.conn.Close()
		})
	}

	t.Run("probe source bypasses capture and the app answers", func(t *testing.T) {
		done := make(chan string, 1)
		go func() {
			got, ok := acceptOne(app, wait)
			if !ok {
				done <- "no connection"
				return
			}
			got.conn.Write([]byte("healthy"))
			got.conn.Close()
			done <- got.remote
		}()
		c, err := dial(tp.node, podIP+":8080", wait, nil)
		if err != nil {
			t.Fatalf("probe dial: %v", err)
		}
		defer c.Close()
		if s := readAll(c); s != "healthy" {
			t.Fatalf("the probe read %q, want %q", s, "healthy")
		}
		if r := <-done; !strings.HasPrefix(r, nodeIP+":") {
			t.Fatalf("the app saw %s, want the probe source %s", r, nodeIP)
		}
	})

	t.Run("Install twice replaces in place", func(t *testing.T) {
		cfg := testConfig()
		cfg.ProbeSources = append(cfg.ProbeSources, netip.MustParseAddr("10.78.1.1"))
		if err := Install(nsPath(tp.pod), pinDir, cfg); err != nil {
			t.Fatalf("second Install: %v", err)
		}
		if n := attached(t, tp.pod); n != 1 {
			t.Fatalf("%d sk_lookup programs attached after two installs, want 1", n)
		}
		if rules := run(t, "ip", "-n", tp.pod, "rule", "show"); strings.Count(rules, "lookup 100") != 1 ||
			strings.Count(rules, "lookup main") != 4 {
			t.Fatalf("rules after two installs:\n%s", rules)
		}
		// The socket map was kept: ztunnel's registration survived the replacement.
		c, err := dial(tp.server, podIP+":8080", wait, nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		got, ok := acceptOne(z.inbound, wait)
		if !ok {
			t.Fatal("the inbound listener lost its registration on reinstall")
		}
		got.conn.Close()
		if err := Check(nsPath(tp.pod), pinDir); err != nil {
			t.Fatalf("Check: %v", err)
		}
		if names, err := List(filepath.Dir(pinDir)); err != nil || len(names) != 1 || names[0] != "pod-uid-1" {
			t.Fatalf("List = %v, %v; want [pod-uid-1]", names, err)
		}
	})

	t.Run("empty slots fail closed", func(t *testing.T) {
		z.inbound.Close()
		z.outbound.Close()
		if c, err := dial(tp.server, podIP+":8080", short, nil); err == nil {
			c.Close()
			t.Fatal("inbound connection established with no ztunnel listening")
		}
		if got, ok := acceptOne(app, 100*time.Millisecond); ok {
			got.conn.Close()
			t.Fatal("captured inbound traffic reached the app unproxied")
		}
		if c, err := dial(tp.pod, serverIP+":80", short, nil); err == nil {
			c.Close()
			t.Fatal("outbound connection established with no ztunnel listening")
		}
	})

	t.Run("Remove restores plain behaviour", func(t *testing.T) {
		if err := Remove(nsPath(tp.pod), pinDir); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if err := Remove(nsPath(tp.pod), pinDir); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
		if ok, err := Installed(pinDir); ok || err != nil {
			t.Fatalf("Installed after Remove = %v, %v", ok, err)
		}
		if err := Check(nsPath(tp.pod), pinDir); err == nil {
			t.Fatal("Check passed after Remove")
		}
		if n := attached(t, tp.pod); n != 0 {
			t.Fatalf("%d programs still attached", n)
		}
		if rules := run(t, "ip", "-n", tp.pod, "rule", "show"); strings.Contains(rules, "lookup 100") || strings.Contains(rules, nodeIP) || strings.Contains(rules, "0x539") {
			t.Fatalf("rules left behind:\n%s", rules)
		}
		c, err := dial(tp.server, podIP+":8080", wait, nil)
		if err != nil {
			t.Fatalf("inbound dial after Remove: %v", err)
		}
		c.Close()
		if got, ok := acceptOne(app, wait); !ok {
			t.Fatal("the app got nothing after Remove")
		} else {
			got.conn.Close()
		}
		c, err = dial(tp.pod, serverIP+":80", wait, nil)
		if err != nil {
			t.Fatalf("outbound dial after Remove: %v", err)
		}
		defer c.Close()
		if s := readAll(c); s != "server" {
			t.Fatalf("outbound after Remove read %q, want %q", s, "server")
		}
	})
}

// TestRemoveGoneNetns: Remove of a pod whose netns is gone just unpins.
func TestRemoveGoneNetns(t *testing.T) {
	requireRoot(t)
	pod := newNetns(t, "gone")
	run(t, "ip", "-n", pod, "addr", "add", podIP+"/32", "dev", "lo")
	pinDir := filepath.Join(bpffs(t), "pod")
	if err := Install(nsPath(pod), pinDir, testConfig()); err != nil {
		t.Fatalf("Install: %v", err)
	}
	run(t, "ip", "netns", "del", pod)
	if err := Remove(nsPath(pod), pinDir); err != nil {
		t.Fatalf("Remove after the netns is gone: %v", err)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin directory left behind: %v", err)
	}
	if err := Remove("", pinDir); err != nil {
		t.Fatalf("Remove of nothing: %v", err)
	}
}

func TestInstallErrors(t *testing.T) {
	requireRoot(t)
	pod := newNetns(t, "err")
	run(t, "ip", "-n", pod, "addr", "add", podIP+"/32", "dev", "lo")
	if err := Install(nsPath(pod), filepath.Join(bpffs(t), "p"), Config{}); err == nil || !strings.Contains(err.Error(), "no pod IP") {
		t.Fatalf("Install with no pod IP: %v", err)
	}
	if err := Install("/nonexistent/netns", filepath.Join(bpffs(t), "p"), testConfig()); err == nil || !strings.Contains(err.Error(), "/nonexistent/netns") {
		t.Fatalf("Install into a missing netns: %v", err)
	}
	// Not a bpffs: the pin fails, and the fresh install is undone.
	dir := filepath.Join(t.TempDir(), "p")
	if err := Install(nsPath(pod), dir, testConfig()); err == nil || !strings.Contains(err.Error(), "bpffs") {
		t.Fatalf("Install pinning outside bpffs: %v", err)
	}
	if n := attached(t, pod); n != 0 {
		t.Fatalf("%d programs attached after a failed install", n)
	}
}

// attached counts the sk_lookup programs attached to netns ns.
func attached(t testing.TB, ns string) int {
	t.Helper()
	f, err := os.Open(nsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachSkLookup})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Programs)
}

// TestInstallReusedPinDir: a pin directory reused for another netns moves the program there.
func TestInstallReusedPinDir(t *testing.T) {
	requireRoot(t)
	a, b := newNetns(t, "a"), newNetns(t, "b")
	for _, ns := range []string{a, b} {
		run(t, "ip", "-n", ns, "addr", "add", podIP+"/32", "dev", "lo")
	}
	pinDir := filepath.Join(bpffs(t), "pod")
	for _, ns := range []string{a, b} {
		if err := Install(nsPath(ns), pinDir, testConfig()); err != nil {
			t.Fatalf("Install into %s: %v", ns, err)
		}
	}
	if na, nb := attached(t, a), attached(t, b); na != 0 || nb != 1 {
		t.Fatalf("programs attached: %d to the first netns, %d to the second; want 0 and 1", na, nb)
	}
	if err := Check(nsPath(b), pinDir); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := Check(nsPath(a), pinDir); err == nil {
		t.Fatal("Check passed for the netns the program left")
	}
}
