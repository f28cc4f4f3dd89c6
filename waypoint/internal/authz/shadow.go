package authz

import (
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
)

// Shadow is the would-be decision of one filter's shadow_rules (Istio's dry-run policies,
// annotation istio.io/dry-run), as Envoy's RBAC shadow engine reports it: it never changes
// the Decision.
type Shadow struct {
	// Prefix is the filter's shadow_rules_stat_prefix (Istio: istio_dry_run_allow_ or
	// istio_dry_run_deny_); Envoy prefixes the dynamic metadata keys
	// shadow_engine_result and shadow_effective_policy_id with it.
	Prefix string
	// Allowed: a DENY shadow engine with no matching policy, or an ALLOW one with a
	// matching policy.
	Allowed bool
	// Policy is the matching policy, "" if none matched.
	Policy string
}

// Result is Envoy's shadow_engine_result: "allowed" or "denied".
func (s Shadow) Result() string {
	if s.Allowed {
		return "allowed"
	}
	return "denied"
}

// shadowEngine is one filter's compiled shadow_rules.
type shadowEngine struct {
	prefix   string
	action   rbacv3.RBAC_Action
	policies []*policy
}

// evaluate runs the shadow engine; nil evaluates to nothing.
func (s *shadowEngine) evaluate(a *Attributes) []Shadow {
	if s == nil {
		return nil
	}
	deny := s.action == rbacv3.RBAC_DENY
	for _, p := range s.policies {
		if p.matches(a, deny) {
			return []Shadow{{Prefix: s.prefix, Allowed: !deny, Policy: p.name}}
		}
	}
	return []Shadow{{Prefix: s.prefix, Allowed: deny}}
}
