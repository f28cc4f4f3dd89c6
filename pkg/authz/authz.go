// Package authz is ztunnel's L4 authorization engine: it validates and indexes Istio's
// Authorization resources (istio.io/istio/pkg/workloadapi/security, the
// type.googleapis.com/istio.security.Authorization xDS type) and evaluates a connection against
// them with the semantics of istio/ztunnel's src/rbac.rs and DemandProxyState::assert_rbac.
//
// It is pure: no I/O, no logging, no global state. It is not an xDS client, knows nothing of
// Kubernetes and does no L7 (HTTP) matching. Translating AuthorizationPolicy and
// PeerAuthentication CRDs into Authorization resources is istiod-lite's job; enforcing the
// Decision (closing the connection, logging, metrics) is ztunnel's. Any package may import it.
package authz

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"istio.io/istio/pkg/workloadapi/security"
)

// DefaultRootNamespace is the mesh root namespace of a mesh that configures none (Istio's
// default MeshConfig.rootNamespace).
const DefaultRootNamespace = "istio-system"

// Reasons a Decision carries. Callers may branch on them (metrics, access logs).
const (
	// ReasonDenyMatched: an enforced DENY policy matched; Decision.Policy names it.
	ReasonDenyMatched = "matched a DENY policy"
	// ReasonAllowMatched: no DENY policy matched and an enforced ALLOW policy did;
	// Decision.Policy names it.
	ReasonAllowMatched = "matched an ALLOW policy"
	// ReasonNoAllowPolicy: no DENY policy matched and no enforced ALLOW policy applies to the
	// destination, so the connection is allowed (Istio's default allow).
	ReasonNoAllowPolicy = "no ALLOW policy applies"
	// ReasonNoAllowMatched: ALLOW policies apply to the destination but none matched.
	ReasonNoAllowMatched = "no ALLOW policy matched"
)

// Options configures New.
type Options struct {
	// RootNamespace is the mesh root namespace (MeshConfig.rootNamespace). istiod gives
	// Scope GLOBAL only to policies of the root namespace, so New rejects a GLOBAL policy that
	// lives elsewhere: it means istiod-lite and ztunnel disagree on the root namespace.
	// If empty, DefaultRootNamespace is used.
	RootNamespace string
}

// Connection is what L4 policy sees of an inbound connection at the destination.
type Connection struct {
	// SourceIdentity is the peer's verified identity; the zero ID means plaintext or unknown,
	// which has no principal, namespace or service account.
	SourceIdentity identity.ID
	// SourceIP is the peer's address. IPv4-mapped IPv6 addresses are unmapped.
	SourceIP netip.Addr
	// DestinationIP and DestinationPort are the connection's original destination.
	DestinationIP   netip.Addr
	DestinationPort uint16
	// DestinationNamespace is the destination workload's namespace: it selects the NAMESPACE
	// scoped policies that apply.
	DestinationNamespace string
	// DestinationPolicies is the destination workload's AuthorizationPolicies
	// ("namespace/name" keys of the WORKLOAD_SELECTOR policies that select it). Keys of
	// policies not in the store are skipped, as ztunnel does while xDS catches up.
	DestinationPolicies []string
}

// Decision is the result of Evaluate.
type Decision struct {
	// Allowed reports whether the connection may proceed.
	Allowed bool
	// Policy is the "namespace/name" of the deciding policy: the matching DENY policy, or the
	// matching ALLOW policy; "" when no single policy decided (ReasonNoAllowPolicy,
	// ReasonNoAllowMatched).
	Policy string
	// Reason is one of the Reason constants.
	Reason string
	// DryRun lists the dry-run policies that, had each been enforced on its own, would have
	// changed Allowed; for logging only. Nil when there are none.
	DryRun []string
}

// Policies is an immutable, validated index of Authorization resources. It is safe for
// concurrent use; a new set of resources means a new Policies. A nil *Policies holds no policies.
type Policies struct {
	byKey       map[string]*policy
	global      []*policy
	byNamespace map[string][]*policy
	hasDryRun   bool
}

// policy is an Authorization compiled for evaluation: rules (Istio's Group) are ORed, a
// rule's clauses (Istio's Rules) are ANDed, a clause's matches are ORed.
type policy struct {
	key       string
	namespace string
	scope     security.Scope
	deny      bool
	dryRun    bool
	rules     [][][]match
}

