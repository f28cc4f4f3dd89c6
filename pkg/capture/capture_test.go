package capture

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func TestMarkFitsMask(t *testing.T) {
	if Mark&MarkMask != Mark {
		t.Fatalf("Mark %#x has bits outside MarkMask %#x", Mark, MarkMask)
	}
	if SlotOutbound == SlotInbound {
		t.Fatal("the two slots are the same")
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin, testenv.CapBPF)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipOrFail(t, "iproute2 (ip) is not installed: run make setup")
	}
}

// newNetns creates a netns with loopback up, removed when the test ends, and returns it
// opened.
func newNetns(t *testing.T) *os.File {
	t.Helper()
	name := fmt.Sprintf("cap%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	for _, args := range [][]string{{"netns", "add", name}, {"-n", name, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	f, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		exec.Command("ip", "netns", "del", name).Run()
	})
	return f
}

// listenIn opens a listener with lc on a thread inside ns.
func listenIn(t *testing.T, ns *os.File, lc *net.ListenConfig, network, addr string) *net.TCPListener {
	t.Helper()
	type res struct {
		ln  net.Listener
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			c <- res{nil, err}
			return
		}
		ln, err := lc.Listen(t.Context(), network, addr)
		c <- res{ln, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatalf("listening on %s: %v", addr, r.err)
	}
	t.Cleanup(func() { r.ln.Close() })
	return r.ln.(*net.TCPListener)
}

func sockopt(t *testing.T, ln *net.TCPListener, level, opt int) int {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

func TestListenConfig(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	for _, tt := range []struct {
		network, addr string
		level, opt    int
	}{
		{"tcp4", "127.0.0.1:0", unix.SOL_IP, unix.IP_TRANSPARENT},
		{"tcp", "0.0.0.0:0", unix.SOL_IPV6, unix.IPV6_TRANSPARENT}, // Go makes this a dual-stack AF_INET6 socket
		{"tcp6", "[::1]:0", unix.SOL_IPV6, unix.IPV6_TRANSPARENT},
	} {
		t.Run(tt.network+" "+tt.addr, func(t *testing.T) {
			ln := listenIn(t, ns, ListenConfig(), tt.network, tt.addr)
			if m := sockopt(t, ln, unix.SOL_SOCKET, unix.SO_MARK); m != Mark {
				t.Errorf("SO_MARK = %#x, want %#x", m, Mark)
			}
			if v := sockopt(t, ln, tt.level, tt.opt); v != 1 {
				t.Errorf("transparent = %d, want 1", v)
			}
			if p := sockopt(t, ln, unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_TCP {
				t.Errorf("SO_PROTOCOL = %d, want TCP (not MPTCP)", p)
			}
		})
	}
}

// attach attaches to ns a minimal sk_lookup program that uses a sockmap named mapName
// (passing every packet), and returns the map.
func attach(t *testing.T, ns *os.File, mapName string) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: mapName, Type: ebpf.SockMap, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		t.Fatalf("creating sockmap: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SkLookup, AttachType: ebpf.AttachSkLookup, License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Imm(asm.R0, 1), // SK_PASS
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("loading program: %v", err)
	}
	defer prog.Close()
	l, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		t.Fatalf("attaching: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return m
}

func cookie(t *testing.T, ln *net.TCPListener) uint64 {
	t.Helper()
	rc, _ := ln.SyscallConn()
	var c uint64
	var gerr error
	rc.Control(func(fd uintptr) {
		c, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return c
}

func TestRegister(t *testing.T) {
	requireRoot(t)

	t.Run("no program", func(t *testing.T) {
		ns := newNetns(t)
		ln := listenIn(t, ns, ListenConfig(), "tcp4", "0.0.0.0:15001")
		if err := Register(ns, ln, nil); !errors.Is(err, ErrNotRedirected) {
			t.Fatalf("Register = %v, want ErrNotRedirected", err)
		}
	})

	t.Run("another program", func(t *testing.T) {
		ns := newNetns(t)
		attach(t, ns, "other_sockets")
		ln := listenIn(t, ns, ListenConfig(), "tcp4", "0.0.0.0:15001")
		if err := Register(ns, ln, nil); !errors.Is(err, ErrNotRedirected) {
			t.Fatalf("Register = %v, want ErrNotRedirected", err)
		}
	})

	t.Run("stores the listeners in their slots", func(t *testing.T) {
		ns := newNetns(t)
		m := attach(t, ns, SocketMapName)
		out := listenIn(t, ns, ListenConfig(), "tcp4", "0.0.0.0:15001")
		in := listenIn(t, ns, ListenConfig(), "tcp4", "0.0.0.0:15006")
		if err := Register(ns, out, in); err != nil {
			t.Fatalf("Register: %v", err)
		}
		for slot, ln := range map[uint32]*net.TCPListener{SlotOutbound: out, SlotInbound: in} {
			var got uint64 // a sockmap lookup from user space returns the socket cookie
			if err := m.Lookup(slot, &got); err != nil {
				t.Fatalf("slot %d: %v", slot, err)
			}
			if want := cookie(t, ln); got != want {
				t.Errorf("slot %d holds socket %d, want %s's %d", slot, got, ln.Addr(), want)
			}
		}
		// Re-registering replaces; closing a listener empties its slot.
		out2 := listenIn(t, ns, ListenConfig(), "tcp4", "0.0.0.0:15011")
		if err := Register(ns, out2, nil); err != nil {
			t.Fatalf("Register again: %v", err)
		}
		var got uint64
		if err := m.Lookup(uint32(SlotOutbound), &got); err != nil || got != cookie(t, out2) {
			t.Fatalf("slot 0 after re-registering: %d, %v", got, err)
		}
		out2.Close()
		if err := m.Lookup(uint32(SlotOutbound), &got); !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("slot 0 after closing its listener: %d, %v; want empty", got, err)
		}
	})

	t.Run("rejects MPTCP listeners with a hint", func(t *testing.T) {
		ns := newNetns(t)
		attach(t, ns, SocketMapName)
		lc := &net.ListenConfig{}
		lc.SetMultipathTCP(true)
		ln := listenIn(t, ns, lc, "tcp4", "0.0.0.0:15001")
		if err := Register(ns, ln, nil); err == nil || !strings.Contains(err.Error(), "MPTCP") {
			t.Fatalf("Register of an MPTCP listener = %v, want an error naming MPTCP", err)
		}
	})
}
