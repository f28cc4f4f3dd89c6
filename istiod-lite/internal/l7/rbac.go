package l7

// L7 AuthorizationPolicies → the RBACPerRoute configurations of a virtual host, as istiod's
// authz builder does for a waypoint: one RBAC per action, one Policy per rule, named
// ns[<ns>]-policy[<name>]-rule[<i>]; istio.io/dry-run policies go in shadow_rules beside the
// enforced policies of the same action (and are left out when there are none).

import (
	"fmt"
	"slices"
	"strconv"

	rbacpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Keys of a virtual host's typed_per_filter_config, one per action, each an
// envoy.extensions.filters.http.rbac.v3.RBACPerRoute. Any DENY match denies; then, if the
// ALLOW key is present, one of its policies must match; AUDIT only logs.
const (
	FilterKeyDeny  = "istio.authz.deny"
	FilterKeyAllow = "istio.authz.allow"
	FilterKeyAudit = "istio.authz.audit"
)

const (
	annotationDryRun = "istio.io/dry-run"
	// badCustomSuffix names the DENY policies made from a CUSTOM policy's rules (istiod's).
	badCustomSuffix = "-deny-due-to-bad-CUSTOM-action"
	gatewayGroup    = "gateway.networking.k8s.io"
)

// matchNever is the Policy of a policy without rules (istiod's rbacPolicyMatchNever): an
// ALLOW policy without rules therefore allows nothing, a DENY one denies nothing.
func matchNever() *rbacpb.Policy {
	return &rbacpb.Policy{
		Permissions: []*rbacpb.Permission{{Rule: &rbacpb.Permission_NotRule{NotRule: &rbacpb.Permission{Rule: &rbacpb.Permission_Any{Any: true}}}}},
		Principals:  []*rbacpb.Principal{{Identifier: &rbacpb.Principal_NotId{NotId: &rbacpb.Principal{Identifier: &rbacpb.Principal_Any{Any: true}}}}},
	}
}

// compiledPolicy is one AuthorizationPolicy translated, with what it targets.
type compiledPolicy struct {
	key      types.NamespacedName
	action   rbacpb.RBAC_Action
	dryRun   bool
	policies map[string]*rbacpb.Policy
	services []types.NamespacedName
	gateway  bool
	errs     []error
	// invalid: the policy cannot be applied at all (unknown action).
	invalid bool
}

// authorizer holds the policies that apply to one waypoint.
type authorizer struct {
	policies []*compiledPolicy
}

func newAuthorizer(in Input) *authorizer {
	bound := map[types.NamespacedName]bool{}
	for _, s := range in.Bound {
		bound[s.key()] = true
	}
	a := &authorizer{}
	for _, p := range in.AuthorizationPolicies {
		services, gateway := targets(p, in.Gateway)
		applies := gateway
		for _, s := range services {
			applies = applies || bound[s]
		}
		if !applies {
			continue
		}
		cp := compilePolicy(p, in.trustDomain())
		cp.services, cp.gateway = services, gateway
		a.policies = append(a.policies, cp)
	}
	return a
}

// targets returns the Services a policy's targetRefs (or targetRef) name, and whether one
// names the Gateway gw. References to another namespace or to other kinds are ignored, as
// istiod does.
func targets(p *securityclient.AuthorizationPolicy, gw types.NamespacedName) ([]types.NamespacedName, bool) {
	refs := p.Spec.GetTargetRefs()
	if r := p.Spec.GetTargetRef(); r != nil {
		refs = append([]*typev1beta1.PolicyTargetReference{r}, refs...)
	}
	var services []types.NamespacedName
	gateway := false
	for _, r := range refs {
		if r.GetNamespace() != "" && r.GetNamespace() != p.Namespace {
			continue
		}
		key := types.NamespacedName{Namespace: p.Namespace, Name: r.GetName()}
		switch {
		case r.GetKind() == "Service" && (r.GetGroup() == "" || r.GetGroup() == "core"):
			services = append(services, key)
		case r.GetKind() == "Gateway" && r.GetGroup() == gatewayGroup && key == gw:
			gateway = true
		}
	}
	return services, gateway
}

// compilePolicy translates a policy's rules. CUSTOM is not supported: its rules become DENY
// policies (istiod does the same when the extension provider is missing), so requests that
// would have been checked are denied. An ALLOW rule that cannot be translated is dropped;
// in a DENY or AUDIT rule the attribute is dropped instead, so the policy fails closed.
func compilePolicy(p *securityclient.AuthorizationPolicy, trustDomain string) *compiledPolicy {
	cp := &compiledPolicy{key: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, policies: map[string]*rbacpb.Policy{}}
	suffix := ""
	switch p.Spec.GetAction() {
	case v1beta1.AuthorizationPolicy_ALLOW:
		cp.action = rbacpb.RBAC_ALLOW
	case v1beta1.AuthorizationPolicy_DENY:
		cp.action = rbacpb.RBAC_DENY
	case v1beta1.AuthorizationPolicy_AUDIT:
		cp.action = rbacpb.RBAC_LOG
	case v1beta1.AuthorizationPolicy_CUSTOM:
		cp.errs = append(cp.errs, fmt.Errorf("action CUSTOM (provider %q): %w; its rules deny instead", p.Spec.GetProvider().GetName(), ErrUnsupported))
		cp.action = rbacpb.RBAC_DENY
		suffix = badCustomSuffix
	default:
		cp.errs = append(cp.errs, fmt.Errorf("unknown action %v", p.Spec.GetAction()))
		cp.invalid = true
		return cp
	}
	if v, ok := p.Annotations[annotationDryRun]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			cp.errs = append(cp.errs, fmt.Errorf("annotation %s=%q: %w", annotationDryRun, v, err))
		}
		cp.dryRun = b
	}
	c := ruleCompiler{policyNS: p.Namespace, trustDomain: trustDomain, widen: cp.action != rbacpb.RBAC_ALLOW}
	name := func(i int) string {
		return fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]%s", p.Namespace, p.Name, i, suffix)
	}
	rules := p.Spec.GetRules()
	if len(rules) == 0 {
		cp.policies[name(0)] = matchNever()
	}
	for i, r := range rules {
		if r == nil {
			cp.errs = append(cp.errs, fmt.Errorf("rule %d is empty", i))
			continue
		}
		pol, errs := c.rule(r)
		for _, err := range errs {
			cp.errs = append(cp.errs, fmt.Errorf("rule %d: %w", i, err))
		}
		if pol != nil {
			cp.policies[name(i)] = pol
		}
	}
	return cp
}

