// Package authz evaluates the waypoint's L7 authorization: Envoy RBAC
// (envoy.config.rbac.v3.RBAC, carried as envoy.extensions.filters.http.rbac.v3.RBACPerRoute
// under the keys istio.authz.deny, istio.authz.allow and istio.authz.audit of a virtual
// host's typed_per_filter_config, as istiod-lite translates AuthorizationPolicy) over the
// attributes of a request or, for TCP, of a connection.
//
// Istio's order applies: any matching DENY policy denies; then, if an ALLOW rule set is
// present, one of its policies must match; AUDIT policies only report. Dry-run policies
// (shadow_rules beside the rules of the DENY and ALLOW filters) are evaluated as Envoy's
// shadow engine does and reported in the Decision, never enforced. Over TCP (no HTTP
// attributes) it follows Istio's TCP translation: an ALLOW policy that needs an HTTP
// attribute never matches, and a DENY policy ignores its HTTP-only conditions (it denies
// more broadly).
//
// It is not an xDS consumer and holds no state; the route table compiles one Engine per
// virtual host. Compile rejects what it cannot evaluate (CEL conditions, matcher trees, URI
// templates, unknown filter-state keys), so the waypoint NACKs instead of guessing.
package authz

import (
	"fmt"
	"net/netip"
	"slices"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

// Keys of a virtual host's typed_per_filter_config that carry the policies.
const (
	KeyDeny  = "istio.authz.deny"
	KeyAllow = "istio.authz.allow"
	KeyAudit = "istio.authz.audit"
)

// PeerPrincipalKey is the filter-state key Istio's waypoint RBAC reads the peer's
// principal from.
const PeerPrincipalKey = "io.istio.peer_principal"

// Attributes are what a decision is taken on.
type Attributes struct {
	// HTTP says whether Request is known; without it only L4 attributes are evaluated.
	HTTP    bool
	Request match.Request
	// Principal is the verified peer identity, "spiffe://td/ns/x/sa/y", or "" if none.
	Principal string
	// SourceIP is the original client (remote_ip, direct_remote_ip, source_ip).
	SourceIP netip.Addr
	// DestinationIP and DestinationPort are the address the client dialled.
	DestinationIP   netip.Addr
	DestinationPort uint16
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allowed bool
	// Policy names the policy that denied (DENY match) or allowed (ALLOW match); empty
	// when no policy applied or no ALLOW matched.
	Policy string
	// Audit lists the AUDIT policies that matched.
	Audit []string
	// Shadow holds the dry-run decisions of the filters the request reached: the DENY
	// filter's always, the ALLOW filter's unless an enforced DENY policy matched (Envoy
	// runs Istio's filters in that order, each shadow engine before its own).
	Shadow []Shadow
}

// Engine is a virtual host's compiled policies. The nil Engine allows everything.
type Engine struct {
	deny, allow, audit      []*policy
	hasAllow                bool
	shadowDeny, shadowAllow *shadowEngine
}

type policy struct {
	name   string
	perms  []pred // OR
	princs []pred // OR
	needs7 bool   // uses an HTTP attribute
}

// Compile reads the RBACPerRoute configurations of perFilter (other keys are ignored: they
// belong to other filters). It returns nil when no policy applies.
func Compile(perFilter map[string]*anypb.Any) (*Engine, error) {
	e := &Engine{}
	found := false
	for _, key := range []string{KeyDeny, KeyAllow, KeyAudit} {
		a, ok := perFilter[key]
		if !ok {
			continue
		}
		found = true
		per := &rbachttpv3.RBACPerRoute{}
		if err := a.UnmarshalTo(per); err != nil {
			return nil, fmt.Errorf("%s: decoding RBACPerRoute: %w", key, err)
		}
		if per.GetRbac().GetMatcher() != nil || per.GetRbac().GetShadowMatcher() != nil {
			return nil, fmt.Errorf("%s: RBAC matcher trees are not supported", key)
		}
		rules := per.GetRbac().GetRules()
		want := map[string]rbacv3.RBAC_Action{KeyDeny: rbacv3.RBAC_DENY, KeyAllow: rbacv3.RBAC_ALLOW, KeyAudit: rbacv3.RBAC_LOG}[key]
		shadow, err := compileShadow(key, want, per.GetRbac())
		if err != nil {
			return nil, err
		}
		switch key {
		case KeyDeny:
			e.shadowDeny = shadow
		case KeyAllow:
			e.shadowAllow = shadow
		}
		if rules == nil {
			if key == KeyAllow && shadow == nil {
				e.hasAllow = true // no rules under ALLOW: nothing is allowed
			}
			continue
		}
		if rules.GetAction() != want {
			return nil, fmt.Errorf("%s: action %s, want %s", key, rules.GetAction(), want)
		}
		ps, err := compileRules(rules)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		switch key {
		case KeyDeny:
			e.deny = ps
		case KeyAllow:
			e.allow, e.hasAllow = ps, true
		case KeyAudit:
			e.audit = ps
		}
	}
	if !found {
		return nil, nil
	}
	return e, nil
}

// compileShadow compiles the shadow_rules of key's filter (nil if it has none); they must
// have the filter's action.
func compileShadow(key string, want rbacv3.RBAC_Action, cfg *rbachttpv3.RBAC) (*shadowEngine, error) {
	rules := cfg.GetShadowRules()
	if rules == nil {
		return nil, nil
	}
	if key == KeyAudit || rules.GetAction() != want {
		return nil, fmt.Errorf("%s: shadow rules with action %s are not supported", key, rules.GetAction())
	}
	ps, err := compileRules(rules)
	if err != nil {
		return nil, fmt.Errorf("%s: shadow rules: %w", key, err)
	}
	return &shadowEngine{prefix: cfg.GetShadowRulesStatPrefix(), action: want, policies: ps}, nil
}

func compileRules(r *rbacv3.RBAC) ([]*policy, error) {
	names := make([]string, 0, len(r.GetPolicies()))
	for n := range r.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names) // deterministic: the first matching name is reported
	out := make([]*policy, 0, len(names))
	for _, n := range names {
		p := r.GetPolicies()[n]
		if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
			return nil, fmt.Errorf("policy %s: CEL conditions are not supported", n)
		}
		cp := &policy{name: n}
		for i, pm := range p.GetPermissions() {
			c, err := compilePermission(pm)
			if err != nil {
				return nil, fmt.Errorf("policy %s permission %d: %w", n, i, err)
			}
			cp.perms = append(cp.perms, c)
		}
		for i, pr := range p.GetPrincipals() {
			c, err := compilePrincipal(pr)
			if err != nil {
				return nil, fmt.Errorf("policy %s principal %d: %w", n, i, err)
			}
			cp.princs = append(cp.princs, c)
		}
		cp.needs7 = slices.ContainsFunc(cp.perms, needsHTTP) || slices.ContainsFunc(cp.princs, needsHTTP)
		out = append(out, cp)
	}
	return out, nil
}

