// Package redirect installs, checks and removes the in-pod eBPF redirection of one pod: an
// sk_lookup program (bpf/redirect.c) attached to the pod's network namespace, which steers
// the pod's TCP into ztunnel's in-pod listeners, plus the policy-routing rules in that
// netns that make the pod's outbound TCP locally deliverable so the program sees it.
//
// What is captured (IPv4 TCP only; IPv6 and UDP pass untouched for now):
//   - inbound: TCP arriving on any interface but loopback, to any port but 15008 (HBONE),
//     goes to ztunnel's :15006 listener (socket map slot [capture.SlotInbound]);
//   - outbound: the pod's own TCP to anything but 127.0.0.0/8 and the pod's own addresses
//     goes to ztunnel's :15001 listener (slot [capture.SlotOutbound]).
//
// ztunnel's sockets carry [capture.Mark] and skip the capture rule. An empty slot drops
// captured traffic (fail closed) rather than let it reach the application unproxied.
// Consequently every unmarked TCP socket in the pod talks only to loopback: a pod socket
// answering traffic that is not steered (anything but the probe sources) would have its
// replies delivered locally. The rule also makes the kernel's source validation of inbound
// TCP see a local route, so Install sets accept_local (and loosens a strict rp_filter) in
// the pod netns; see [CapturePriority].
//
// Kubelet probes: TCP from a [Config.ProbeSources] address is not steered, and a rule of
// higher priority routes the pod's replies to those addresses through the main table. The
// trade-off: every TCP connection from a probe source (in practice the node's address, so
// also host-network pods and anything the node SNATs) reaches the pod unproxied and
// unauthorized, and the pod's own connections to it leave uncaptured.
//
// State lives in bpffs pins, one directory per pod chosen by the caller (for example
// <bpffs>/ambient-lite/<pod uid>): the link attaching the program and the socket map. The
// node agent finds them after its own restart with [List] and [Installed].
//
// It is not the CNI plugin or the node agent: it knows nothing of Kubernetes, and it does
// not open ztunnel's listeners (that is pkg/capture's side). Only the CNI imports it.
package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/ambient-lite/ambient-lite/pkg/capture"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Table is the routing table, in the pod netns, holding the single route
// `local 0.0.0.0/0 dev lo src <pod IP>` that makes the pod's outbound TCP locally
// deliverable, so the program sees it arrive on loopback. Istio's in-pod rules use the
// same number.
const Table = 100

// Rule priorities in the pod netns, all before the main table's (32766):
//
//	32760: fwmark 0x539/0xfff lookup main       ztunnel's own sockets route normally
//	32761: to <probe source> lookup main        replies to kubelet probes leave the pod
//	32762: ipproto tcp lookup 100               all other TCP is delivered locally
//
// The brief's single `not fwmark 0x539/0xfff ipproto tcp lookup 100` cannot be used: a
// rule's `not` inverts the whole selector, so it would also match every non-TCP packet
// (UDP and ICMP would be delivered locally and lost).
const (
	// MarkPriority is the priority of `fwmark Mark/MarkMask lookup main`.
	MarkPriority = 32760
	// ProbePriority is the priority of the `to <probe source> lookup main` rules, which keep
	// the pod's replies to kubelet probes out of Table.
	ProbePriority = 32761
	// CapturePriority is the priority of `ipproto tcp lookup Table`.
	CapturePriority = 32762
)

// HBONEPort is the inbound port the program never steers: ztunnel's HBONE listener.
const HBONEPort = 15008

// MaxAddrs is the most addresses (pod IPs plus probe sources) a Config may hold: the size
// of the program's address map.
const MaxAddrs = 64

// Names of the pins inside a pod's pin directory.
const (
	// LinkPin is the pinned sk_lookup link; its presence means "installed".
	LinkPin = "link"
	// SocketMapPin is the pinned socket map ([capture.SocketMapName]), kept across
	// reinstalls so ztunnel's registered listeners survive an upgrade of the program.
	SocketMapPin = capture.SocketMapName
)

