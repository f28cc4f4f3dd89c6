package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// node is one kubelet node of the local cluster. It has its own network namespace on the
// cluster network, its own mount namespace (a tmpfs /run; copy-on-write /etc, /opt, /var/lib
// and /var/log over the host's; its own containerd and kubelet state, bpffs and CNI
// directories) and UTS namespace (hostname = node name), and its own cgroup subtree. In it run
// containerd (Debian's, with runc), the kubelet and kube-proxy, each as a process of this
// package (recorded like the control plane's). Nothing of a node is visible in the host's
// namespaces or directories.
type node struct {
	machine
	Dir    string // <cluster dir>/nodes/<name>: all the node's files
	mntNS  string // bind-mounted mount namespace
	utsNS  string // bind-mounted UTS namespace
	Cgroup string // kubelet --cgroup-root; the daemons run in Cgroup/system

	containerd *process
}

// Node daemons' environment: no proxy settings or locale from the caller leak into a node.
func (n *node) env() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"TMPDIR=" + filepath.Join(n.Dir, "tmp"),
	}
}

// fakeSysctls are the machine-wide sysctls a kubelet insists on (it writes them when they
// differ). The node sees these values through files bound over /proc/sys in its mount
// namespace, so the kubelet has nothing to change and the host keeps its own settings.
var fakeSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// overlaidDirs get a copy-on-write layer per node over the host's directory: a node writes
// /etc/cni/net.d, /opt/cni/bin, /var/lib/... as a real node would, and the host never sees it.
var overlaidDirs = []string{"/etc", "/opt", "/var/lib", "/var/log"}

// cniPlugins are the reference plugins a node's CNI config uses.
var cniPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

func (n *node) upper(dir string) string {
	return filepath.Join(n.Dir, "fs", strings.Trim(strings.ReplaceAll(dir, "/", "-"), "-"))
}

