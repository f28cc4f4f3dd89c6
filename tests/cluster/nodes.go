package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/images"
	"github.com/ambient-lite/ambient-lite/tests/netnsdial"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Node component binaries, besides the control plane's.
const (
	kubeletName    = "kubelet"
	kubeProxyName  = "kube-proxy"
	containerdName = "containerd"
)

// nodeTools are the programs a node needs from the machine (Debian packages, `make setup`).
var nodeTools = []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "iptables", "ip"}

// checkNodeBinaries fails early, naming what is missing, if a node could not run here.
func checkNodeBinaries(binDir string) error {
	for _, b := range append([]string{kubeletName, kubeProxyName}, cniPlugins...) {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return fmt.Errorf("%w: %s is not in %s (run `make tools`)", ErrNoBinaries, b, binDir)
		}
	}
	for _, t := range nodeTools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%w: %s is not installed (run `make setup`)", ErrNoBinaries, t)
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: nodes need root (network, mount namespaces and cgroups)", ErrNoBinaries)
	}
	return nil
}

// nodeName names node i (1-based).
func nodeName(i int) string { return "node" + strconv.Itoa(i) }

// startWithNodes builds the cluster network, starts the control plane in its namespace, then
// the nodes, the pod network and CoreDNS.
func (c *Cluster) startWithNodes(ctx context.Context, binDir string, serviceIP net.IP, cidr string, opts Options) error {
	if err := checkClusterDir(c.Dir); err != nil {
		return err
	}
	c.ID = opts.ID
	if c.ID == "" {
		id := make([]byte, 3)
		_, _ = rand.Read(id)
		c.ID = hex.EncodeToString(id)
	}
	c.res.Cgroups = append(c.res.Cgroups, cgroupBase+"/"+c.ID)

	// Images are built while the network and control plane come up.
	c.binDir, c.imageDir = binDir, opts.ImageDir
	b, err := imageBuilder(binDir, opts.ImageDir, c.log)
	if err != nil {
		return err
	}
	imgDone := make(chan error, 1)
	var imgs map[string]images.Image
	go func() {
		var err error
		imgs, err = b.Build(ctx, images.Pause, images.CoreDNS)
		imgDone <- err
	}()
	waitImages := func() error {
		if err := <-imgDone; err != nil {
			return fmt.Errorf("building node images: %w", err)
		}
		return nil
	}

	nsDir := filepath.Join(c.Dir, "ns")
	if err := os.MkdirAll(nsDir, 0o700); err != nil {
		return err
	}
	if err := bindSelfPrivate(nsDir, &c.res); err != nil {
		return err
	}
	sw, err := createSwitch(c.ID, &c.res)
	if err != nil {
		return err
	}
	c.cp = machine{Name: "control-plane", Netns: netnsName(c.ID, "cp"), IP: controlPlaneIP}
	if err := addMachine(sw, c.cp, &c.res); err != nil {
		return err
	}
	var machines []machine
	for i := 1; i <= opts.Nodes; i++ {
		m := machine{Name: nodeName(i), Netns: netnsName(c.ID, nodeName(i)), IP: nodeIP(i)}
		if err := addMachine(sw, m, &c.res); err != nil {
			return err
		}
		// A node routes for its pods, and its bridge hands pod traffic to netfilter, where
		// kube-proxy's Service rules are (both settings are per network namespace).
		if err := sysctlIn(m.Netns, "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1",
			"net.bridge.bridge-nf-call-ip6tables=1"); err != nil {
			return err
		}
		machines = append(machines, m)
		c.Nodes = append(c.Nodes, m.Name)
		c.nodes = append(c.nodes, &node{machine: m, Dir: filepath.Join(c.Dir, "nodes", m.Name),
			Cgroup: cgroupBase + "/" + c.ID + "/" + m.Name})
	}

	p, err := newPKI(filepath.Join(c.Dir, "pki"), serviceIP, []net.IP{controlPlaneIP.AsSlice()}, machines)
	if err != nil {
		return err
	}
	pl := placement{
		ports: ports{etcdClient: 2379, etcdPeer: 2380, apiserver: apiserverPort, controller: 10257, scheduler: 10259},
		netns: c.cp.NetnsPath(), advertise: c.cp.IP,
	}
	forwardCmd := opts.ForwardCommand
	if opts.Detached && len(forwardCmd) == 0 {
		return errors.New("a detached cluster with nodes needs Options.ForwardCommand (the apiserver forwarder)")
	}
	c.forwardCmd = forwardCmd
	if err := c.startCore(ctx, binDir, p, pl, cidr, opts.Detached); err != nil {
		return err
	}
	if err := c.startControllers(ctx, binDir, p, pl, cidr, opts.Detached, opts.SkipCRDs); err != nil {
		return err
	}
	if err := waitImages(); err != nil {
		return err
	}

	apiserver := "https://" + net.JoinHostPort(c.cp.IP.String(), strconv.Itoa(apiserverPort))
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	var mu sync.Mutex // c.procs
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.startNode(ctx, n, binDir, p, apiserver, nsDir, imgs, opts, &mu)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := c.podNetwork(ctx); err != nil {
		return err
	}
	if err := c.waitNodesReady(ctx); err != nil {
		return err
	}
	c.NodesReady = time.Since(c.started)
	if err := c.deployDNS(ctx, imgs[images.CoreDNS].Ref); err != nil {
		return err
	}
	c.DNSReady = time.Since(c.started)
	return nil
}