// Flags of an address in the program's address map (bpf/redirect.c).
const (
	flagPodIP       = 1
	flagProbeSource = 2
)

// Config is what the program needs to know about one pod.
type Config struct {
	// PodIPs are the pod's own addresses (IPv4 and IPv6); at least one is required. The pod's
	// TCP to them is not captured, and the first IPv4 one is the source address of the
	// pod's captured outbound connections.
	PodIPs []netip.Addr
	// ProbeSources are the addresses kubelet probes come from as seen by the pod (usually
	// the node's address). TCP from them is not captured. If empty, probes are captured
	// like any other inbound traffic.
	ProbeSources []netip.Addr
}

// validate checks c and returns its addresses unmapped.
func (c Config) validate() (Config, error) {
	if len(c.PodIPs) == 0 {
		return c, errors.New("config: no pod IP (PodIPs is empty)")
	}
	if n := len(c.PodIPs) + len(c.ProbeSources); n > MaxAddrs {
		return c, fmt.Errorf("config: %d addresses, at most %d (pod IPs plus probe sources)", n, MaxAddrs)
	}
	var out Config
	seen := map[netip.Addr]string{}
	for _, l := range []struct {
		name string
		in   []netip.Addr
		out  *[]netip.Addr
	}{{"pod IP", c.PodIPs, &out.PodIPs}, {"probe source", c.ProbeSources, &out.ProbeSources}} {
		for _, a := range l.in {
			if !a.IsValid() {
				return c, fmt.Errorf("config: invalid (zero) %s", l.name)
			}
			a = a.Unmap()
			if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
				return c, fmt.Errorf("config: %s %s is unspecified, loopback or multicast", l.name, a)
			}
			if prev, dup := seen[a]; dup {
				return c, fmt.Errorf("config: %s %s is already given as a %s", l.name, a, prev)
			}
			seen[a] = l.name
			*l.out = append(*l.out, a)
		}
	}
	if !slices.ContainsFunc(out.PodIPs, netip.Addr.Is4) {
		return c, errors.New("config: no IPv4 pod IP; only IPv4 is captured so far")
	}
	return out, nil
}

