package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/ambient-lite/ambient-lite/cni/internal/redirect"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// findNetns returns the path of the network namespace in dir that holds one of ips, "" when
// none does, or an error when more than one does (the agent will not guess which pod it is).
func findNetns(dir string, ips []netip.Addr) (string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("listing network namespaces in %s: %w", dir, err)
	}
	var found []string
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		has, err := netnsHolds(path, ips)
		if err != nil {
			continue // not a netns, or gone meanwhile
		}
		if has {
			found = append(found, path)
		}
	}
	switch len(found) {
	case 0:
		return "", nil
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%d network namespaces in %s hold %v: %v", len(found), dir, ips, found)
}

func netnsHolds(path string, ips []netip.Addr) (bool, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return false, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false, err
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && slices.Contains(ips, ip.Unmap()) {
			return true, nil
		}
	}
	return false, nil
}

// pinnedNetns returns the path of the network namespace of the pod uid: the one its pinned
// redirection is attached to (exact, when the agent pinned one for uid), else the one in dir
// holding ips (findNetns; "" without ips).
func pinnedNetns(dir, pinDir string, ips []netip.Addr) (string, error) {
	if ino, err := redirect.NetnsInode(pinDir); err == nil {
		if path := findNetnsByInode(dir, ino); path != "" {
			return path, nil
		}
	}
	if len(ips) == 0 {
		return "", nil
	}
	return findNetns(dir, ips)
}

// findNetnsByInode returns the path of the network namespace file in dir whose inode is
// ino, or "" when none is.
func findNetnsByInode(dir string, ino uint64) string {
	if ino == 0 {
		return ""
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && st.Ino == ino {
			if f, err := openNetns(path); err == nil {
				_ = f.Close()
				return path
			}
		}
	}
	return ""
}

// probeSources are the addresses kubelet probes come from, as seen from the pod: its default
// gateways (the node's side of the pod's link, for bridge-style CNIs), plus extra.
func probeSources(path string, extra []netip.Addr) ([]netip.Addr, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing routes in %s: %w", path, err)
	}
	out := slices.Clone(extra)
	for _, r := range routes {
		if r.Gw == nil || !isDefault(r) {
			continue
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok && !slices.Contains(out, gw.Unmap()) {
			out = append(out, gw.Unmap())
		}
	}
	return out, nil
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// openNetns opens a network namespace file, checking that it is one.
func openNetns(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		_ = f.Close()
		return nil, fmt.Errorf("%s is not a network namespace", path)
	}
	return f, nil
}
