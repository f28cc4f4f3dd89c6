package redirect

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// BenchmarkInstall measures one Install plus Remove in a pod netns (the CNI ADD and DEL
// cost of the redirection), and reports the kernel memory one installed pod holds: the
// memlock the kernel charges for its program and maps (a MemAvailable delta was tried and
// dropped: on a shared machine its noise is larger than the figure).
func BenchmarkInstall(b *testing.B) {
	requireRoot(b)
	pod := newNetns(b, "bench")
	run(b, "ip", "-n", pod, "addr", "add", podIP+"/32", "dev", "lo")
	pinDir := filepath.Join(bpffs(b), "pod")
	for b.Loop() {
		if err := Install(nsPath(pod), pinDir, testConfig()); err != nil {
			b.Fatal(err)
		}
		if err := Remove(nsPath(pod), pinDir); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()

	memlock, err := podMemlock(pod, pinDir)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(memlock), "memlock-B/pod")

	fmt.Fprintf(os.Stderr, "BenchmarkInstall: kernel memory per pod: %d B memlock (program + 3 maps: config, sockets, .rodata; from fdinfo)\n", memlock)
}

// podMemlock installs once more and sums the fdinfo memlock of the program and its maps.
func podMemlock(pod, pinDir string) (int64, error) {
	if err := Install(nsPath(pod), pinDir, testConfig()); err != nil {
		return 0, err
	}
	defer Remove(nsPath(pod), pinDir)
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, LinkPin), nil)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return 0, err
	}
	defer prog.Close()
	total, err := fdMemlock(prog.FD())
	if err != nil {
		return 0, err
	}
	pi, err := prog.Info()
	if err != nil {
		return 0, err
	}
	ids, _ := pi.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return 0, err
		}
		n, err := fdMemlock(m.FD())
		m.Close()
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

func fdMemlock(fd int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no memlock in fdinfo of fd %d", fd)
}
