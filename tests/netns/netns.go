// Package netns builds throwaway network topologies for privileged tests: named network
// namespaces standing for nodes and pods, joined by veth pairs, with addresses and routes,
// all removed when the test ends. Test traffic stays inside these namespaces.
//
// It drives iproute2 (`ip`), as an operator would, and can run Go code or commands inside a
// namespace. It is not a CNI: the mesh's own CNI tests use the real plugin chain.
package netns

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/netnsdial"
)

// Topology owns the namespaces a test created.
type Topology struct {
	t      testing.TB
	prefix string
	names  []string
}

var seq atomic.Int64

// New returns an empty topology; it skips (or, in CI, fails) t without root and
// CAP_NET_ADMIN/CAP_SYS_ADMIN.
func New(t testing.TB) *Topology {
	t.Helper()
	testenv.RequirePrivileged(t, testenv.CapNetAdmin, testenv.CapSysAdmin)
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipOrFail(t, "iproute2 (ip) is not installed: run make setup")
	}
	tp := &Topology{t: t, prefix: fmt.Sprintf("al%d-%d-", os.Getpid(), seq.Add(1))}
	t.Cleanup(tp.remove)
	return tp
}

// Namespace creates a namespace with loopback up and returns its full name.
func (tp *Topology) Namespace(name string) string {
	tp.t.Helper()
	full := tp.prefix + name
	tp.ip("netns", "add", full)
	tp.names = append(tp.names, full)
	tp.ip("-n", full, "link", "set", "lo", "up")
	return full
}

// Link joins namespaces a and b with a veth pair, naming the ends ifA and ifB (at most 15
// characters) and giving them the CIDR addresses addrA and addrB ("" for none).
func (tp *Topology) Link(a, ifA, addrA, b, ifB, addrB string) {
	tp.t.Helper()
	tp.ip("link", "add", ifA, "netns", a, "type", "veth", "peer", "name", ifB, "netns", b)
	for _, end := range [][3]string{{a, ifA, addrA}, {b, ifB, addrB}} {
		if end[2] != "" {
			tp.ip("-n", end[0], "addr", "add", end[2], "dev", end[1])
		}
		tp.ip("-n", end[0], "link", "set", end[1], "up")
	}
}

// Route adds a route in ns: "default" or a CIDR, via a gateway address.
func (tp *Topology) Route(ns, dst, via string) {
	tp.t.Helper()
	tp.ip("-n", ns, "route", "add", dst, "via", via)
}

// Forwarding enables IPv4 (and IPv6) forwarding in ns, making it a router (a node).
func (tp *Topology) Forwarding(ns string) {
	tp.t.Helper()
	tp.Run(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
}

// Run runs a command inside ns and fails the test if it fails.
func (tp *Topology) Run(ns string, name string, args ...string) string {
	tp.t.Helper()
	out, err := tp.Command(ns, name, args...).CombinedOutput()
	if err != nil {
		tp.t.Fatalf("in %s: %s %s: %v\n%s", ns, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Command returns a command that runs inside ns (through `ip netns exec`).
func (tp *Topology) Command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Do runs f on an OS thread switched into ns (see [netnsdial.Do]).
func (tp *Topology) Do(ns string, f func() error) error { return netnsdial.Do("/var/run/netns/"+ns, f) }

// DialContext dials from inside ns (see [netnsdial.Dialer]).
func (tp *Topology) DialContext(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnsdial.Dialer("/var/run/netns/" + ns)
}

// HTTPClient returns a client whose connections are made inside ns.
func (tp *Topology) HTTPClient(ns string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: tp.DialContext(ns), DisableKeepAlives: true}}
}

func (tp *Topology) ip(args ...string) {
	tp.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tp.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// remove deletes every namespace (their veths go with them).
func (tp *Topology) remove() {
	for i := len(tp.names) - 1; i >= 0; i-- {
		if out, err := exec.Command("ip", "netns", "del", tp.names[i]).CombinedOutput(); err != nil {
			tp.t.Errorf("removing netns %s: %v\n%s", tp.names[i], err, out)
		}
	}
}
