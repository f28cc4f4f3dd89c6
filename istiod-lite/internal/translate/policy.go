package translate

// Security policy translation: AuthorizationPolicy and PeerAuthentication CRDs into Istio's
// istio.security.Authorization, as istiod's ambient index does
// (pilot/pkg/serviceregistry/ambient/authorization.go and policies.go), with one deliberate
// difference, L7 attributes in DENY rules:
//
// ztunnel enforces L4 only. A rule that needs an attribute ztunnel cannot see (HTTP methods,
// paths, hosts, request principals, remote IP blocks, trust domains, request headers or claims,
// any when key other than source.ip, source.namespace, source.principal, destination.ip and
// destination.port) fails closed for both actions:
//   - in an ALLOW policy the rule is dropped, so the policy allows less (as Istio does);
//   - in a DENY policy the rule becomes a rule that matches every connection to the workload
//     (an empty Group), so the policy denies more. Istio instead translates only the rule's L4
//     attributes, and a rule left with none never matches: its DENY is silently not enforced
//     (github.com/istio/istio/issues/61126). We deny instead.
//
// Use a waypoint (targetRefs) for L7 policy.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
)

// Names istiod gives the policies it derives from PeerAuthentications, and the dry-run
// annotation. The '_' makes them impossible Kubernetes names, so they never collide.
const (
	// StaticStrictPolicyName is the shared DENY-plaintext policy, in the root namespace, that
	// every workload whose effective PeerAuthentication mode is STRICT references.
	StaticStrictPolicyName     = "istio_converted_static_strict"
	convertedPeerAuthPrefix    = "converted_peer_authentication_"
	annotationDryRun           = "istio.io/dry-run"
	defaultPolicyRootNamespace = "istio-system"
)

// Errors AuthorizationPolicy wraps when a policy is not for ztunnel. Callers skip the policy
// (it yields no Authorization) and may report the reason in its status; any other error means
// the policy is invalid.
var (
	// ErrWaypointPolicy: the policy has targetRef or targetRefs, so a waypoint enforces it.
	ErrWaypointPolicy = errors.New("policy attaches to a waypoint (targetRef/targetRefs), not to ztunnel")
	// ErrUnsupportedAction: the action is AUDIT or CUSTOM, which ztunnel does not enforce.
	ErrUnsupportedAction = errors.New("action is not enforced by ztunnel")
	// ErrDryRunDisabled: the policy is annotated istio.io/dry-run=true and
	// PolicyOptions.DryRun is off.
	ErrDryRunDisabled = errors.New("dry-run policies are not enabled for ztunnel")
)

// PolicyOptions are the mesh settings security policy translation needs. The zero value is
// Istio's default.
type PolicyOptions struct {
	// RootNamespace is MeshConfig.rootNamespace: its policies without selector are GLOBAL,
	// and its PeerAuthentication without selector is mesh-wide. If empty, istio-system.
	RootNamespace string
	// DryRun sends policies annotated istio.io/dry-run=true with dry_run set (Istio's
	// AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY; ztunnel before 1.29 would enforce them).
	// If false, such policies are skipped with ErrDryRunDisabled.
	DryRun bool
}

// Root is the root namespace in effect: RootNamespace, or istio-system.
func (o PolicyOptions) Root() string { return o.rootNamespace() }

func (o PolicyOptions) rootNamespace() string {
	if o.RootNamespace == "" {
		return defaultPolicyRootNamespace
	}
	return o.RootNamespace
}