// prepare writes the node's files before its namespaces exist: configuration, certificates,
// the CNI plugins in its /opt/cni/bin, its machine-id, and the sysctl values it sees.
func (n *node) prepare(binDir string, cfg nodeConfig, p *pki, apiserver string) error {
	for _, d := range []string{"config", "containerd", "kubelet", "tmp", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o700); err != nil {
			return err
		}
	}
	for _, d := range overlaidDirs {
		for _, sub := range []string{"upper", "work"} {
			if err := os.MkdirAll(filepath.Join(n.upper(d), sub), 0o755); err != nil {
				return err
			}
		}
	}
	etc := filepath.Join(n.upper("/etc"), "upper")
	if err := os.MkdirAll(filepath.Join(etc, "cni", "net.d"), 0o755); err != nil {
		return err
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	if err := os.WriteFile(filepath.Join(etc, "machine-id"), []byte(hex.EncodeToString(id)+"\n"), 0o444); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(etc, "hostname"), []byte(n.Name+"\n"), 0o644); err != nil {
		return err
	}
	cniBin := filepath.Join(n.upper("/opt"), "upper", "cni", "bin")
	if err := os.MkdirAll(cniBin, 0o755); err != nil {
		return err
	}
	for _, plugin := range cniPlugins {
		if err := copyFile(filepath.Join(binDir, plugin), filepath.Join(cniBin, plugin), 0o755); err != nil {
			return fmt.Errorf("installing CNI plugin %s on %s: %w (run `make tools`)", plugin, n.Name, err)
		}
	}
	for k, v := range fakeSysctls {
		if err := os.WriteFile(filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(k, "/", ".")), []byte(v+"\n"), 0o444); err != nil {
			return err
		}
	}

	conf := filepath.Join(n.Dir, "config")
	np := p.Nodes[n.Name]
	files := map[string]string{
		"ca.crt": p.CACert, "kubelet-serving.crt": np.ServingCert, "kubelet-serving.key": np.ServingKey,
	}
	for dst, src := range files {
		if err := copyFile(src, filepath.Join(conf, dst), 0o600); err != nil {
			return err
		}
	}
	if err := writeKubeconfig(filepath.Join(conf, "kubelet.kubeconfig"), apiserver, p, np.ClientCert, np.ClientKey, "system:node:"+n.Name); err != nil {
		return err
	}
	if err := writeKubeconfig(filepath.Join(conf, "kube-proxy.kubeconfig"), apiserver, p, p.KubeProxyCert, p.KubeProxyKey, "system:kube-proxy"); err != nil {
		return err
	}
	for name, t := range map[string]*template.Template{
		"containerd.toml": containerdTemplate, "kubelet.yaml": kubeletTemplate, "kube-proxy.yaml": kubeProxyTemplate,
	} {
		b, err := render(t, cfg)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(conf, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// createNamespaces makes the node's mount and UTS namespaces (kept alive by bind mounts in
// nsDir) and mounts its filesystems inside.
func (n *node) createNamespaces(nsDir string, res *resources) error {
	n.mntNS = filepath.Join(nsDir, n.Name+".mnt")
	n.utsNS = filepath.Join(nsDir, n.Name+".uts")
	for _, f := range []string{n.mntNS, n.utsNS} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return err
		}
	}
	// unshare(1) bind-mounts the new namespaces onto the files from its parent process; they
	// are host mounts from then on.
	res.Mounts = append(res.Mounts, n.mntNS, n.utsNS)
	if out, err := exec.Command("unshare", "--mount="+n.mntNS, "--uts="+n.utsNS, "--propagation=private", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("creating namespaces of %s: %v: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	var s strings.Builder
	s.WriteString("set -e\n")
	fmt.Fprintf(&s, "hostname %s\n", shellQuote(n.Name))
	s.WriteString("mount -t tmpfs -o mode=0755 tmpfs /run\nmkdir -p /run/netns /run/lock\n")
	for _, d := range overlaidDirs {
		u := n.upper(d)
		fmt.Fprintf(&s, "mount -t overlay overlay -o %s %s\n",
			shellQuote("lowerdir="+d+",upperdir="+u+"/upper,workdir="+u+"/work"), d)
	}
	// containerd's snapshots need a real filesystem (overlayfs cannot be an upper layer of
	// overlayfs), and the kubelet's pod volumes are best on one too.
	for dst, src := range map[string]string{"/var/lib/containerd": "containerd", "/var/lib/kubelet": "kubelet"} {
		fmt.Fprintf(&s, "mkdir -p %s\nmount --bind %s %s\n", dst, shellQuote(filepath.Join(n.Dir, src)), dst)
	}
	s.WriteString("mount -t bpf bpf /sys/fs/bpf\n")
	for k := range fakeSysctls {
		src := filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(k, "/", "."))
		fmt.Fprintf(&s, "mount --bind -o ro %s /proc/sys/%s\n", shellQuote(src), k)
	}
	// A real node's root is shared (systemd does it): the kubelet's volumes and pods' mount
	// propagation rely on it. Sharing happens within the node only; the host's mounts are
	// separate copies with private propagation.
	s.WriteString("mount --make-rshared /\n")
	cmd := exec.Command("nsenter", "--mount="+n.mntNS, "--uts="+n.utsNS, "--", "/bin/sh", "-c", s.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mounting the filesystems of %s: %v: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// argv wraps a node daemon's command line: join the node's daemon cgroup, then enter its
// network, mount and UTS namespaces, then exec the daemon (one pid throughout).
func (n *node) argv(bin string, args ...string) ([]string, error) {
	procs, err := cgroupProcsFiles(n.Cgroup + "/system")
	if err != nil {
		return nil, err
	}
	var s strings.Builder
	for _, f := range procs {
		fmt.Fprintf(&s, "echo $$ > %s && ", shellQuote(f))
	}
	s.WriteString(`exec "$@"`)
	return append([]string{"/bin/sh", "-c", s.String(), "sh",
		"nsenter", "--net=" + n.NetnsPath(), "--mount=" + n.mntNS, "--uts=" + n.utsNS, "--", bin}, args...), nil
}

// root is the node's filesystem as the host can reach it (through its containerd's root).
func (n *node) root() (string, error) {
	if n.containerd == nil {
		return "", fmt.Errorf("node %s: containerd is not running", n.Name)
	}
	return "/proc/" + strconv.Itoa(n.containerd.cmd.Process.Pid) + "/root", nil
}

// containerdSocket is the node's containerd socket, reachable from the host.
func (n *node) containerdSocket() (string, error) {
	r, err := n.root()
	return r + nodeContainerdSocket, err
}

// writeFile writes a file into the node's filesystem (path as the node sees it).
func (n *node) writeFile(path string, data []byte, perm os.FileMode) error {
	r, err := n.root()
	if err != nil {
		return err
	}
	tmp := r + path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("writing %s on %s: %w", path, n.Name, err)
	}
	return os.Rename(tmp, r+path)
}

// waitContainerd waits until the node's containerd accepts connections.
func (n *node) waitContainerd(ctx context.Context) error {
	sock, err := n.containerdSocket()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		if done, err := n.containerd.exited(); done {
			return fmt.Errorf("containerd of %s %w (%v); last log lines:\n%s", n.Name, errExitedEarly, err, logTail(n.containerd.logPath, 15))
		}
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for containerd of %s: %w (last: %v); log %s", n.Name, ctx.Err(), err, n.containerd.logPath)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