// checkClusterDir refuses a cluster directory a node would not see as the host does: nodes
// get their own /run, /etc, /opt, /var/lib and /var/log.
func checkClusterDir(dir string) error {
	for _, d := range append([]string{"/run", "/var/run"}, overlaidDirs...) {
		if dir == d || strings.HasPrefix(dir, d+"/") {
			return fmt.Errorf("cluster dir %s is under %s, which every node has its own copy of: choose another (e.g. under /tmp)", dir, d)
		}
	}
	return nil
}

// startNode brings one node up: files, namespaces, cgroups, containerd with the images, then
// the kubelet and kube-proxy.
func (c *Cluster) startNode(ctx context.Context, n *node, binDir string, p *pki, apiserver, nsDir string,
	imgs map[string]images.Image, opts Options, mu *sync.Mutex) error {
	cfg := nodeConfig{
		Name: n.Name, IP: n.IP, APIServer: apiserver, ConfigDir: filepath.Join(n.Dir, "config"),
		CgroupRoot: n.Cgroup, ClusterDNS: clusterDNSIP, ClusterCIDR: podCIDR, PauseImage: imgs[images.Pause].Ref,
	}
	if err := n.prepare(binDir, cfg, p, apiserver); err != nil {
		return fmt.Errorf("preparing %s: %w", n.Name, err)
	}
	mu.Lock()
	err := n.createNamespaces(nsDir, &c.res)
	mu.Unlock()
	if err != nil {
		return err
	}
	if err := createCgroup(n.Cgroup + "/system"); err != nil {
		return err
	}
	conf := cfg.ConfigDir
	start := func(name, bin string, args ...string) (*process, error) {
		argv, err := n.argv(bin, args...)
		if err != nil {
			return nil, err
		}
		pr, err := startProcess(n.Name+"/"+name, argv, n.env(), filepath.Join(c.Dir, n.Name+"-"+name+".log"), opts.Detached)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		c.procs = append(c.procs, pr)
		mu.Unlock()
		return pr, nil
	}
	ctrd, err := start(containerdName, "containerd", "--config", filepath.Join(conf, "containerd.toml"))
	if err != nil {
		return err
	}
	n.containerd = ctrd
	if err := n.waitContainerd(ctx); err != nil {
		return err
	}
	sock, err := n.containerdSocket()
	if err != nil {
		return err
	}
	for _, name := range []string{images.Pause, images.CoreDNS} {
		if err := images.Load(ctx, sock, imgs[name]); err != nil {
			return fmt.Errorf("loading images into %s: %w", n.Name, err)
		}
	}
	kubelet, err := start(kubeletName, filepath.Join(binDir, kubeletName), append([]string{
		"--config=" + filepath.Join(conf, "kubelet.yaml"),
		"--kubeconfig=" + filepath.Join(conf, "kubelet.kubeconfig"),
		"--hostname-override=" + n.Name, "--node-ip=" + n.IP.String(), "--v=1"}, opts.KubeletArgs...)...)
	if err != nil {
		return err
	}
	if _, err := start(kubeProxyName, filepath.Join(binDir, kubeProxyName),
		"--config="+filepath.Join(conf, "kube-proxy.yaml"), "--v=1"); err != nil {
		return err
	}
	// The kubelet is up once it serves its healthz inside the node.
	return waitHTTP(ctx, kubelet, "http://127.0.0.1:10248/healthz", nil, netnsdial.Dialer(n.NetnsPath()))
}