// AuthorizationPolicy translates an AuthorizationPolicy for ztunnel. Scope is GLOBAL for a
// root-namespace policy without selector, NAMESPACE for another policy without selector and
// WORKLOAD_SELECTOR with one. Each rule becomes a Group whose Rules (ANDed) are, in order: the
// to operations (one Match each, ORed), the from sources (likewise), then one clause per when
// condition. Principal and namespace strings follow Istio: "*" is presence, "*x" a suffix, "x*"
// a prefix, anything else exact; a bare service account "sa" means the policy's namespace.
// Rules with L7 attributes fail closed (see the comment at the top of policy.go).
//
// It returns an error wrapping ErrWaypointPolicy, ErrUnsupportedAction or ErrDryRunDisabled
// for a policy that is not ztunnel's, and an error naming the policy for a port, IP or CIDR
// that does not parse (Istio drops such entries, which can widen a rule; we refuse).
//
// Deliberate difference: a selector without matchLabels (selector: {}) is treated as no
// selector, so the policy covers the namespace as it does for sidecars; istiod gives it
// WORKLOAD_SELECTOR scope and then attaches it to no workload.
func AuthorizationPolicy(p *securityclient.AuthorizationPolicy, opts PolicyOptions) (*security.Authorization, error) {
	key := p.Namespace + "/" + p.Name
	spec := &p.Spec
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		return nil, fmt.Errorf("authorization policy %s: %w", key, ErrWaypointPolicy)
	}
	var dryRun bool
	if v := p.Annotations[annotationDryRun]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("authorization policy %s: annotation %s=%q: %w", key, annotationDryRun, v, err)
		}
		if b && !opts.DryRun {
			return nil, fmt.Errorf("authorization policy %s: %w (hint: enable dry-run, with ztunnel 1.29 or later)", key, ErrDryRunDisabled)
		}
		dryRun = b
	}
	var action security.Action
	switch spec.GetAction() {
	case v1beta1.AuthorizationPolicy_ALLOW:
		action = security.Action_ALLOW
	case v1beta1.AuthorizationPolicy_DENY:
		action = security.Action_DENY
	default:
		return nil, fmt.Errorf("authorization policy %s: %w: %s (hint: ztunnel enforces ALLOW and DENY only)", key, ErrUnsupportedAction, spec.GetAction())
	}
	scope := security.Scope_WORKLOAD_SELECTOR
	if !hasSelector(spec.GetSelector()) {
		scope = security.Scope_NAMESPACE
		if p.Namespace == opts.rootNamespace() {
			scope = security.Scope_GLOBAL
		}
	}
	out := &security.Authorization{
		Name:      p.Name,
		Namespace: p.Namespace,
		Scope:     scope,
		Action:    action,
		DryRun:    dryRun,
	}
	for i, r := range spec.GetRules() {
		g, err := ruleGroup(r, action, p.Namespace)
		if err != nil {
			return nil, fmt.Errorf("authorization policy %s: rule %d: %w", key, i, err)
		}
		if g != nil {
			out.Groups = append(out.Groups, g)
		}
	}
	return out, nil
}