// Evaluate decides a request (a.HTTP) or a connection.
func (e *Engine) Evaluate(a *Attributes) Decision {
	if e == nil {
		return Decision{Allowed: true}
	}
	var d Decision
	for _, p := range e.audit {
		if p.matches(a, false) {
			d.Audit = append(d.Audit, p.name)
		}
	}
	d.Shadow = e.shadowDeny.evaluate(a)
	for _, p := range e.deny {
		if p.matches(a, true) {
			d.Policy = p.name
			return d
		}
	}
	d.Shadow = append(d.Shadow, e.shadowAllow.evaluate(a)...)
	if !e.hasAllow {
		d.Allowed = true
		return d
	}
	for _, p := range e.allow {
		if p.matches(a, false) {
			d.Allowed, d.Policy = true, p.name
			return d
		}
	}
	return d
}

// matches evaluates the policy. Without HTTP attributes, an ALLOW (or AUDIT) policy that
// needs one does not match, and a DENY policy (deny true) treats its HTTP-only conditions
// as absent.
func (p *policy) matches(a *Attributes, deny bool) bool {
	if !a.HTTP && p.needs7 && !deny {
		return false
	}
	r := and(or(p.perms, a), or(p.princs, a))
	if deny {
		return r != no
	}
	return r == yes
}
