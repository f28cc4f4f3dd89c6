package l7

// One AuthorizationPolicy rule → one Envoy RBAC Policy, as istiod's authz model does
// (pilot/pkg/security/authz/model): a permission per `to` and a principal per `from`, each
// the AND of its attributes (ANY if none), an attribute the OR of its values and NOT(OR) of
// its not-values, and the `when` conditions ANDed into every permission or principal.

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/api/security/v1beta1"
)

// ErrUnsupported is wrapped by errors naming a policy attribute the waypoint does not
// enforce (JWT attributes: no RequestAuthentication; SNI and Envoy metadata; path templates).
var ErrUnsupported = errors.New("not supported by the waypoint")

const spiffePrefix = "spiffe://"

// side is where an attribute is matched: the request (permission) or its source (principal).
type side int

const (
	permissionSide side = iota
	principalSide
)

// attribute is one condition of a rule: its key (Istio's name), values and not-values.
type attribute struct {
	key       string
	values    []string
	notValues []string
}

// ruleCompiler translates the rules of one policy.
type ruleCompiler struct {
	policyNS    string
	trustDomain string
	// widen: on an attribute that cannot be translated, drop the attribute (DENY, AUDIT:
	// the rule matches more) rather than the rule (ALLOW: the policy allows less).
	widen bool
}

// rule translates r. It returns a nil policy if the rule is dropped, and the errors met.
func (c ruleCompiler) rule(r *v1beta1.Rule) (*rbacpb.Policy, []error) {
	var errs []error
	var basePerm, basePrin []attribute
	for _, w := range r.GetWhen() {
		a := attribute{key: w.GetKey(), values: w.GetValues(), notValues: w.GetNotValues()}
		s, err := whenSide(a.key)
		if err != nil {
			errs = append(errs, err)
			if !c.widen {
				return nil, errs
			}
			continue
		}
		if s == permissionSide {
			basePerm = append(basePerm, a)
		} else {
			basePrin = append(basePrin, a)
		}
	}
	policy := &rbacpb.Policy{}
	froms := r.GetFrom()
	if len(froms) == 0 {
		froms = []*v1beta1.Rule_From{{}}
	}
	for _, f := range froms {
		s := f.GetSource()
		attrs := []attribute{
			{"source.principal", s.GetPrincipals(), s.GetNotPrincipals()},
			{"request.auth.principal", s.GetRequestPrincipals(), s.GetNotRequestPrincipals()},
			{"source.serviceAccount", s.GetServiceAccounts(), s.GetNotServiceAccounts()},
			{"source.trustDomain", s.GetTrustDomains(), s.GetNotTrustDomains()},
			{"source.namespace", s.GetNamespaces(), s.GetNotNamespaces()},
			{"remote.ip", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks()},
			{"source.ip", s.GetIpBlocks(), s.GetNotIpBlocks()},
		}
		var and []*rbacpb.Principal
		for _, a := range append(attrs, basePrin...) {
			ps, err := c.principals(a)
			if err != nil {
				errs = append(errs, err)
				if !c.widen {
					return nil, errs
				}
				continue
			}
			and = append(and, ps...)
		}
		if len(and) == 0 {
			and = []*rbacpb.Principal{{Identifier: &rbacpb.Principal_Any{Any: true}}}
		}
		policy.Principals = append(policy.Principals, &rbacpb.Principal{Identifier: &rbacpb.Principal_AndIds{AndIds: &rbacpb.Principal_Set{Ids: and}}})
	}
	tos := r.GetTo()
	if len(tos) == 0 {
		tos = []*v1beta1.Rule_To{{}}
	}
	for _, t := range tos {
		o := t.GetOperation()
		attrs := []attribute{
			{":authority", o.GetHosts(), o.GetNotHosts()},
			{":method", o.GetMethods(), o.GetNotMethods()},
			{"request.path", o.GetPaths(), o.GetNotPaths()},
			{"destination.port", o.GetPorts(), o.GetNotPorts()},
		}
		var and []*rbacpb.Permission
		for _, a := range append(attrs, basePerm...) {
			ps, err := c.permissions(a)
			if err != nil {
				errs = append(errs, err)
				if !c.widen {
					return nil, errs
				}
				continue
			}
			and = append(and, ps...)
		}
		if len(and) == 0 {
			and = []*rbacpb.Permission{{Rule: &rbacpb.Permission_Any{Any: true}}}
		}
		policy.Permissions = append(policy.Permissions, &rbacpb.Permission{Rule: &rbacpb.Permission_AndRules{AndRules: &rbacpb.Permission_Set{Rules: and}}})
	}
	return policy, errs
}