// L7Attributes lists, sorted and without duplicates, the attributes of p's rules that ztunnel
// cannot enforce; the controller reports them in the policy's status as istiod does.
func L7Attributes(p *securityclient.AuthorizationPolicy) []string {
	var out []string
	for _, r := range p.Spec.GetRules() {
		out = append(out, ruleL7(r)...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// hasSelector reports whether s selects by labels: a nil selector and one without matchLabels
// do not.
func hasSelector(s *typev1beta1.WorkloadSelector) bool {
	return len(s.GetMatchLabels()) > 0
}

// matchLabels reports whether every label of the selector is in lbls with the same value.
func matchLabels(s *typev1beta1.WorkloadSelector, lbls map[string]string) bool {
	for k, v := range s.GetMatchLabels() {
		if have, ok := lbls[k]; !ok || have != v {
			return false
		}
	}
	return true
}

// l4WhenKeys are the when conditions ztunnel can evaluate (Istio's l4WhenAttributes).
var l4WhenKeys = map[string]bool{
	"source.ip":        true,
	"source.namespace": true,
	"source.principal": true,
	"destination.ip":   true,
	"destination.port": true,
}

// ruleL7 returns the L7 (or otherwise unsupported) attributes the rule uses.
func ruleL7(r *v1beta1.Rule) []string {
	var out []string
	add := func(name string, vs []string) {
		if len(vs) > 0 {
			out = append(out, name)
		}
	}
	for _, to := range r.GetTo() {
		op := to.GetOperation()
		add("hosts", op.GetHosts())
		add("notHosts", op.GetNotHosts())
		add("methods", op.GetMethods())
		add("notMethods", op.GetNotMethods())
		add("paths", op.GetPaths())
		add("notPaths", op.GetNotPaths())
	}
	for _, from := range r.GetFrom() {
		s := from.GetSource()
		add("remoteIpBlocks", s.GetRemoteIpBlocks())
		add("notRemoteIpBlocks", s.GetNotRemoteIpBlocks())
		add("requestPrincipals", s.GetRequestPrincipals())
		add("notRequestPrincipals", s.GetNotRequestPrincipals())
		// Istio ignores trust domains in ambient, which widens a rule; we fail closed.
		add("trustDomains", s.GetTrustDomains())
		add("notTrustDomains", s.GetNotTrustDomains())
	}
	for _, w := range r.GetWhen() {
		if !l4WhenKeys[w.GetKey()] {
			out = append(out, w.GetKey())
		}
	}
	return out
}

// ruleGroup translates one rule. It returns nil for an ALLOW rule with L7 attributes (the
// rule is dropped) and an empty Group, which matches every connection, for such a DENY rule.
func ruleGroup(r *v1beta1.Rule, action security.Action, namespace string) (*security.Group, error) {
	if r == nil {
		return nil, errors.New("nil rule")
	}
	if len(ruleL7(r)) > 0 {
		if action == security.Action_ALLOW {
			return nil, nil
		}
		return &security.Group{}, nil
	}
	g := &security.Group{}
	if len(r.GetTo()) > 0 {
		ms := make([]*security.Match, 0, len(r.GetTo()))
		for i, to := range r.GetTo() {
			op := to.GetOperation()
			m := &security.Match{}
			var err error
			if m.DestinationPorts, err = ports(op.GetPorts()); err != nil {
				return nil, fmt.Errorf("to %d: ports: %w", i, err)
			}
			if m.NotDestinationPorts, err = ports(op.GetNotPorts()); err != nil {
				return nil, fmt.Errorf("to %d: notPorts: %w", i, err)
			}
			ms = append(ms, m)
		}
		g.Rules = append(g.Rules, &security.Rules{Matches: ms})
	}
	if len(r.GetFrom()) > 0 {
		ms := make([]*security.Match, 0, len(r.GetFrom()))
		for i, from := range r.GetFrom() {
			s := from.GetSource()
			m := &security.Match{
				Namespaces:         stringMatches(s.GetNamespaces()),
				NotNamespaces:      stringMatches(s.GetNotNamespaces()),
				ServiceAccounts:    serviceAccountMatches(s.GetServiceAccounts(), namespace),
				NotServiceAccounts: serviceAccountMatches(s.GetNotServiceAccounts(), namespace),
				Principals:         stringMatches(s.GetPrincipals()),
				NotPrincipals:      stringMatches(s.GetNotPrincipals()),
			}
			var err error
			if m.SourceIps, err = addresses(s.GetIpBlocks()); err != nil {
				return nil, fmt.Errorf("from %d: ipBlocks: %w", i, err)
			}
			if m.NotSourceIps, err = addresses(s.GetNotIpBlocks()); err != nil {
				return nil, fmt.Errorf("from %d: notIpBlocks: %w", i, err)
			}
			ms = append(ms, m)
		}
		g.Rules = append(g.Rules, &security.Rules{Matches: ms})
	}
	for i, w := range r.GetWhen() {
		m, err := whenMatch(w)
		if err != nil {
			return nil, fmt.Errorf("when %d (%s): %w", i, w.GetKey(), err)
		}
		g.Rules = append(g.Rules, &security.Rules{Matches: []*security.Match{m}})
	}
	return g, nil
}

// whenMatch translates an L4 condition: values into the positive field, notValues into the
// negative one.
func whenMatch(w *v1beta1.Condition) (*security.Match, error) {
	m := &security.Match{}
	var err, notErr error
	switch w.GetKey() {
	case "source.namespace":
		m.Namespaces, m.NotNamespaces = stringMatches(w.GetValues()), stringMatches(w.GetNotValues())
	case "source.principal":
		m.Principals, m.NotPrincipals = stringMatches(w.GetValues()), stringMatches(w.GetNotValues())
	case "source.ip":
		m.SourceIps, err = addresses(w.GetValues())
		m.NotSourceIps, notErr = addresses(w.GetNotValues())
	case "destination.ip":
		m.DestinationIps, err = addresses(w.GetValues())
		m.NotDestinationIps, notErr = addresses(w.GetNotValues())
	case "destination.port":
		m.DestinationPorts, err = ports(w.GetValues())
		m.NotDestinationPorts, notErr = ports(w.GetNotValues())
	}
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	if notErr != nil {
		return nil, fmt.Errorf("notValues: %w", notErr)
	}
	return m, nil
}

// stringMatches maps Istio's string forms: "*" presence, "*x" suffix, "x*" prefix, else exact.
func stringMatches(vs []string) []*security.StringMatch {
	if len(vs) == 0 {
		return nil
	}
	out := make([]*security.StringMatch, 0, len(vs))
	for _, v := range vs {
		var sm *security.StringMatch
		switch {
		case v == "*":
			sm = &security.StringMatch{MatchType: &security.StringMatch_Presence{}}
		case strings.HasPrefix(v, "*"):
			sm = &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v[1:]}}
		case strings.HasSuffix(v, "*"):
			sm = &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}}
		default:
			sm = &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}
		}
		out = append(out, sm)
	}
	return out
}