// Install installs the redirection of the pod whose network namespace is at netnsPath
// (for example /var/run/netns/cni-…), pinning its state in pinDir, a directory on a bpffs
// mount that belongs to this pod alone. Installing again replaces the program and the
// rules in place: the link is updated atomically, the socket map (and so ztunnel's
// registered listeners) is kept, and no program or rule is duplicated. If a fresh install
// fails half way, what it did is undone.
func Install(netnsPath, pinDir string, cfg Config) (err error) {
	cfg, err = cfg.validate()
	if err != nil {
		return err
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	ino, err := inode(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo in netns %s: %w", netnsPath, err)
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return fmt.Errorf("creating pin directory: %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(pinDir, &fs); err != nil {
		return fmt.Errorf("pin directory %s: %w", pinDir, err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s is not on a bpffs mount (mount -t bpf bpf <dir>)", pinDir)
	}

	if err := inNetns(ns, relaxSourceCheck); err != nil {
		return fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	objs, err := load(pinDir, uint32(lo.Attrs().Index), cfg)
	if err != nil {
		return err
	}
	defer objs.Close()

	fresh, err := attach(int(ns), ino, filepath.Join(pinDir, LinkPin), objs.AmbientRedirect)
	if err != nil {
		if fresh {
			os.Remove(filepath.Join(pinDir, SocketMapPin))
		}
		return fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	if err := ensureRoutes(h, lo.Attrs().Index, cfg); err != nil {
		if fresh {
			Remove(netnsPath, pinDir)
		}
		return fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	return nil
}

// load loads the program with its address map filled from cfg, opening or creating the
// pinned socket map in pinDir.
func load(pinDir string, loIndex uint32, cfg Config) (*redirectObjects, error) {
	spec, err := loadRedirect()
	if err != nil {
		return nil, fmt.Errorf("loading the program spec: %w", err)
	}
	if err := spec.Variables[redirectVarLoIfindex].Set(loIndex); err != nil {
		return nil, fmt.Errorf("setting lo_ifindex: %w", err)
	}
	if err := spec.Variables[redirectVarHbonePort].Set(uint32(HBONEPort)); err != nil {
		return nil, fmt.Errorf("setting hbone_port: %w", err)
	}
	// Programs and maps only: assigning the variables would mmap .rodata, and a mapping
	// keeps the map alive until the garbage collector unmaps it, long after Remove.
	var loaded struct {
		redirectPrograms
		redirectMaps
	}
	if err := spec.LoadAndAssign(&loaded, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("loading the redirection program (needs CAP_BPF and CAP_NET_ADMIN): %w", err)
		}
		return nil, fmt.Errorf("loading the redirection program: %w", err)
	}
	objs := redirectObjects{redirectPrograms: loaded.redirectPrograms, redirectMaps: loaded.redirectMaps}
	flags := map[netip.Addr]uint32{}
	for _, a := range cfg.PodIPs {
		flags[a] |= flagPodIP
	}
	for _, a := range cfg.ProbeSources {
		flags[a] |= flagProbeSource
	}
	for a, f := range flags {
		if err := objs.AmbientConfig.Put(addrKey(a), f); err != nil {
			objs.Close()
			return nil, fmt.Errorf("storing address %s: %w", a, err)
		}
	}
	return &objs, nil
}

func addrKey(a netip.Addr) redirectAddrKey {
	k := redirectAddrKey{Family: unix.AF_INET6}
	var b [16]byte
	if a.Is4() {
		k.Family = unix.AF_INET
		v4 := a.As4()
		copy(b[:], v4[:])
	} else {
		b = a.As16()
	}
	// Addr holds the address in network byte order, as the program compares it.
	for i := range k.Addr {
		k.Addr[i] = binary.NativeEndian.Uint32(b[4*i : 4*i+4])
	}
	return k
}

// attach attaches prog to the netns with inode ino, pinned at pin: it updates the pinned
// link in place if it is attached to that netns, and otherwise attaches a new one. fresh
// reports whether a new link was made.
func attach(nsFD int, ino uint64, pin string, prog *ebpf.Program) (fresh bool, err error) {
	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		info, ierr := old.Info()
		if ierr == nil && info.NetNs() != nil && uint64(info.NetNs().NetnsInode) == ino {
			err := old.Update(prog)
			old.Close()
			if err != nil {
				return false, fmt.Errorf("replacing the program of link %s: %w", pin, err)
			}
			return false, nil
		}
		// A link of another (probably gone) netns: this pin directory was reused.
		old.Unpin()
		old.Close()
	case !errors.Is(err, os.ErrNotExist):
		return false, fmt.Errorf("opening pinned link %s: %w", pin, err)
	}
	l, err := link.AttachNetNs(nsFD, prog)
	if err != nil {
		return true, fmt.Errorf("attaching sk_lookup: %w", err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return true, fmt.Errorf("pinning the link at %s (is the directory on a bpffs mount?): %w", pin, err)
	}
	return true, nil
}

// Remove undoes [Install]: it removes the rules and the route from the netns at netnsPath
// if it still exists, detaches the program and removes pinDir. Removing what is not
// installed is not an error. netnsPath may be "" when the netns is gone (its rules went with
// it); if it still exists, its rules then stay, and its outbound TCP is refused.
func Remove(netnsPath, pinDir string) error {
	var errs []error
	if netnsPath != "" {
		if err := removeRoutes(netnsPath); err != nil {
			errs = append(errs, err)
		}
	}
	pin := filepath.Join(pinDir, LinkPin)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", pin, err))
		}
		l.Close() // the last reference: this detaches the program
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("opening pinned link %s: %w", pin, err))
	}
	for _, name := range []string{SocketMapPin, ""} {
		p := filepath.Join(pinDir, name)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func removeRoutes(netnsPath string) error {
	ns, err := netns.GetFromPath(netnsPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the netns is gone, and its rules with it
	}
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	if err := syncRules(h, nil); err != nil {
		return fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("netns %s: listing routes of table %d: %w", netnsPath, Table, err)
	}
	for _, r := range routes {
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("netns %s: deleting route %s: %w", netnsPath, r, err)
		}
	}
	return nil
}

// NetnsInode returns the inode of the network namespace the redirection pinned in pinDir is
// attached to, to find its netns file when the caller no longer knows it; 0 if the netns is
// gone. It wraps os.ErrNotExist when nothing is pinned there.
func NetnsInode(pinDir string) (uint64, error) {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, LinkPin), nil)
	if err != nil {
		return 0, fmt.Errorf("opening pinned link in %s: %w", pinDir, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("reading pinned link in %s: %w", pinDir, err)
	}
	if info.NetNs() == nil {
		return 0, nil
	}
	return uint64(info.NetNs().NetnsInode), nil
}

// Installed reports whether pinDir holds an installed redirection (its pinned link).
func Installed(pinDir string) (bool, error) {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, LinkPin), nil)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening pinned link in %s: %w", pinDir, err)
	}
	l.Close()
	return true, nil
}