// whenSide classifies a when key; an error names a key that is unsupported or unknown.
func whenSide(key string) (side, error) {
	switch {
	case key == "destination.ip", key == "destination.port":
		return permissionSide, nil
	case key == "source.ip", key == "remote.ip", key == "source.namespace", key == "source.principal",
		key == "source.serviceAccount", key == "source.trustDomain", strings.HasPrefix(key, "request.headers["):
		return principalSide, nil
	case strings.HasPrefix(key, "request.auth."), key == "connection.sni", strings.HasPrefix(key, "experimental.envoy.filters."):
		return 0, fmt.Errorf("when %s: %w", key, ErrUnsupported)
	}
	return 0, fmt.Errorf("when %s: unknown attribute", key)
}

func (c ruleCompiler) principals(a attribute) ([]*rbacpb.Principal, error) {
	one := func(v string) (*rbacpb.Principal, error) { return c.principal(a.key, v) }
	var out []*rbacpb.Principal
	for i, vs := range [][]string{a.values, a.notValues} {
		if len(vs) == 0 {
			continue
		}
		var or []*rbacpb.Principal
		for _, v := range vs {
			p, err := one(v)
			if err != nil {
				return nil, err
			}
			or = append(or, p)
		}
		p := &rbacpb.Principal{Identifier: &rbacpb.Principal_OrIds{OrIds: &rbacpb.Principal_Set{Ids: or}}}
		if i == 1 {
			p = &rbacpb.Principal{Identifier: &rbacpb.Principal_NotId{NotId: p}}
		}
		out = append(out, p)
	}
	return out, nil
}

func (c ruleCompiler) permissions(a attribute) ([]*rbacpb.Permission, error) {
	var out []*rbacpb.Permission
	for i, vs := range [][]string{a.values, a.notValues} {
		if len(vs) == 0 {
			continue
		}
		var or []*rbacpb.Permission
		for _, v := range vs {
			p, err := permission(a.key, v)
			if err != nil {
				return nil, err
			}
			or = append(or, p)
		}
		p := &rbacpb.Permission{Rule: &rbacpb.Permission_OrRules{OrRules: &rbacpb.Permission_Set{Rules: or}}}
		if i == 1 {
			p = &rbacpb.Permission{Rule: &rbacpb.Permission_NotRule{NotRule: p}}
		}
		out = append(out, p)
	}
	return out, nil
}

