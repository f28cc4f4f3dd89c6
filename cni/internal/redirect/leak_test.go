package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// census counts what Install creates: kernel objects by name (for the log only: other
// processes may load objects of the same names), links attached to the pod netns, pins, and
// this process's fds.
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

// installedIDs returns the ids of the link, program and maps installed in pinDir.
func installedIDs(t testing.TB, pinDir string) (link.ID, ebpf.ProgramID, []ebpf.MapID) {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, LinkPin), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pi, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	maps, _ := pi.MapIDs()
	return info.ID, info.Program, maps
}

// alive counts the ids that still name a kernel object.
func alive(links []link.ID, progs []ebpf.ProgramID, maps []ebpf.MapID) (nl, np, nm int) {
	for _, id := range links {
		if l, err := link.NewFromID(id); err == nil {
			l.Close()
			nl++
		}
	}
	for _, id := range progs {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			np++
		}
	}
	for _, id := range maps {
		if m, err := ebpf.NewMapFromID(id); err == nil {
			m.Close()
			nm++
		}
	}
	return nl, np, nm
}

// TestLeak runs 200 Install/Remove cycles and checks that every link, program and map an
// Install made is gone (by id, so other processes loading BPF cannot disturb it; the
// kernel frees them asynchronously, so it waits a little), and that no link to the netns,
// pin or fd is left behind.
func TestLeak(t *testing.T) {
	requireRoot(t)
	pod := newNetns(t, "leak")
	run(t, "ip", "-n", pod, "addr", "add", podIP+"/32", "dev", "lo")
	pinRoot := bpffs(t)
	ino := nsInode(t, pod)
	before := takeCensus(t, ino, pinRoot)
	const cycles = 200
	var (
		links []link.ID
		progs []ebpf.ProgramID
		maps  []ebpf.MapID
	)
	for i := range cycles {
		pinDir := filepath.Join(pinRoot, "ambient-lite", fmt.Sprint("pod-", i%7))
		if err := Install(nsPath(pod), pinDir, testConfig()); err != nil {
			t.Fatalf("cycle %d: Install: %v", i, err)
		}
		l, p, m := installedIDs(t, pinDir)
		links, progs, maps = append(links, l), append(progs, p), append(maps, m...)
		if i == 0 {
			during := takeCensus(t, ino, pinRoot)
			t.Logf("one pod installed: %s", during)
			// ambient_config, ambient_sockets and the .rodata of lo_ifindex and hbone_port.
			if len(m) != 3 || during.links != 1 || during.pins != before.pins+2 {
				t.Fatalf("one install made %s and %d maps, from %s", during, len(m), before)
			}
		}
		if err := Remove(nsPath(pod), pinDir); err != nil {
			t.Fatalf("cycle %d: Remove: %v", i, err)
		}
	}
	var after census
	var nl, np, nm int
	for deadline := time.Now().Add(10 * time.Second); ; {
		runtime.GC()
		after = takeCensus(t, ino, pinRoot)
		nl, np, nm = alive(links, progs, maps)
		if nl+np+nm == 0 && after.links == 0 && after.pins == before.pins && after.fds == before.fds || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d cycles made %d links, %d programs, %d maps; still alive: %d links, %d programs, %d maps", cycles, len(links), len(progs), len(maps), nl, np, nm)
	t.Logf("before: %s", before)
	t.Logf("after:  %s", after)
	if nl+np+nm != 0 || after.links != 0 || after.pins != before.pins || after.fds != before.fds {
		t.Fatalf("leak after %d Install/Remove cycles: %d links, %d programs, %d maps alive; before %s, after %s", cycles, nl, np, nm, before, after)
	}
	if rules := run(t, "ip", "-n", pod, "rule", "show"); countLines(rules) != 3 {
		t.Fatalf("rules left behind:\n%s", rules)
	}
}

func countLines(s string) int { return strings.Count(s, "\n") }