// List returns the names of the pin directories under pinRoot (pod keys, such as pod
// uids) holding an installed redirection, sorted; pinDir is filepath.Join(pinRoot, name).
// A missing pinRoot holds none.
func List(pinRoot string) ([]string, error) {
	ents, err := os.ReadDir(pinRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing pins: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(pinRoot, e.Name(), LinkPin)); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Check verifies (for CNI CHECK) that the redirection pinned in pinDir is attached to the
// netns at netnsPath and that its routing rules and route are in place.
func Check(netnsPath, pinDir string) error {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	ino, err := inode(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	pin := filepath.Join(pinDir, LinkPin)
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return fmt.Errorf("redirection not installed: opening pinned link %s: %w", pin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("reading link %s: %w", pin, err)
	}
	if info.NetNs() == nil || uint64(info.NetNs().NetnsInode) != ino {
		return fmt.Errorf("link %s is not attached to netns %s", pin, netnsPath)
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(ns), Attach: ebpf.AttachSkLookup})
	if err != nil {
		return fmt.Errorf("querying sk_lookup programs of netns %s: %w", netnsPath, err)
	}
	if !slices.ContainsFunc(res.Programs, func(p link.AttachedProgram) bool { return p.ID == info.Program }) {
		return fmt.Errorf("program %d of link %s is not attached to netns %s", info.Program, pin, netnsPath)
	}
	if _, err := os.Stat(filepath.Join(pinDir, SocketMapPin)); err != nil {
		return fmt.Errorf("socket map pin: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	rules, err := ourRules(h)
	if err != nil {
		return fmt.Errorf("netns %s: %w", netnsPath, err)
	}
	for _, w := range []*netlink.Rule{markRule(), captureRule()} {
		if !slices.ContainsFunc(rules, func(r netlink.Rule) bool { return sameRule(r, w) }) {
			return fmt.Errorf("netns %s: rule %s missing", netnsPath, w)
		}
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("netns %s: listing routes of table %d: %w", netnsPath, Table, err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Type == unix.RTN_LOCAL }) {
		return fmt.Errorf("netns %s: local route of table %d missing", netnsPath, Table)
	}
	return nil
}

// inode returns the inode number identifying a network namespace.
func inode(ns netns.NsHandle) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return 0, fmt.Errorf("stat: %w", err)
	}
	return st.Ino, nil
}

// markRule is `fwmark Mark/MarkMask lookup main`.
func markRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.Priority = MarkPriority
	r.Table = unix.RT_TABLE_MAIN
	r.Mark = capture.Mark
	mask := uint32(capture.MarkMask)
	r.Mask = &mask
	return r
}

// captureRule is `ipproto tcp lookup Table`.
func captureRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.Priority = CapturePriority
	r.Table = Table
	r.IPProto = unix.IPPROTO_TCP
	return r
}

