package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

// hostSysctls are the settings a kubelet, kube-proxy, containerd or CNI plugin would change
// if it ran in the host's namespaces: the machine-wide ones and the host netns's own.
var hostSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
	"net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding", "net/ipv4/conf/all/route_localnet",
	"net/ipv4/conf/all/rp_filter", "net/ipv4/ip_unprivileged_port_start", "net/ipv4/ping_group_range",
	"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
	"net/netfilter/nf_conntrack_max", "net/ipv6/conf/all/forwarding",
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// HostNetworkState describes the host's network namespace and machine-wide settings: links,
// addresses, routes and rules of every table, iptables and nftables rules, and the sysctls a
// node's components would touch. Two descriptions differ exactly when one of those changed,
// which is how tests prove the local cluster leaves the host alone.
func HostNetworkState() (string, error) {
	var b strings.Builder
	cmds := [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
		{"ip", "rule", "show"},
		{"ip", "-6", "rule", "show"},
		{"iptables-save"},
		{"ip6tables-save"},
		{"nft", "list", "ruleset"},
	}
	for _, c := range cmds {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
		fmt.Fprintf(&b, "$ %s\n", strings.Join(c, " "))
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "#") { // iptables-save's timestamps
				continue
			}
			b.WriteString(counters.ReplaceAllString(l, "[n:n]") + "\n")
		}
	}
	b.WriteString("$ sysctl\n")
	for _, k := range hostSysctls {
		v, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			v = []byte("(" + err.Error() + ")")
		}
		fmt.Fprintf(&b, "%s = %s\n", strings.ReplaceAll(k, "/", "."), strings.TrimSpace(string(v)))
	}
	return b.String(), nil
}
