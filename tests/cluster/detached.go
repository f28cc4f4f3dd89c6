package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// stateFile records a detached cluster, so another process can find and stop it.
const stateFile = "state.json"

type state struct {
	Kubeconfig string         `json:"kubeconfig"`
	Processes  []stateProcess `json:"processes"`
	// Resources of a cluster with nodes: its network namespaces, mounts and cgroups.
	Resources resources `json:"resources"`
}

type stateProcess struct {
	Name      string `json:"name"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"` // clock ticks since boot; guards against pid reuse
}

// SaveState writes Dir/state.json describing the running processes, so that another
// process can stop a detached cluster with StopDetached.
func (c *Cluster) SaveState() error {
	st := state{Kubeconfig: c.Kubeconfig, Resources: c.res}
	for _, p := range c.procs {
		start, err := procStartTime(p.cmd.Process.Pid)
		if err != nil {
			return fmt.Errorf("reading start time of %s: %w", p.name, err)
		}
		st.Processes = append(st.Processes, stateProcess{Name: p.name, PID: p.cmd.Process.Pid, StartTime: start})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.Dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing cluster state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(c.Dir, stateFile))
}

// Running reports whether dir holds a detached cluster whose processes all still run, and
// its kubeconfig path.
func Running(dir string) (kubeconfig string, running bool, err error) {
	st, err := loadState(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	for _, p := range st.Processes {
		if start, err := procStartTime(p.PID); err != nil || start != p.StartTime {
			return st.Kubeconfig, false, nil
		}
	}
	return st.Kubeconfig, len(st.Processes) > 0, nil
}

// StopDetached stops the cluster recorded in dir (newest process first), kills whatever is
// left in its cgroups, removes its network namespaces, mounts and cgroups, and removes dir.
// A missing dir is not an error: stopping twice is fine.
func StopDetached(dir string) error {
	st, err := loadState(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var errs []error
	for i := len(st.Processes) - 1; i >= 0; i-- {
		p := st.Processes[i]
		if err := killRecorded(p.PID, p.StartTime, stopGrace); err != nil {
			errs = append(errs, fmt.Errorf("stopping %s: %w", p.Name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // keep the state so a retry can find the survivors
	}
	if err := st.Resources.release(); err != nil {
		return fmt.Errorf("releasing cluster resources: %w", err) // the state stays for a retry
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing cluster dir: %w", err)
	}
	return nil
}

func loadState(dir string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parsing %s: %w", filepath.Join(dir, stateFile), err)
	}
	return st, nil
}

// nodeSockets returns the containerd socket of every node of the detached cluster in dir,
// reached through the root of its running containerd.
func nodeSockets(dir string) (map[string]string, error) {
	st, err := loadState(dir)
	if err != nil {
		return nil, fmt.Errorf("no cluster recorded in %s: %w", dir, err)
	}
	out := map[string]string{}
	for _, p := range st.Processes {
		nodeName, ok := strings.CutSuffix(p.Name, "/"+containerdName)
		if !ok {
			continue
		}
		if start, err := procStartTime(p.PID); err != nil || start != p.StartTime {
			return nil, fmt.Errorf("containerd of %s is not running (pid %d): restart the cluster", nodeName, p.PID)
		}
		out[nodeName] = "/proc/" + strconv.Itoa(p.PID) + "/root" + nodeContainerdSocket
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the cluster in %s has no nodes (start it with NODES=2)", dir)
	}
	return out, nil
}

// LoadImagesDetached builds the named catalog images (changed ones only) and loads them into
// every node of the detached cluster in dir (`make images`).
func LoadImagesDetached(ctx context.Context, dir, binDir, imageDir string, log *slog.Logger, names ...string) error {
	socks, err := nodeSockets(dir)
	if err != nil {
		return err
	}
	return buildAndLoad(ctx, socks, binDir, imageDir, log, names)
}
