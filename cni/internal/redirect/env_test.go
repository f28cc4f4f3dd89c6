package redirect

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"golang.org/x/sys/unix"
)

// The test topology: a pod netns whose eth0 (10.77.1.2) faces a node netns (10.77.1.1, the
// pod's gateway and probe source), which routes to a server netns (10.78.1.2).
const (
	podIP    = "10.77.1.2"
	nodeIP   = "10.77.1.1"
	serverIP = "10.78.1.2"
)

var nsSeq atomic.Int64

type topo struct {
	t                 testing.TB
	pod, node, server string // netns names under /var/run/netns
}

func nsPath(name string) string { return "/var/run/netns/" + name }

// newNetns creates a netns with loopback up, deleted when the test ends.
func newNetns(t testing.TB, name string) string {
	t.Helper()
	full := fmt.Sprintf("rdr%d-%d-%s", os.Getpid(), nsSeq.Add(1), name)
	run(t, "ip", "netns", "add", full)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", full).Run() })
	run(t, "ip", "-n", full, "link", "set", "lo", "up")
	return full
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin, testenv.CapBPF)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipOrFail(t, "iproute2 (ip) is not installed: run make setup")
	}
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	requireRoot(t)
	tp := &topo{t: t, pod: newNetns(t, "pod"), node: newNetns(t, "node"), server: newNetns(t, "srv")}
	veth := func(a, ifA, addrA, b, ifB, addrB string) {
		run(t, "ip", "link", "add", ifA, "netns", a, "type", "veth", "peer", "name", ifB, "netns", b)
		run(t, "ip", "-n", a, "addr", "add", addrA, "dev", ifA)
		run(t, "ip", "-n", b, "addr", "add", addrB, "dev", ifB)
		run(t, "ip", "-n", a, "link", "set", ifA, "up")
		run(t, "ip", "-n", b, "link", "set", ifB, "up")
	}
	veth(tp.pod, "eth0", podIP+"/24", tp.node, "vpod", nodeIP+"/24")
	veth(tp.server, "eth0", serverIP+"/24", tp.node, "vsrv", "10.78.1.1/24")
	run(t, "ip", "-n", tp.pod, "route", "add", "default", "via", nodeIP)
	run(t, "ip", "-n", tp.server, "route", "add", "default", "via", "10.78.1.1")
	run(t, "ip", "netns", "exec", tp.node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	return tp
}

// bpffs mounts a private bpffs for pins and unmounts it when the test ends.
func bpffs(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting bpffs: %v", err)
		}
	})
	return dir
}

// in runs f on an OS thread switched into the netns ns; the thread is discarded after.
func in(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		fd, err := unix.Open(nsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering netns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// listen opens a TCP listener in ns with lc (nil: plain TCP, no MPTCP).
func listen(t testing.TB, ns, addr string, lc *net.ListenConfig) *net.TCPListener {
	t.Helper()
	if lc == nil {
		lc = &net.ListenConfig{}
		lc.SetMultipathTCP(false)
	}
	var ln net.Listener
	if err := in(ns, func() (err error) {
		ln, err = lc.Listen(t.Context(), "tcp4", addr)
		return err
	}); err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dial connects from ns to addr, with d's Control (nil: none), giving up after timeout.
func dial(ns, addr string, timeout time.Duration, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
	var c net.Conn
	err := in(ns, func() (err error) {
		d := net.Dialer{Timeout: timeout, Control: control}
		c, err = d.Dial("tcp4", addr)
		return err
	})
	return c, err
}

// accepted is what a listener saw of one connection.
type accepted struct {
	local, remote string
	conn          net.Conn
}

// acceptOne accepts one connection on ln within timeout, or returns ok=false.
func acceptOne(ln *net.TCPListener, timeout time.Duration) (accepted, bool) {
	ln.SetDeadline(time.Now().Add(timeout))
	defer ln.SetDeadline(time.Time{})
	c, err := ln.Accept()
	if err != nil {
		return accepted{}, false
	}
	return accepted{local: c.LocalAddr().String(), remote: c.RemoteAddr().String(), conn: c}, true
}

// serve answers every connection on ln with greeting and closes it.
func serve(ln *net.TCPListener, greeting string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(greeting))
			c.Close()
		}
	}()
}

func readAll(c net.Conn) string {
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var b strings.Builder
	buf := make([]byte, 256)
	for {
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
