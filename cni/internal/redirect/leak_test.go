package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// census counts what Install creates: kernel objects by name (other processes may load
// BPF at the same time), links attached to the pod netns, pins, and this process's fds.
type census struct {
	progs, maps, links, pins, fds int
}

func (c census) String() string {
	return fmt.Sprintf("programs=%d maps=%d links=%d pins=%d fds=%d", c.progs, c.maps, c.links, c.pins, c.fds)
}

func takeCensus(t testing.TB, nsIno uint64, pinRoot string) census {
	t.Helper()
	var c census
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		id = next
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			if info, err := p.Info(); err == nil && info.Name == redirectProgAmbientRedirect {
				c.progs++
			}
			p.Close()
		}
	}
	for id := ebpf.MapID(0); ; {
		next, err := ebpf.MapGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		id = next
		if m, err := ebpf.NewMapFromID(id); err == nil {
			if info, err := m.Info(); err == nil && (info.Name == redirectMapAmbientConfig || info.Name == redirectMapAmbientSockets) {
				c.maps++
			}
			m.Close()
		}
	}
	for id := uint32(0); ; {
		next, err := linkGetNextID(id)
		if errors.Is(err, unix.ENOENT) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		id = next
		if l, err := link.NewFromID(link.ID(id)); err == nil {
			if info, err := l.Info(); err == nil && info.NetNs() != nil && uint64(info.NetNs().NetnsInode) == nsIno {
				c.links++
			}
			l.Close()
		}
	}
	filepath.WalkDir(pinRoot, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			c.pins++
		}
		return nil
	})
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	c.fds = len(ents)
	return c
}

// linkGetNextID is BPF_LINK_GET_NEXT_ID, which cilium/ebpf does not export.
func linkGetNextID(start uint32) (uint32, error) {
	attr := struct{ start, next, flags uint32 }{start: start}
	_, _, errno := unix.Syscall(unix.SYS_BPF, 31 /* BPF_LINK_GET_NEXT_ID */, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return 0, errno
	}
	return attr.next, nil
}

func nsInode(t testing.TB, ns string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(nsPath(ns), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestLeak runs 200 Install/Remove cycles and checks that no program, map, link, pin or fd
// is left behind (the kernel frees programs and maps asynchronously, so it waits a little).
func TestLeak(t *testing.T) {
	requireRoot(t)
	pod := newNetns(t, "leak")
	run(t, "ip", "-n", pod, "addr", "add", podIP+"/32", "dev", "lo")
	pinRoot := bpffs(t)
	ino := nsInode(t, pod)
	before := takeCensus(t, ino, pinRoot)
	const cycles = 200
	for i := range cycles {
		pinDir := filepath.Join(pinRoot, "ambient-lite", fmt.Sprint("pod-", i%7))
		if err := Install(nsPath(pod), pinDir, testConfig()); err != nil {
			t.Fatalf("cycle %d: Install: %v", i, err)
		}
		if i == 0 {
			during := takeCensus(t, ino, pinRoot)
			t.Logf("installed: %s", during)
			if during.progs != before.progs+1 || during.maps != before.maps+2 || during.links != 1 || during.pins != before.pins+2 {
				t.Fatalf("one install made %s, from %s", during, before)
			}
		}
		if err := Remove(nsPath(pod), pinDir); err != nil {
			t.Fatalf("cycle %d: Remove: %v", i, err)
		}
	}
	var after census
	for deadline := time.Now().Add(10 * time.Second); ; {
		runtime.GC()
		after = takeCensus(t, ino, pinRoot)
		if after == before || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("before %d cycles: %s", cycles, before)
	t.Logf("after  %d cycles: %s", cycles, after)
	if after != before {
		t.Fatalf("leak after %d Install/Remove cycles: before %s, after %s", cycles, before, after)
	}
	if rules := run(t, "ip", "-n", pod, "rule", "show"); len(rules) == 0 || countLines(rules) != 3 {
		t.Fatalf("rules left behind:\n%s", rules)
	}
}

func countLines(s string) int {
	n := 0
	for _, c := range s {
		if c == '\n' {
			n++
		}
	}
	return n
}