// match is one security.Match. Within a field any entry may match; a not_ field matches when
// no entry does; all non-empty fields must match.
type match struct {
	empty                               bool
	namespaces, notNamespaces           []stringMatch
	principals, notPrincipals           []stringMatch
	serviceAccounts, notServiceAccounts []saMatch
	sourceIPs, notSourceIPs             []netip.Prefix
	destinationIPs, notDestinationIPs   []netip.Prefix
	destinationPorts, notDestPorts      []uint16
}

type stringKind uint8

const (
	exactMatch stringKind = iota
	prefixMatch
	suffixMatch
	presenceMatch
)

type stringMatch struct {
	kind  stringKind
	value string
}

type saMatch struct{ namespace, serviceAccount string }

// New validates auths and indexes them by key ("namespace/name") and scope. It fails, naming
// the policy, on anything ztunnel could not evaluate safely: a nil resource or element, an
// empty name, a duplicate key, an unknown scope or action, a string match without a type,
// an address that is not 4 or 16 bytes or whose prefix length exceeds it, a port above
// 65535, or a GLOBAL policy outside the root namespace. Callers NACK the update on error.
func New(auths []*security.Authorization, opts Options) (*Policies, error) {
	root := opts.RootNamespace
	if root == "" {
		root = DefaultRootNamespace
	}
	p := &Policies{
		byKey:       make(map[string]*policy, len(auths)),
		byNamespace: make(map[string][]*policy),
	}
	for i, a := range auths {
		if a == nil {
			return nil, fmt.Errorf("authorization %d: nil resource", i)
		}
		key := a.GetNamespace() + "/" + a.GetName()
		pol, err := compile(a, key, root)
		if err != nil {
			return nil, fmt.Errorf("authorization %q: %w", key, err)
		}
		if _, dup := p.byKey[key]; dup {
			return nil, fmt.Errorf("authorization %q: duplicate key", key)
		}
		p.byKey[key] = pol
		p.hasDryRun = p.hasDryRun || pol.dryRun
		switch pol.scope {
		case security.Scope_GLOBAL:
			p.global = append(p.global, pol)
		case security.Scope_NAMESPACE:
			p.byNamespace[pol.namespace] = append(p.byNamespace[pol.namespace], pol)
		}
	}
	return p, nil
}

// Len returns the number of policies.
func (p *Policies) Len() int {
	if p == nil {
		return 0
	}
	return len(p.byKey)
}

// Has reports whether the store holds the policy with key "namespace/name".
func (p *Policies) Has(key string) bool {
	if p == nil {
		return false
	}
	_, ok := p.byKey[key]
	return ok
}

func compile(a *security.Authorization, key, root string) (*policy, error) {
	if a.GetName() == "" {
		return nil, fmt.Errorf("empty name")
	}
	switch a.GetScope() {
	case security.Scope_GLOBAL:
		if a.GetNamespace() != root {
			return nil, fmt.Errorf("scope GLOBAL outside the root namespace %q (hint: do istiod-lite and ztunnel agree on the mesh root namespace?)", root)
		}
	case security.Scope_NAMESPACE, security.Scope_WORKLOAD_SELECTOR:
	default:
		return nil, fmt.Errorf("unknown scope %d", int32(a.GetScope()))
	}
	var deny bool
	switch a.GetAction() {
	case security.Action_ALLOW:
	case security.Action_DENY:
		deny = true
	default:
		return nil, fmt.Errorf("unknown action %d", int32(a.GetAction()))
	}
	pol := &policy{
		key:       key,
		namespace: a.GetNamespace(),
		scope:     a.GetScope(),
		deny:      deny,
		dryRun:    a.GetDryRun(),
		rules:     make([][][]match, 0, len(a.GetGroups())),
	}
	for gi, g := range a.GetGroups() {
		if g == nil {
			return nil, fmt.Errorf("rule %d: nil", gi)
		}
		clauses := make([][]match, 0, len(g.GetRules()))
		for ci, r := range g.GetRules() {
			if r == nil {
				return nil, fmt.Errorf("rule %d clause %d: nil", gi, ci)
			}
			ms := make([]match, 0, len(r.GetMatches()))
			for mi, m := range r.GetMatches() {
				cm, err := compileMatch(m)
				if err != nil {
					return nil, fmt.Errorf("rule %d clause %d match %d: %w", gi, ci, mi, err)
				}
				ms = append(ms, cm)
			}
			clauses = append(clauses, ms)
		}
		pol.rules = append(pol.rules, clauses)
	}
	return pol, nil
}