// serviceAccountMatches maps "ns/sa", or a bare "sa" in the policy's namespace.
func serviceAccountMatches(vs []string, namespace string) []*security.ServiceAccountMatch {
	if len(vs) == 0 {
		return nil
	}
	out := make([]*security.ServiceAccountMatch, 0, len(vs))
	for _, v := range vs {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = namespace, v
		}
		out = append(out, &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: sa})
	}
	return out
}

func ports(vs []string) ([]uint32, error) {
	if len(vs) == 0 {
		return nil, nil
	}
	out := make([]uint32, 0, len(vs))
	for _, v := range vs {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q is not a number from 0 to 65535", v)
		}
		out = append(out, uint32(p))
	}
	return out, nil
}

// addresses maps IPs (full-length prefixes) and CIDRs to Address{bytes, length}, keeping the
// address as written as Istio does (ztunnel masks host bits).
func addresses(vs []string) ([]*security.Address, error) {
	if len(vs) == 0 {
		return nil, nil
	}
	out := make([]*security.Address, 0, len(vs))
	for _, v := range vs {
		var (
			ip   netip.Addr
			bits int
		)
		if strings.Contains(v, "/") {
			pfx, err := netip.ParsePrefix(v)
			if err != nil {
				return nil, fmt.Errorf("%q is not an IP or CIDR", v)
			}
			ip, bits = pfx.Addr(), pfx.Bits()
		} else {
			a, err := netip.ParseAddr(v)
			if err != nil {
				return nil, fmt.Errorf("%q is not an IP or CIDR", v)
			}
			ip, bits = a, a.BitLen()
		}
		out = append(out, &security.Address{Address: ip.WithZone("").AsSlice(), Length: uint32(bits)})
	}
	return out, nil
}

// StaticStrictPolicy is the policy every workload under an effective STRICT mTLS mode
// references ("<root>/istio_converted_static_strict"): DENY any connection without a peer
// identity. istiod sends it whenever at least one PeerAuthentication exists.
func StaticStrictPolicy(opts PolicyOptions) *security.Authorization {
	return &security.Authorization{
		Name:      StaticStrictPolicyName,
		Namespace: opts.rootNamespace(),
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups:    []*security.Group{{Rules: []*security.Rules{denyPlaintext()}}},
	}
}

func denyPlaintext() *security.Rules {
	return &security.Rules{Matches: []*security.Match{{
		NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}},
	}}}
}