// principal matches one value of a source attribute. Identities are the SPIFFE URI of the
// mTLS peer of the HBONE connection to the waypoint (authenticated.principal_name).
func (c ruleCompiler) principal(key, v string) (*rbacpb.Principal, error) {
	switch {
	case key == "source.principal":
		return authenticated(stringMatcherWithPrefix(c.migrateTrustDomain(v), spiffePrefix)), nil
	case key == "source.namespace":
		parts := strings.Split(v, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		return authenticated(regexMatcher(fmt.Sprintf(".*/ns/%s/.*", strings.Join(parts, ".*")))), nil
	case key == "source.serviceAccount":
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = c.policyNS, v
		}
		return authenticated(regexMatcher(fmt.Sprintf("spiffe://.+/ns/%s/(.+/|)sa/%s(/.+)?", regexp.QuoteMeta(ns), regexp.QuoteMeta(sa)))), nil
	case key == "source.trustDomain":
		switch {
		case v == "*":
			return authenticated(prefixMatcher(spiffePrefix, false)), nil
		case !strings.Contains(v, "*"):
			return authenticated(prefixMatcher(spiffePrefix+v+"/", false)), nil
		}
		before, after, _ := strings.Cut(v, "*")
		return authenticated(regexMatcher(fmt.Sprintf("spiffe://%s[^/]*%s/.*", regexp.QuoteMeta(before), regexp.QuoteMeta(after)))), nil
	case key == "source.ip", key == "remote.ip":
		cidr, err := cidrRange(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if key == "remote.ip" {
			return &rbacpb.Principal{Identifier: &rbacpb.Principal_RemoteIp{RemoteIp: cidr}}, nil
		}
		return &rbacpb.Principal{Identifier: &rbacpb.Principal_DirectRemoteIp{DirectRemoteIp: cidr}}, nil
	case strings.HasPrefix(key, "request.headers["):
		name := strings.TrimPrefix(key, "request.headers")
		if !strings.HasPrefix(name, "[") || !strings.HasSuffix(name, "]") || len(name) < 3 {
			return nil, fmt.Errorf("when %s: expecting request.headers[<name>]", key)
		}
		return &rbacpb.Principal{Identifier: &rbacpb.Principal_Header{Header: headerMatcher(name[1:len(name)-1], v, false)}}, nil
	case key == "request.auth.principal":
		return nil, fmt.Errorf("requestPrincipals: %w (hint: no RequestAuthentication is supported)", ErrUnsupported)
	}
	return nil, fmt.Errorf("%s: unknown source attribute", key)
}

// permission matches one value of a request attribute.
func permission(key, v string) (*rbacpb.Permission, error) {
	switch key {
	case ":authority":
		return &rbacpb.Permission{Rule: &rbacpb.Permission_Header{Header: headerMatcher(key, v, true)}}, nil
	case ":method":
		return &rbacpb.Permission{Rule: &rbacpb.Permission_Header{Header: headerMatcher(key, v, false)}}, nil
	case "request.path":
		if strings.Contains(v, "{*}") || strings.Contains(v, "{**}") {
			return nil, fmt.Errorf("path template %q: %w", v, ErrUnsupported)
		}
		return &rbacpb.Permission{Rule: &rbacpb.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
			Rule: &matcherv3.PathMatcher_Path{Path: stringMatcherWithPrefix(v, "")},
		}}}, nil
	case "destination.port":
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q is not a port number", v)
		}
		return &rbacpb.Permission{Rule: &rbacpb.Permission_DestinationPort{DestinationPort: uint32(p)}}, nil
	case "destination.ip":
		cidr, err := cidrRange(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		return &rbacpb.Permission{Rule: &rbacpb.Permission_DestinationIp{DestinationIp: cidr}}, nil
	}
	return nil, fmt.Errorf("%s: unknown request attribute", key)
}

// migrateTrustDomain rewrites a principal of trust domain cluster.local to the mesh trust
// domain, as istiod's trust domain bundle does (without aliases).
func (c ruleCompiler) migrateTrustDomain(v string) string {
	if strings.HasPrefix(v, "*") || c.trustDomain == defaultTrustDomain {
		return v
	}
	if rest, ok := strings.CutPrefix(v, defaultTrustDomain+"/"); ok {
		return c.trustDomain + "/" + rest
	}
	return v
}

func authenticated(m *matcherv3.StringMatcher) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_Authenticated_{
		Authenticated: &rbacpb.Principal_Authenticated{PrincipalName: m},
	}}
}

// stringMatcherWithPrefix is Istio's value syntax: "*" presence (any non-empty), "*x" suffix,
// "x*" prefix, otherwise exact; prefix is prepended to what is matched.
func stringMatcherWithPrefix(v, prefix string) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return regexMatcher(".+")
	case strings.HasPrefix(v, "*"):
		if prefix == "" {
			return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
		}
		return regexMatcher(regexp.QuoteMeta(prefix) + ".*" + regexp.QuoteMeta(v[1:]))
	case strings.HasSuffix(v, "*"):
		return prefixMatcher(prefix+strings.TrimSuffix(v, "*"), false)
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: prefix + v}}
}

// headerMatcher is Istio's header value syntax: "*" presence, "*x" suffix, "x*" prefix,
// otherwise exact; ignoreCase for hosts.
func headerMatcher(name, v string, ignoreCase bool) *routev3.HeaderMatcher {
	hm := &routev3.HeaderMatcher{Name: name}
	var m *matcherv3.StringMatcher
	switch {
	case v == "*":
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		return hm
	case strings.HasPrefix(v, "*"):
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
	case strings.HasSuffix(v, "*"):
		m = prefixMatcher(v[:len(v)-1], false)
	default:
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
	}
	m.IgnoreCase = ignoreCase
	hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: m}
	return hm
}

func regexMatcher(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

func prefixMatcher(p string, ignoreCase bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{IgnoreCase: ignoreCase, MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}
}

// cidrRange parses an address (a /32 or /128) or a CIDR.
func cidrRange(v string) (*corev3.CidrRange, error) {
	if p, err := netip.ParsePrefix(v); err == nil {
		return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IP address or CIDR", v)
	}
	return &corev3.CidrRange{AddressPrefix: a.String(), PrefixLen: wrapperspb.UInt32(uint32(a.BitLen()))}, nil
}