func compileMatch(m *security.Match) (match, error) {
	if m == nil {
		return match{}, fmt.Errorf("nil")
	}
	var (
		out match
		err error
	)
	strs := []struct {
		name string
		in   []*security.StringMatch
		out  *[]stringMatch
	}{
		{"namespaces", m.GetNamespaces(), &out.namespaces},
		{"not_namespaces", m.GetNotNamespaces(), &out.notNamespaces},
		{"principals", m.GetPrincipals(), &out.principals},
		{"not_principals", m.GetNotPrincipals(), &out.notPrincipals},
	}
	for _, s := range strs {
		if *s.out, err = compileStrings(s.in); err != nil {
			return match{}, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if out.serviceAccounts, err = compileSAs(m.GetServiceAccounts()); err != nil {
		return match{}, fmt.Errorf("service_accounts: %w", err)
	}
	if out.notServiceAccounts, err = compileSAs(m.GetNotServiceAccounts()); err != nil {
		return match{}, fmt.Errorf("not_service_accounts: %w", err)
	}
	ips := []struct {
		name string
		in   []*security.Address
		out  *[]netip.Prefix
	}{
		{"source_ips", m.GetSourceIps(), &out.sourceIPs},
		{"not_source_ips", m.GetNotSourceIps(), &out.notSourceIPs},
		{"destination_ips", m.GetDestinationIps(), &out.destinationIPs},
		{"not_destination_ips", m.GetNotDestinationIps(), &out.notDestinationIPs},
	}
	for _, s := range ips {
		if *s.out, err = compilePrefixes(s.in); err != nil {
			return match{}, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if out.destinationPorts, err = compilePorts(m.GetDestinationPorts()); err != nil {
		return match{}, fmt.Errorf("destination_ports: %w", err)
	}
	if out.notDestPorts, err = compilePorts(m.GetNotDestinationPorts()); err != nil {
		return match{}, fmt.Errorf("not_destination_ports: %w", err)
	}
	out.empty = len(out.namespaces)+len(out.notNamespaces)+len(out.principals)+len(out.notPrincipals)+
		len(out.serviceAccounts)+len(out.notServiceAccounts)+len(out.sourceIPs)+len(out.notSourceIPs)+
		len(out.destinationIPs)+len(out.notDestinationIPs)+len(out.destinationPorts)+len(out.notDestPorts) == 0
	return out, nil
}

// compileStrings rejects a StringMatch without a match type. ztunnel silently drops such
// entries, which turns a positive list that held only them into "match anything"; rejecting
// is the safe reading.
func compileStrings(in []*security.StringMatch) ([]stringMatch, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]stringMatch, 0, len(in))
	for i, s := range in {
		switch t := s.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			out = append(out, stringMatch{exactMatch, t.Exact})
		case *security.StringMatch_Prefix:
			out = append(out, stringMatch{prefixMatch, t.Prefix})
		case *security.StringMatch_Suffix:
			out = append(out, stringMatch{suffixMatch, t.Suffix})
		case *security.StringMatch_Presence:
			out = append(out, stringMatch{kind: presenceMatch})
		default:
			return nil, fmt.Errorf("entry %d: no match type", i)
		}
	}
	return out, nil
}

func compileSAs(in []*security.ServiceAccountMatch) ([]saMatch, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]saMatch, 0, len(in))
	for i, s := range in {
		if s == nil {
			return nil, fmt.Errorf("entry %d: nil", i)
		}
		out = append(out, saMatch{s.GetNamespace(), s.GetServiceAccount()})
	}
	return out, nil
}

// compilePrefixes parses Address{bytes, length} as ztunnel does (4 or 16 bytes, length at
// most the address's bits), masks host bits, and unmaps IPv4-mapped IPv6 prefixes of length
// 96 or more into IPv4 prefixes so they compare with the (unmapped) connection addresses.
// ztunnel drops unparsable entries; rejecting them is the safe reading (a positive list left
// empty would match anything).
func compilePrefixes(in []*security.Address) ([]netip.Prefix, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(in))
	for i, a := range in {
		addr, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			return nil, fmt.Errorf("entry %d: address of %d bytes, want 4 or 16", i, len(a.GetAddress()))
		}
		bits := a.GetLength()
		if bits > uint32(addr.BitLen()) {
			return nil, fmt.Errorf("entry %d: prefix length %d exceeds %d bits of %s", i, bits, addr.BitLen(), addr)
		}
		if addr.Is4In6() && bits >= 96 {
			addr, bits = addr.Unmap(), bits-96
		}
		pfx, err := addr.Prefix(int(bits))
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		out = append(out, pfx)
	}
	return out, nil
}