// PeerAuthentication compiles a workload PeerAuthentication with port-level mTLS into
// "converted_peer_authentication_<name>", as istiod does; all holds every PeerAuthentication
// (any namespace), from which the oldest namespace-wide one of p's namespace and the oldest
// mesh-wide one are taken as its parents.
//
// It returns false, as istiod does, when p needs no policy of its own: p is in the root
// namespace, has no selector or no portLevelMtls, or its ports change nothing. Mesh-wide,
// namespace-wide and plain workload STRICT are expressed by StaticStrictPolicy, which
// WorkloadPolicies attaches to the workloads concerned; PERMISSIVE, DISABLE and UNSET need no
// policy. The compiled form is a DENY policy:
//   - top-level STRICT with PERMISSIVE/DISABLE ports: one Group of clauses
//     [notPrincipals presence] AND [notDestinationPorts p] for each exempted port p;
//   - PERMISSIVE/DISABLE (or UNSET under a permissive parent) with STRICT ports: one Group per
//     STRICT port, [notPrincipals presence, destinationPorts p];
//   - UNSET under a STRICT parent with PERMISSIVE/DISABLE ports: the exemptions, with the
//     parent's STRICT merged in (the static policy is then not attached, since a DENY cannot
//     be excepted by another policy).
//
// Port numbers are the workload's (container) ports, which is what ztunnel sees at the
// destination, so no Service port mapping is involved.
func PeerAuthentication(p *securityclient.PeerAuthentication, all []*securityclient.PeerAuthentication, opts PolicyOptions) (*security.Authorization, bool) {
	root := opts.rootNamespace()
	spec := &p.Spec
	if p.Namespace == root || spec.GetSelector() == nil || len(spec.GetPortLevelMtls()) == 0 {
		return nil, false
	}
	nsCfg, rootCfg := parentPeerAuthentications(p.Namespace, all, root)
	mode := spec.GetMtls().GetMode()

	var (
		rules          []*security.Rules
		groups         []*security.Group
		foundNonStrict bool
	)
	if mode == v1beta1.PeerAuthentication_MutualTLS_STRICT {
		rules = append(rules, denyPlaintext())
	}
	parentStrict := effectiveParentStrict(nsCfg, rootCfg)
	for _, port := range sortedPorts(spec.GetPortLevelMtls()) {
		switch spec.GetPortLevelMtls()[port].GetMode() {
		case v1beta1.PeerAuthentication_MutualTLS_STRICT:
			if mode == v1beta1.PeerAuthentication_MutualTLS_STRICT ||
				(mode == v1beta1.PeerAuthentication_MutualTLS_UNSET && parentStrict) {
				continue // the policy or its parent already makes it STRICT
			}
			groups = append(groups, &security.Group{Rules: []*security.Rules{{Matches: []*security.Match{{
				NotPrincipals:    []*security.StringMatch{{MatchType: &security.StringMatch_Presence{}}},
				DestinationPorts: []uint32{port},
			}}}}})
		case v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE, v1beta1.PeerAuthentication_MutualTLS_DISABLE:
			if mode == v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE || mode == v1beta1.PeerAuthentication_MutualTLS_DISABLE {
				continue
			}
			if mode == v1beta1.PeerAuthentication_MutualTLS_UNSET && !parentStrict {
				continue
			}
			foundNonStrict = true
			rules = append(rules, &security.Rules{Matches: []*security.Match{{NotDestinationPorts: []uint32{port}}}})
		}
	}
	if mode == v1beta1.PeerAuthentication_MutualTLS_STRICT && !foundNonStrict {
		return nil, false
	}
	if len(rules) == 0 && len(groups) == 0 {
		return nil, false
	}
	if foundNonStrict && mode != v1beta1.PeerAuthentication_MutualTLS_STRICT && parentStrict {
		rules = append(rules, denyPlaintext())
	}
	if len(rules) > 0 {
		groups = append(groups, &security.Group{Rules: rules})
	}
	return &security.Authorization{
		Name:      convertedPeerAuthPrefix + p.Name,
		Namespace: p.Namespace,
		Scope:     security.Scope_WORKLOAD_SELECTOR,
		Action:    security.Action_DENY,
		Groups:    groups,
	}, true
}

