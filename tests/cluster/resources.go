package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// resources are what a cluster with nodes holds besides its processes: network namespaces,
// host mounts (the bind mounts that keep each node's mount and UTS namespaces alive) and its
// cgroup subtree. They are recorded as they are made, in the detached state file too, and
// released by release, which Stop and StopDetached share.
type resources struct {
	Netns   []string `json:"netns,omitempty"`   // names under /run/netns
	Mounts  []string `json:"mounts,omitempty"`  // host mount points, unmounted newest first
	Cgroups []string `json:"cgroups,omitempty"` // subtrees relative to every v1 hierarchy
}

// killProcesses SIGKILLs whatever still runs in the cluster's cgroups: pod containers and
// the runtime shims, which outlive containerd by design.
func (r *resources) killProcesses() error {
	var errs []error
	for _, cg := range r.Cgroups {
		if err := killCgroup(cg, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// release removes everything recorded, newest first, once no process is left. A resource
// already gone is not an error, so a second release after a failed one finishes the job.
func (r *resources) release() error {
	if err := r.killProcesses(); err != nil {
		return err // a mount or netns in use by a survivor could not be removed anyway
	}
	var errs []error
	for i := len(r.Mounts) - 1; i >= 0; i-- {
		m := r.Mounts[i]
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
		}
	}
	for i := len(r.Netns) - 1; i >= 0; i-- {
		n := r.Netns[i]
		if _, err := os.Stat("/run/netns/" + n); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", n).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting netns %s: %v: %s", n, err, strings.TrimSpace(string(out))))
		}
	}
	for i := len(r.Cgroups) - 1; i >= 0; i-- {
		if err := removeCgroup(r.Cgroups[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// bindSelfPrivate makes dir a mount point of its own with private propagation, which the
// kernel requires of a place that holds namespace files (their bind mounts must not
// propagate back into the namespaces they keep alive).
func bindSelfPrivate(dir string, res *resources) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", dir, err)
	}
	res.Mounts = append(res.Mounts, dir)
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making %s private: %w", dir, err)
	}
	return nil
}