func (a *authorizer) forService(svc Service) map[string]*anypb.Any {
	return a.perFilter(func(p *compiledPolicy) bool { return p.gateway || slices.Contains(p.services, svc.key()) })
}

func (a *authorizer) forGateway() map[string]*anypb.Any {
	return a.perFilter(func(p *compiledPolicy) bool { return p.gateway })
}

// perFilter builds the typed_per_filter_config of the policies that apply; an action
// without policies has no key.
func (a *authorizer) perFilter(applies func(*compiledPolicy) bool) map[string]*anypb.Any {
	type rules struct{ enforce, shadow *rbacpb.RBAC }
	byAction := map[rbacpb.RBAC_Action]*rules{}
	for _, p := range a.policies {
		if p.invalid || !applies(p) {
			continue
		}
		r := byAction[p.action]
		if r == nil {
			r = &rules{}
			byAction[p.action] = r
		}
		target := &r.enforce
		if p.dryRun {
			target = &r.shadow
		}
		if *target == nil {
			*target = &rbacpb.RBAC{Action: p.action, Policies: map[string]*rbacpb.Policy{}}
		}
		for k, v := range p.policies {
			(*target).Policies[k] = v
		}
	}
	out := map[string]*anypb.Any{}
	for action, key := range map[rbacpb.RBAC_Action]string{rbacpb.RBAC_DENY: FilterKeyDeny, rbacpb.RBAC_ALLOW: FilterKeyAllow, rbacpb.RBAC_LOG: FilterKeyAudit} {
		r := byAction[action]
		if r == nil || r.enforce == nil {
			// Dry-run policies alone enforce nothing: no key (an ALLOW key without rules
			// would deny everything).
			continue
		}
		cfg := &rbachttp.RBAC{Rules: r.enforce, ShadowRules: r.shadow}
		if r.shadow != nil {
			switch action {
			case rbacpb.RBAC_ALLOW:
				cfg.ShadowRulesStatPrefix = "istio_dry_run_allow_"
			case rbacpb.RBAC_DENY:
				cfg.ShadowRulesStatPrefix = "istio_dry_run_deny_"
			}
		}
		out[key] = deterministicAny(&rbachttp.RBACPerRoute{Rbac: cfg})
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// deterministicAny packs m with map entries in order, so equal configurations marshal to
// equal bytes (stable goldens and xDS versions).
func deterministicAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("marshaling %T: %v", m, err)) // generated messages always marshal
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}

func (a *authorizer) errors() []ObjectError {
	var out []ObjectError
	for _, p := range a.policies {
		for _, err := range p.errs {
			out = append(out, ObjectError{Kind: KindAuthorizationPolicy, NamespacedName: p.key, Err: err})
		}
	}
	return out
}