// probeRule is `to <src>/32 lookup main`.
func probeRule(src netip.Addr) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.Priority = ProbePriority
	r.Table = unix.RT_TABLE_MAIN
	r.Dst = &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(32, 32)}
	return r
}

// ensureRoutes makes the netns's rules and Table route match cfg.
func ensureRoutes(h *netlink.Handle, loIndex int, cfg Config) error {
	want := []*netlink.Rule{markRule(), captureRule()}
	for _, a := range cfg.ProbeSources {
		if a.Is4() { // IPv6 TCP is not captured, so its replies need no exemption yet
			want = append(want, probeRule(a))
		}
	}
	if err := syncRules(h, want); err != nil {
		return err
	}
	var src net.IP
	if i := slices.IndexFunc(cfg.PodIPs, netip.Addr.Is4); i >= 0 {
		src = cfg.PodIPs[i].AsSlice() // else a local route's source would be the destination
	}
	r := &netlink.Route{
		Table: Table, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, LinkIndex: loIndex,
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Src: src,
	}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("adding route local 0.0.0.0/0 dev lo src %s table %d (is the pod IP assigned in the netns?): %w", src, Table, err)
	}
	return nil
}

// ourRules lists the IPv4 rules at this package's priorities.
func ourRules(h *netlink.Handle) ([]netlink.Rule, error) {
	all, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	return slices.DeleteFunc(all, func(r netlink.Rule) bool {
		return r.Priority != MarkPriority && r.Priority != ProbePriority && r.Priority != CapturePriority
	}), nil
}

// syncRules deletes the rules at this package's priorities that are not in want, and adds
// those of want that are missing.
func syncRules(h *netlink.Handle, want []*netlink.Rule) error {
	have, err := ourRules(h)
	if err != nil {
		return err
	}
	for _, r := range have {
		if slices.ContainsFunc(want, func(w *netlink.Rule) bool { return sameRule(r, w) }) {
			continue
		}
		if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting rule %s: %w", r, err)
		}
	}
	for _, w := range want {
		if slices.ContainsFunc(have, func(r netlink.Rule) bool { return sameRule(r, w) }) {
			continue
		}
		if err := h.RuleAdd(w); err != nil {
			return fmt.Errorf("adding rule %s: %w", w, err)
		}
	}
	return nil
}

func sameRule(r netlink.Rule, w *netlink.Rule) bool {
	mask := func(m *uint32) uint32 {
		if m == nil {
			return 0
		}
		return *m
	}
	dst := func(n *net.IPNet) string {
		if n == nil {
			return ""
		}
		return n.String()
	}
	return r.Priority == w.Priority && r.Table == w.Table && r.Mark == w.Mark && mask(r.Mask) == mask(w.Mask) &&
		r.Invert == w.Invert && r.IPProto == w.IPProto && dst(r.Dst) == dst(w.Dst) && r.Src == nil
}

// relaxSourceCheck sets the IPv4 sysctls, in the calling thread's netns, that the capture
// rule needs: the kernel validates an incoming packet's source with a reverse route lookup
// that matches `ipproto tcp lookup Table` and finds a local route, so it needs accept_local
// (else every inbound TCP packet is a martian), and strict rp_filter (1) must become loose
// (2), as the reverse route's device is lo. Remove leaves both in place: they only admit
// packets whose source is a local address.
func relaxSourceCheck() error {
	const dir = "/proc/sys/net/ipv4/conf/"
	if err := os.WriteFile(dir+"all/accept_local", []byte("1"), 0); err != nil {
		return fmt.Errorf("setting accept_local: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading rp_filter: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(dir + e.Name() + "/rp_filter")
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			if err := os.WriteFile(dir+"all/rp_filter", []byte("2"), 0); err != nil {
				return fmt.Errorf("setting rp_filter to loose: %w", err)
			}
			break
		}
	}
	return nil
}

// inNetns runs f on an OS thread switched into ns. The thread is discarded afterwards
// rather than switched back, so no other goroutine ever runs in ns by accident.
func inNetns(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("entering netns: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
