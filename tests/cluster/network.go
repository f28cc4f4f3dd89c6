package cluster

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// The cluster network: a switch (its own network namespace holding a bridge) and one network
// namespace per machine (the control plane, each node) with eth0 on that bridge, as kind's
// docker network joins its node containers. The host network namespace takes no part.
var (
	clusterSubnet  = netip.MustParsePrefix("172.30.0.0/24")
	clusterGateway = netip.MustParseAddr("172.30.0.1") // the switch's own address: a dead end
	controlPlaneIP = netip.MustParseAddr("172.30.0.2")
	podCIDR        = netip.MustParsePrefix("10.244.0.0/16")
	clusterDNSIP   = netip.MustParseAddr("10.96.0.10")
)

// apiserverPort is the apiserver's port on the cluster network (inside its own netns, so a
// fixed port cannot collide with anything on the host).
const apiserverPort = 6443

// machine is one network namespace on the cluster network.
type machine struct {
	Name  string // "control-plane", "node1", ...
	Netns string // name under /run/netns
	IP    netip.Addr
}

// NetnsPath is the path of the machine's network namespace.
func (m machine) NetnsPath() string { return "/run/netns/" + m.Netns }

// nodeIP is the cluster-network address of node i (1-based).
func nodeIP(i int) netip.Addr {
	a := clusterSubnet.Addr().As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// netnsName names a namespace of cluster id; names stay short and unique per cluster.
func netnsName(id, machine string) string { return "al-" + id + "-" + machine }

// createSwitch creates the switch namespace and its bridge. The bridge carries the gateway
// address so machines have a default route (kube-proxy's local DNAT and any connect to an
// address outside the cluster need one); the switch forwards nothing.
func createSwitch(id string, res *resources) (string, error) {
	sw := netnsName(id, "switch")
	if err := ipCmd("netns", "add", sw); err != nil {
		return "", err
	}
	res.Netns = append(res.Netns, sw)
	prefix := netip.PrefixFrom(clusterGateway, clusterSubnet.Bits()).String()
	return sw, ipBatch(sw,
		"link set lo up",
		"link add br0 type bridge",
		"addr add "+prefix+" dev br0",
		"link set br0 up",
	)
}

// addMachine creates m's namespace and plugs it into the switch: veth "eth0" in m, its peer
// "v-<name>" on the bridge.
func addMachine(sw string, m machine, res *resources) error {
	if err := ipCmd("netns", "add", m.Netns); err != nil {
		return err
	}
	res.Netns = append(res.Netns, m.Netns)
	port := "v-" + m.Name
	if len(port) > 15 {
		return fmt.Errorf("machine name %q too long for an interface name", m.Name)
	}
	// Created inside the switch namespace, with the eth0 end placed straight into m's: no
	// interface ever appears in the host namespace.
	if err := ipBatch(sw,
		"link add "+port+" type veth peer name eth0 netns "+m.Netns,
		"link set "+port+" master br0",
		"link set "+port+" up",
	); err != nil {
		return err
	}
	return ipBatch(m.Netns,
		"link set lo up",
		"addr add "+netip.PrefixFrom(m.IP, clusterSubnet.Bits()).String()+" dev eth0",
		"link set eth0 up",
		"route add default via "+clusterGateway.String(),
	)
}

// routePods sends each node's pod CIDR to that node, from every machine (kindnet does the
// same on kind nodes).
func routePods(machines []machine, podCIDRs map[string]netip.Prefix, nodes []machine) error {
	for _, m := range machines {
		var cmds []string
		for _, n := range nodes {
			if n.Name == m.Name {
				continue
			}
			cidr, ok := podCIDRs[n.Name]
			if !ok {
				return fmt.Errorf("node %s has no podCIDR", n.Name)
			}
			cmds = append(cmds, "route replace "+cidr.String()+" via "+n.IP.String())
		}
		if err := ipBatch(m.Netns, cmds...); err != nil {
			return err
		}
	}
	return nil
}

// sysctlIn sets per-network-namespace sysctls (net.*) inside netns.
func sysctlIn(netns string, kv ...string) error {
	args := append([]string{"netns", "exec", netns, "sysctl", "-q", "-w"}, kv...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("sysctl %s in netns %s: %v: %s", strings.Join(kv, " "), netns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func ipCmd(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipBatch runs ip commands inside netns in one process.
func ipBatch(netns string, cmds ...string) error {
	if len(cmds) == 0 {
		return nil
	}
	cmd := exec.Command("ip", "-n", netns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("in netns %s: ip %s: %v: %s", netns, strings.Join(cmds, "; "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