// compilePorts rejects ports above 65535 (ztunnel truncates them to 16 bits, which would
// match an unrelated port).
func compilePorts(in []uint32) ([]uint16, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]uint16, 0, len(in))
	for i, p := range in {
		if p > 65535 {
			return nil, fmt.Errorf("entry %d: port %d out of range", i, p)
		}
		out = append(out, uint16(p))
	}
	return out, nil
}

// input is a Connection prepared once for matching.
type input struct {
	hasID     bool
	principal string // the SPIFFE ID without "spiffe://"
	namespace string
	sa        string
	src, dst  netip.Addr
	port      uint16
}

func newInput(c *Connection) input {
	// Zones are dropped: netip.Prefix.Contains never matches a zoned address.
	in := input{src: c.SourceIP.Unmap().WithZone(""), dst: c.DestinationIP.Unmap().WithZone(""), port: c.DestinationPort}
	if !c.SourceIdentity.IsZero() {
		in.hasID = true
		in.principal = c.SourceIdentity.Principal()
		in.namespace = c.SourceIdentity.Namespace()
		in.sa = c.SourceIdentity.ServiceAccount()
	}
	return in
}

// cursor walks the policies that apply to a destination without allocating: global, then
// the destination namespace's, then the workload's listed selector policies.
type cursor struct {
	p     *Policies
	lists [2][]*policy
	sel   []string
	ns    string
	li, i int
}

func (p *Policies) cursor(c *Connection) cursor {
	return cursor{p: p, lists: [2][]*policy{p.global, p.byNamespace[c.DestinationNamespace]}, sel: c.DestinationPolicies, ns: c.DestinationNamespace}
}

func (c *cursor) next() *policy {
	for c.li < len(c.lists) {
		if c.i < len(c.lists[c.li]) {
			c.i++
			return c.lists[c.li][c.i-1]
		}
		c.li, c.i = c.li+1, 0
	}
	for c.i < len(c.sel) {
		pol := c.p.byKey[c.sel[c.i]]
		c.i++
		// ztunnel looks listed keys up whatever their scope; skip the ones already visited
		// through the global and namespace lists so none is evaluated (or reported) twice.
		if pol == nil || pol.scope == security.Scope_GLOBAL || (pol.scope == security.Scope_NAMESPACE && pol.namespace == c.ns) {
			continue
		}
		return pol
	}
	return nil
}

// Evaluate decides whether c may proceed, as ztunnel's assert_rbac does: the applicable
// policies are the GLOBAL ones, the NAMESPACE ones of the destination namespace and the
// listed WORKLOAD_SELECTOR ones. If any DENY policy matches, deny. Otherwise, if no ALLOW
// policy applies, allow; if one does, allow only if at least one matches. Dry-run policies
// are evaluated but never change the result (see Decision.DryRun). Evaluate does not
// allocate unless it reports dry-run policies.
func (p *Policies) Evaluate(c Connection) Decision {
	if p == nil {
		return Decision{Allowed: true, Reason: ReasonNoAllowPolicy}
	}
	in := newInput(&c)
	d := p.enforce(&c, &in)
	if p.hasDryRun {
		d.DryRun = p.dryRun(&c, &in, d)
	}
	return d
}

func (p *Policies) enforce(c *Connection, in *input) Decision {
	hasAllow := false
	cur := p.cursor(c)
	for pol := cur.next(); pol != nil; pol = cur.next() {
		switch {
		case pol.dryRun:
		case !pol.deny:
			hasAllow = true
		case pol.matches(in):
			return Decision{Allowed: false, Policy: pol.key, Reason: ReasonDenyMatched}
		}
	}
	if !hasAllow {
		return Decision{Allowed: true, Reason: ReasonNoAllowPolicy}
	}
	cur = p.cursor(c)
	for pol := cur.next(); pol != nil; pol = cur.next() {
		if !pol.dryRun && !pol.deny && pol.matches(in) {
			return Decision{Allowed: true, Policy: pol.key, Reason: ReasonAllowMatched}
		}
	}
	return Decision{Allowed: false, Reason: ReasonNoAllowMatched}
}

