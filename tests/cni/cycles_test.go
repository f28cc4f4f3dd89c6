package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestEnrollCyclesLeaveNothing enrolls and unenrolls a running pod 200 times by its label,
// through the node agent and ztunnel, and checks after every cycle that the program, link
// and maps of that enrollment are gone from the kernel, nothing is pinned, and, at the end,
// that neither the agent nor ztunnel holds more file descriptors (netns or BPF) than before.
func TestEnrollCyclesLeaveNothing(t *testing.T) {
	e := newEnv(t)
	ns := e.c.Namespace(t, nil)
	p, err := e.addPod(ns, "cycler", map[string]string{"app": "cycler"})
	if err != nil {
		t.Fatal(err)
	}
	e.serve(p, 8080)
	// Let start-up settle (first xDS pushes, certificate prefetch) before the baseline.
	time.Sleep(500 * time.Millisecond)
	agentFDs, ztunnelFDs := fds(t, e.agent), fds(t, e.ztunnel)

	patch := func(value string) {
		t.Helper()
		body := `{"metadata":{"labels":{"istio.io/dataplane-mode":` + value + `}}}`
		if _, err := e.c.Client.CoreV1().Pods(ns).Patch(context.Background(), p.name, types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	const cycles = 200
	start := time.Now()
	var enrolling, unenrolling, freeing time.Duration
	for i := range cycles {
		t0 := time.Now()
		patch(`"ambient"`)
		e.waitPrograms(p, 1, 10*time.Second)
		progID, mapIDs := attached(t, p)
		t1 := time.Now()
		patch(`null`)
		e.waitPrograms(p, 0, 10*time.Second)
		if err := wait.PollUntilContextTimeout(context.Background(), 2*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			return len(e.pins()) == 0, nil
		}); err != nil {
			t.Fatalf("cycle %d: pins left after unenrolling: %v", i, e.pins())
		}
		t2 := time.Now()
		enrolling += t1.Sub(t0)
		unenrolling += t2.Sub(t1)
		// The kernel frees the program and its maps once the last reference (link, pin, fd)
		// is gone; that happens after an RCU grace period.
		err := wait.PollUntilContextTimeout(context.Background(), 2*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			return gone(progID, mapIDs) == nil, nil
		})
		if err != nil {
			t.Fatalf("cycle %d: %v", i, gone(progID, mapIDs))
		}
		freeing += time.Since(t2)
	}
	t.Logf("per cycle: label → capture %s, label removed → capture gone %s, kernel frees the objects %s",
		enrolling/cycles, unenrolling/cycles, freeing/cycles)
	t.Logf("%d enroll/unenroll cycles in %s (%.1f ms each)", cycles, time.Since(start).Round(time.Millisecond),
		float64(time.Since(start).Milliseconds())/cycles)
	// Descriptors return to their baseline (ztunnel drains a pod's connections in the
	// background; DRAIN_DURATION is 0 here).
	err = wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return fds(t, e.agent) <= agentFDs && fds(t, e.ztunnel) <= ztunnelFDs, nil
	})
	if err != nil {
		t.Errorf("file descriptors after %d cycles: node agent %d (was %d), ztunnel %d (was %d)",
			cycles, fds(t, e.agent), agentFDs, fds(t, e.ztunnel), ztunnelFDs)
	}
	e.eventually(p, "127.0.0.1:8080", "cycler saw") // the pod still works
}

// attached returns the id of the sk_lookup program attached to the pod's netns and of its maps.
func attached(t testing.TB, p *pod) (ebpf.ProgramID, []ebpf.MapID) {
	t.Helper()
	f, err := os.Open("/var/run/netns/" + p.netns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachSkLookup})
	if err != nil || len(res.Programs) != 1 {
		t.Fatalf("querying the pod's sk_lookup program: %v %v", res, err)
	}
	id := res.Programs[0].ID
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	maps, _ := info.MapIDs()
	return id, maps
}

func gone(prog ebpf.ProgramID, maps []ebpf.MapID) error {
	if p, err := ebpf.NewProgramFromID(prog); err == nil {
		p.Close()
		return fmt.Errorf("program %d still exists", prog)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, id := range maps {
		if m, err := ebpf.NewMapFromID(id); err == nil {
			name := "?"
			if info, err := m.Info(); err == nil {
				name = info.Name + " (" + info.Type.String() + ")"
			}
			m.Close()
			out, _ := exec.Command("bpftool", "prog", "show").CombinedOutput()
			var refs []string
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, fmt.Sprint(id)) {
					refs = append(refs, l)
				}
			}
			return fmt.Errorf("map %d %s still exists (held by %s; programs: %v)", id, name, holders(fmt.Sprintf("map_id:\t%d\n", id)), refs)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func fds(t *testing.T, p *process) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// holders lists the processes with a descriptor whose fdinfo contains needle.
func holders(needle string) string {
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		fdinfos, _ := os.ReadDir("/proc/" + p.Name() + "/fdinfo")
		for _, fd := range fdinfos {
			b, _ := os.ReadFile("/proc/" + p.Name() + "/fdinfo/" + fd.Name())
			if strings.Contains(string(b), needle) {
				comm, _ := os.ReadFile("/proc/" + p.Name() + "/comm")
				out = append(out, p.Name()+"/"+strings.TrimSpace(string(comm))+" fd "+fd.Name())
			}
		}
	}
	return strings.Join(out, ", ")
}