// podNetwork waits for the controller manager to give every node a podCIDR, then writes each
// node's CNI config and the routes between nodes (what kindnet does on kind).
func (c *Cluster) podNetwork(ctx context.Context) error {
	cidrs := map[string]netip.Prefix{}
	err := c.pollNodes(ctx, "a podCIDR", func(n *corev1.Node) (bool, error) {
		if n.Spec.PodCIDR == "" {
			return false, nil
		}
		pf, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			return false, fmt.Errorf("node %s podCIDR %q: %w", n.Name, n.Spec.PodCIDR, err)
		}
		cidrs[n.Name] = pf
		return true, nil
	})
	if err != nil {
		return err
	}
	machines := []machine{c.cp}
	var nodes []machine
	for _, n := range c.nodes {
		conf, err := cniConfig(cidrs[n.Name])
		if err != nil {
			return err
		}
		if err := n.writeFile(nodeCNIConfFile, conf, 0o644); err != nil {
			return err
		}
		machines = append(machines, n.machine)
		nodes = append(nodes, n.machine)
	}
	return routePods(machines, cidrs, nodes)
}

// waitNodesReady waits for the Ready condition of every node, naming the laggards.
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	return c.pollNodes(ctx, "Ready", func(n *corev1.Node) (bool, error) {
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
}

// pollNodes polls until cond holds for every node of the cluster; on timeout it names the
// nodes it did not hold for, with their kubelet log tails.
func (c *Cluster) pollNodes(ctx context.Context, what string, cond func(*corev1.Node) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		pending := map[string]bool{}
		for _, n := range c.Nodes {
			pending[n] = true
		}
		list, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range list.Items {
				n := &list.Items[i]
				ok, err := cond(n)
				if err != nil {
					return err
				}
				if ok {
					delete(pending, n.Name)
				}
			}
			if len(pending) == 0 {
				return nil
			}
		}
		for _, pr := range c.procs {
			if done, perr := pr.exited(); done {
				return fmt.Errorf("%s %w (%v); last log lines:\n%s", pr.name, errExitedEarly, perr, logTail(pr.logPath, 20))
			}
		}
		select {
		case <-ctx.Done():
			var b strings.Builder
			for name := range pending {
				fmt.Fprintf(&b, "\n--- %s kubelet log (%s):\n%s", name, filepath.Join(c.Dir, name+"-kubelet.log"),
					logTail(filepath.Join(c.Dir, name+"-kubelet.log"), 15))
			}
			return fmt.Errorf("waiting for nodes to be %s: %w (last list error: %v); not yet: %v%s", what, ctx.Err(), err, keys(pending), b.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// startForward opens the host's way to the apiserver: a loopback port relayed into the
// control plane's network namespace, served by this process or, for a detached cluster, by
// the forward command. It returns the URL the host uses.
func (c *Cluster) startForward(pl placement, detached bool) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("listening for the apiserver forwarder: %w", err)
	}
	url := "https://" + ln.Addr().String()
	target := net.JoinHostPort(pl.advertise.String(), strconv.Itoa(pl.ports.apiserver))
	if !detached {
		c.fwd, c.fwdDone = ln, make(chan error, 1)
		go func() { c.fwdDone <- Forward(ln, target, pl.dial()) }()
		return url, nil
	}
	defer ln.Close() // the forwarder holds its own copy
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	argv := append(append([]string(nil), c.forwardCmd...), "--netns", pl.netns, "--to", target)
	pr, err := startProcessFiles("apiserver-forwarder", argv, nil, filepath.Join(c.Dir, "forwarder.log"), true, f)
	if err != nil {
		return "", err
	}
	c.procs = append(c.procs, pr)
	return url, nil
}