// effectiveParentStrict reports whether the mode a workload policy inherits is STRICT: the
// namespace-wide policy's if it sets one, else the mesh-wide policy's. istiod's
// convertPeerAuthentication spells this condition three different ways, two of which disagree
// with the inheritance its workload key selection uses (a PERMISSIVE policy's STRICT port under
// a STRICT mesh is dropped; an UNSET namespace policy hides a STRICT mesh from PERMISSIVE
// ports); both end in a referenced policy that does not exist, i.e. plaintext allowed. We use
// this one reading everywhere.
func effectiveParentStrict(nsCfg, rootCfg *securityclient.PeerAuthentication) bool {
	if nsCfg != nil && nsCfg.Spec.GetMtls().GetMode() != v1beta1.PeerAuthentication_MutualTLS_UNSET {
		return nsCfg.Spec.GetMtls().GetMode() == v1beta1.PeerAuthentication_MutualTLS_STRICT
	}
	return rootCfg != nil && rootCfg.Spec.GetMtls().GetMode() == v1beta1.PeerAuthentication_MutualTLS_STRICT
}

// parentPeerAuthentications returns the oldest selector-less PeerAuthentication of namespace
// and of the root namespace (nil when there is none). Ties go to the first in all.
func parentPeerAuthentications(namespace string, all []*securityclient.PeerAuthentication, root string) (nsCfg, rootCfg *securityclient.PeerAuthentication) {
	for _, pa := range all {
		if pa.Spec.GetSelector() != nil {
			continue
		}
		switch pa.Namespace {
		case root:
			rootCfg = older(rootCfg, pa)
		case namespace:
			nsCfg = older(nsCfg, pa)
		}
	}
	return nsCfg, rootCfg
}

func older(cur, pa *securityclient.PeerAuthentication) *securityclient.PeerAuthentication {
	if cur == nil || pa.CreationTimestamp.Before(&cur.CreationTimestamp) {
		return pa
	}
	return cur
}

