package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
)

// TestUpDownLeavesNothing drives the command as `make cluster-up` / `make cluster-down` do:
// up over a stale state dir, kubectl with the printed KUBECONFIG, up again (idempotent),
// down, and then no process, mount or directory of the cluster may remain.
func TestUpDownLeavesNothing(t *testing.T) {
	binDir, err := cluster.ResolveBinDir("")
	if err != nil {
		testenv.SkipOrFail(t, err.Error())
	}
	exe := filepath.Join(t.TempDir(), "localcluster")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("building localcluster: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	// The cluster's processes get a private TMPDIR, which must be empty again after down.
	tmp := t.TempDir()

	// A cluster that died without `down` (a reboot, kill -9) left its state behind.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := `{"kubeconfig":"` + dir + `/kubeconfig","processes":[{"name":"etcd","pid":` +
		strconv.Itoa(dead.Process.Pid) + `,"startTime":1}]}`
	if err := os.MkdirAll(filepath.Join(dir, "etcd"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) (stdout string, err error) {
		t.Helper()
		cmd := exec.Command(exe, append(args, "--dir", dir)...)
		cmd.Env = append(os.Environ(), cluster.EnvBinDir+"="+binDir, "TMPDIR="+tmp)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err = cmd.Run()
		t.Logf("localcluster %s: %s", args[0], strings.TrimSpace(errOut.String()))
		return out.String(), err
	}
	t.Cleanup(func() { _, _ = run("down") }) // if the test fails midway

	start := time.Now()
	out, err := run("up")
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Logf("cluster-up took %s (with cached binaries; target < 15 s)", time.Since(start).Round(10*time.Millisecond))
	kubeconfig, ok := strings.CutPrefix(strings.TrimSpace(out), "export KUBECONFIG=")
	if !ok || kubeconfig != filepath.Join(dir, "kubeconfig") {
		t.Fatalf("up printed %q, want `export KUBECONFIG=%s/kubeconfig`", out, dir)
	}

	kubectl := exec.Command(filepath.Join(binDir, "kubectl"), "get", "ns", "-o", "name")
	kubectl.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	nsOut, err := kubectl.CombinedOutput()
	if err != nil || !strings.Contains(string(nsOut), "namespace/default") || !strings.Contains(string(nsOut), "namespace/kube-system") {
		t.Fatalf("kubectl get ns: %v\n%s", err, nsOut)
	}

	again, err := run("up")
	if err != nil || again != out {
		t.Errorf("second up = %q, %v; want the same export line and success", again, err)
	}
	if _, err := run("status"); err != nil {
		t.Errorf("status of a running cluster: %v", err)
	}

	pids := recordedPIDs(t, dir)
	if len(pids) != 4 {
		t.Errorf("state records %d processes, want 4 (etcd, apiserver, controller manager, scheduler)", len(pids))
	}
	if _, err := run("down"); err != nil {
		t.Fatalf("down: %v", err)
	}

	for _, pid := range pids {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil && !isZombie(pid) {
			t.Errorf("pid %d still runs after down", pid)
		}
	}
	for _, p := range processesMentioning(t, dir) {
		t.Errorf("process still runs after down: %s", p)
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
		t.Fatal(err)
	} else if strings.Contains(string(mounts), dir) {
		t.Errorf("a mount under %s remains after down", dir)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster dir %s remains after down (stat err %v)", dir, err)
	}
	if left, err := os.ReadDir(tmp); err != nil || len(left) > 0 {
		t.Errorf("temporary files remain after down: %v (err %v)", left, err)
	}
	if _, err := run("down"); err != nil {
		t.Errorf("second down: %v, want success (down is idempotent)", err)
	}
	if _, err := run("status"); err == nil {
		t.Error("status after down succeeded, want an error")
	}
}

func recordedPIDs(t *testing.T, dir string) []int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Processes []struct{ PID int } }
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range st.Processes {
		pids = append(pids, p.PID)
	}
	return pids
}

// processesMentioning lists live processes whose command line names dir.
func processesMentioning(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || isZombie(pid) {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(cmdline, []byte(dir)) {
			out = append(out, e.Name()+": "+string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	return out
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) == 0 || fields[0] == "Z"
}

func TestParseNodes(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "2": 2, " 8 ": 8, "9": -1, "-1": -1, "two": -1, "": -1, "2.5": -1} {
		got, err := parseNodes(in)
		if want < 0 {
			if err == nil || !strings.Contains(err.Error(), "NODES=") || !strings.Contains(err.Error(), "0 to 8") {
				t.Errorf("parseNodes(%q) = %d, %v; want an error naming NODES and the range", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("parseNodes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}