// dryRun returns the dry-run policies that, enforced on their own next to the enforced
// ones, would flip d: a matching DENY when d allows; an ALLOW that matches when d denies for
// lack of a matching ALLOW; an ALLOW that does not match when d allows only because no ALLOW
// policy applies. A dry-run policy cannot flip a DENY decision or an ALLOW match.
func (p *Policies) dryRun(c *Connection, in *input, d Decision) []string {
	var out []string
	cur := p.cursor(c)
	for pol := cur.next(); pol != nil; pol = cur.next() {
		if !pol.dryRun {
			continue
		}
		var flips bool
		switch {
		case pol.deny:
			flips = d.Allowed && pol.matches(in)
		case d.Reason == ReasonNoAllowMatched:
			flips = pol.matches(in)
		case d.Reason == ReasonNoAllowPolicy:
			flips = !pol.matches(in)
		}
		if flips {
			out = append(out, pol.key)
		}
	}
	return out
}

// matches follows ztunnel's Authorization::matches: a policy without rules matches nothing;
// a rule without clauses, and a clause without matches, match everything; a match with no
// field set is skipped (it never matches).
func (pol *policy) matches(in *input) bool {
	for _, rule := range pol.rules {
		if ruleMatches(rule, in) {
			return true
		}
	}
	return false
}

func ruleMatches(rule [][]match, in *input) bool {
	for _, clause := range rule {
		if len(clause) == 0 {
			continue
		}
		ok := false
		for i := range clause {
			if !clause[i].empty && clause[i].matches(in) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func (m *match) matches(in *input) bool {
	return prefixes(m.destinationIPs, m.notDestinationIPs, in.dst) &&
		prefixes(m.sourceIPs, m.notSourceIPs, in.src) &&
		ports(m.destinationPorts, m.notDestPorts, in.port) &&
		serviceAccounts(m.serviceAccounts, m.notServiceAccounts, in) &&
		principals(m.principals, m.notPrincipals, in) &&
		namespaces(m.namespaces, m.notNamespaces, in.namespace)
}

// Each field: an empty positive list matches; otherwise one entry must match. An empty
// negative list matches; otherwise no entry may match.

func prefixes(pos, neg []netip.Prefix, a netip.Addr) bool {
	return (len(pos) == 0 || anyPrefix(pos, a)) && (len(neg) == 0 || !anyPrefix(neg, a))
}

func anyPrefix(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func ports(pos, neg []uint16, port uint16) bool {
	return (len(pos) == 0 || anyPort(pos, port)) && (len(neg) == 0 || !anyPort(neg, port))
}

func anyPort(ps []uint16, port uint16) bool {
	for _, p := range ps {
		if p == port {
			return true
		}
	}
	return false
}

// serviceAccounts compares namespace and service account exactly, as ztunnel does: an empty
// namespace in the match is not a wildcard (istiod always fills it, with the policy's
// namespace for a bare "sa"). A plaintext source has no service account, so a positive list
// fails and a negative list matches.
func serviceAccounts(pos, neg []saMatch, in *input) bool {
	return (len(pos) == 0 || anySA(pos, in)) && (len(neg) == 0 || !anySA(neg, in))
}

func anySA(ss []saMatch, in *input) bool {
	if !in.hasID {
		return false
	}
	for _, s := range ss {
		if s.namespace == in.namespace && s.serviceAccount == in.sa {
			return true
		}
	}
	return false
}

// principals matches against the identity without "spiffe://". A plaintext source has no
// principal and, as in ztunnel, no StringMatch matches it — not even an empty exact or
// prefix — so a positive list fails and a negative list matches: DENY notPrincipals
// [presence] denies plaintext (PeerAuthentication STRICT).
func principals(pos, neg []stringMatch, in *input) bool {
	return (len(pos) == 0 || anyPrincipal(pos, in)) && (len(neg) == 0 || !anyPrincipal(neg, in))
}

func anyPrincipal(ss []stringMatch, in *input) bool {
	if !in.hasID {
		return false
	}
	return anyString(ss, in.principal)
}

// namespaces matches against the source identity's namespace, "" for plaintext. As in
// ztunnel, "" is matched like any other value: presence fails, but an exact "" or an empty
// prefix or suffix matches it. istiod never emits those for namespaces.
func namespaces(pos, neg []stringMatch, ns string) bool {
	return (len(pos) == 0 || anyString(pos, ns)) && (len(neg) == 0 || !anyString(neg, ns))
}

func anyString(ss []stringMatch, v string) bool {
	for _, s := range ss {
		if s.matches(v) {
			return true
		}
	}
	return false
}

func (s stringMatch) matches(v string) bool {
	switch s.kind {
	case exactMatch:
		return v == s.value
	case prefixMatch:
		return strings.HasPrefix(v, s.value)
	case suffixMatch:
		return strings.HasSuffix(v, s.value)
	default: // presenceMatch
		return v != ""
	}
}
