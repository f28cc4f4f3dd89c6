package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupBase is the cgroup (in every v1 hierarchy) under which each cluster gets its own
// subtree, /ambient-lite/<cluster id>/<node>: the node's daemons in .../<node>/system, its
// pods in .../<node>/kubepods (the kubelet's --cgroup-root is .../<node>). Tearing a cluster
// down kills whatever still runs in its subtree and removes it.
const cgroupBase = "/ambient-lite"

// cgroupHierarchies returns the mount points of the cgroup hierarchies: this machine's v1
// controllers, and the cgroup2 mount of a hybrid setup (no controllers, but runc places
// containers there too).
func cgroupHierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// mountinfo: id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(s.Text(), " - ")
		fields, after := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(after) < 1 || (after[0] != "cgroup" && after[0] != "cgroup2") {
			continue
		}
		out = append(out, fields[4])
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no cgroup v1 hierarchy is mounted (the local cluster's kubelets need the cgroup v1 controllers)")
	}
	sort.Strings(out)
	return out, nil
}

// createCgroup creates rel (e.g. /ambient-lite/x/node1/system) in every hierarchy. A new
// cpuset cgroup starts with no CPUs and memory nodes, so those are copied from the parent.
func createCgroup(rel string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		// Another cluster's teardown may remove an empty cgroupBase between our mkdirs.
		err := mkCgroup(h, rel)
		for try := 0; errors.Is(err, fs.ErrNotExist) && try < 3; try++ {
			err = mkCgroup(h, rel)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func mkCgroup(h, rel string) error {
	parts := strings.Split(strings.Trim(rel, "/"), "/")
	dir := h
	for _, p := range parts {
		parent := dir
		dir = filepath.Join(dir, p)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				continue // not the cpuset hierarchy
			}
			if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) != "" {
				continue
			}
			v, err := os.ReadFile(filepath.Join(parent, f))
			if err != nil {
				return fmt.Errorf("reading %s of %s: %w", f, parent, err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("setting %s of %s: %w", f, dir, err)
			}
		}
	}
	return nil
}

// cgroupProcsFiles returns rel's cgroup.procs file in every hierarchy: writing a pid to each
// moves that process into rel.
func cgroupProcsFiles(rel string) ([]string, error) {
	hs, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = filepath.Join(h, rel, "cgroup.procs")
	}
	return out, nil
}

// cgroupPids returns the pids of every process in rel's subtree, in any hierarchy.
func cgroupPids(rel string) ([]int, error) {
	hs, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	for _, h := range hs {
		root := filepath.Join(h, rel)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil // removed meanwhile
				}
				return err
			}
			for _, l := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(l); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("listing processes of cgroup %s: %w", root, err)
		}
	}
	pids := make([]int, 0, len(seen))
	for p := range seen {
		pids = append(pids, p)
	}
	sort.Ints(pids)
	return pids, nil
}

// killCgroup SIGKILLs every process in rel's subtree until none is left (containers and
// their shims outlive containerd by design; this is how a node is powered off).
func killCgroup(rel string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := cgroupPids(rel)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in cgroup %s after SIGKILL", pids, rel)
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeCgroup removes rel's subtree in every hierarchy (deepest first), then its parents up
// to and including cgroupBase where they are empty (another cluster may still use them).
func removeCgroup(rel string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		var dirs []string
		err := filepath.WalkDir(filepath.Join(h, rel), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := rmdirRetry(dirs[i]); err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
		for p := filepath.Dir(filepath.Join(h, rel)); strings.HasPrefix(p, filepath.Join(h, cgroupBase)); p = filepath.Dir(p) {
			if os.Remove(p) != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// rmdirRetry removes a cgroup directory; the kernel reports EBUSY for a short while after its
// last process exited.
func rmdirRetry(dir string) error {
	var err error
	for range 100 {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}