func sortedPorts(m map[uint32]*v1beta1.PeerAuthentication_MutualTLS) []uint32 {
	out := make([]uint32, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// WorkloadPolicies returns the keys ("namespace/name") to put in Workload.AuthorizationPolicies
// for a workload with the given namespace and labels, in istiod's order: first, sorted, the
// WORKLOAD_SELECTOR AuthorizationPolicies of its namespace or the root namespace whose
// matchLabels are a subset of its labels and that AuthorizationPolicy translates; then, sorted,
// the PeerAuthentication keys: "<root>/istio_converted_static_strict" when its effective mode is
// STRICT, and "<ns>/converted_peer_authentication_<name>" for the oldest selecting workload
// PeerAuthentication when its port-level modes need it. GLOBAL and NAMESPACE policies are not
// listed: ztunnel applies them by scope.
func WorkloadPolicies(namespace string, lbls map[string]string, aps []*securityclient.AuthorizationPolicy, pas []*securityclient.PeerAuthentication, opts PolicyOptions) []string {
	root := opts.rootNamespace()
	var keys []string
	for _, ap := range aps {
		if ap.Namespace != root && ap.Namespace != namespace {
			continue
		}
		sel := ap.Spec.GetSelector()
		if !hasSelector(sel) || !matchLabels(sel, lbls) {
			continue
		}
		if _, err := AuthorizationPolicy(ap, opts); err != nil {
			continue
		}
		keys = append(keys, ap.Namespace+"/"+ap.Name)
	}
	slices.Sort(keys)
	return append(keys, peerAuthenticationKeys(namespace, lbls, pas, root)...)
}

// peerAuthenticationKeys follows istiod's convertedSelectorPeerAuthentications: resolve the
// effective mode mesh → namespace → workload (oldest policy wins at each level).
func peerAuthenticationKeys(namespace string, lbls map[string]string, pas []*securityclient.PeerAuthentication, root string) []string {
	var meshCfg, nsCfg, wlCfg *securityclient.PeerAuthentication
	for _, pa := range pas {
		sel := pa.Spec.GetSelector()
		switch {
		case pa.Namespace == root && sel == nil:
			meshCfg = older(meshCfg, pa)
		case pa.Namespace != namespace:
		case !hasSelector(sel):
			if pa.Namespace == root {
				meshCfg = older(meshCfg, pa)
			} else {
				nsCfg = older(nsCfg, pa)
			}
		case pa.Namespace != root && matchLabels(sel, lbls):
			wlCfg = older(wlCfg, pa)
		}
	}
	modeOf := func(pa *securityclient.PeerAuthentication) v1beta1.PeerAuthentication_MutualTLS_Mode {
		return pa.Spec.GetMtls().GetMode()
	}
	const (
		unset      = v1beta1.PeerAuthentication_MutualTLS_UNSET
		strict     = v1beta1.PeerAuthentication_MutualTLS_STRICT
		permissive = v1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
		disable    = v1beta1.PeerAuthentication_MutualTLS_DISABLE
	)
	var isStrict bool
	if meshCfg != nil {
		isStrict = modeOf(meshCfg) == strict
	}
	if nsCfg != nil && modeOf(nsCfg) != unset {
		isStrict = modeOf(nsCfg) == strict
	}
	var portKey string
	if wlCfg != nil {
		mode := modeOf(wlCfg)
		switch mode {
		case strict:
			isStrict = true
		case permissive, disable:
			isStrict = false
		}
		hasPort := func(modes ...v1beta1.PeerAuthentication_MutualTLS_Mode) bool {
			for _, m := range wlCfg.Spec.GetPortLevelMtls() {
				if slices.Contains(modes, m.GetMode()) {
					return true
				}
			}
			return false
		}
		convertedKey := wlCfg.Namespace + "/" + convertedPeerAuthPrefix + wlCfg.Name
		if len(wlCfg.Spec.GetPortLevelMtls()) > 0 {
			switch {
			case mode == strict:
				if hasPort(permissive, disable) {
					portKey, isStrict = convertedKey, false
				}
			case mode == permissive || mode == disable:
				if hasPort(strict) {
					portKey = convertedKey
				}
			case isStrict: // UNSET under a STRICT parent
				// istiod looks for PERMISSIVE ports only here, although PeerAuthentication
				// exempts DISABLE ones too; we take both, so DISABLE ports are exempted.
				if hasPort(permissive, disable) {
					portKey, isStrict = convertedKey, false
				}
			default: // UNSET under a permissive parent
				if hasPort(strict) {
					portKey = convertedKey
				}
			}
		}
	}
	var keys []string
	if isStrict {
		keys = append(keys, root+"/"+StaticStrictPolicyName)
	}
	if portKey != "" {
		keys = append(keys, portKey)
	}
	slices.Sort(keys)
	return keys
}

// Skipped is a policy that yields no Authorization, and why.
type Skipped struct {
	// Policy is "<Kind> namespace/name".
	Policy string `json:"policy"`
	// Reason is the error (AuthorizationPolicy) or a fixed explanation (PeerAuthentication).
	Reason string `json:"reason"`
}

// Policies translates every AuthorizationPolicy and PeerAuthentication into the
// Authorizations istiod would serve, sorted by key ("namespace/name"), plus the static STRICT
// policy when any PeerAuthentication exists, and lists the policies skipped with the reason.
//
// A policy with targetRef(s) is the waypoint's (ErrWaypointPolicy): as istiod does for
// ztunnel, it yields nothing, whatever its rules, and is not listed as skipped either, since
// nothing is wrong with it.
func Policies(aps []*securityclient.AuthorizationPolicy, pas []*securityclient.PeerAuthentication, opts PolicyOptions) ([]*security.Authorization, []Skipped) {
	var (
		out     []*security.Authorization
		skipped []Skipped
	)
	for _, ap := range aps {
		a, err := AuthorizationPolicy(ap, opts)
		if errors.Is(err, ErrWaypointPolicy) {
			continue
		}
		if err != nil {
			skipped = append(skipped, Skipped{Policy: "AuthorizationPolicy " + ap.Namespace + "/" + ap.Name, Reason: err.Error()})
			continue
		}
		out = append(out, a)
	}
	for _, pa := range pas {
		a, ok := PeerAuthentication(pa, pas, opts)
		if !ok {
			skipped = append(skipped, Skipped{
				Policy: "PeerAuthentication " + pa.Namespace + "/" + pa.Name,
				Reason: "no policy of its own: STRICT is the shared " + StaticStrictPolicyName + " policy; PERMISSIVE, DISABLE and UNSET need none",
			})
			continue
		}
		out = append(out, a)
	}
	if len(pas) > 0 {
		out = append(out, StaticStrictPolicy(opts))
	}
	slices.SortFunc(out, func(a, b *security.Authorization) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out, skipped
}
