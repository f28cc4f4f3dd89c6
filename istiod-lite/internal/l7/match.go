package l7

// HTTPRouteMatch → Envoy RouteMatch, as istiod's createURIMatch/createHeadersMatch/... and
// TranslateRouteMatch do for gateway semantics.

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// headerMethod is the pseudo-header a method match tests.
const headerMethod = ":method"

// normalizeMatch fills the CRD defaults (PathPrefix "/", Exact header and query matches) and
// keeps the first of header names (case-insensitive) and query names (case-sensitive) that
// repeat, as Gateway API requires. A rule without matches has the single default match.
func normalizeMatch(m gatewayv1.HTTPRouteMatch) gatewayv1.HTTPRouteMatch {
	out := gatewayv1.HTTPRouteMatch{Method: m.Method}
	pathType, value := gatewayv1.PathMatchPathPrefix, "/"
	if m.Path != nil {
		if m.Path.Type != nil {
			pathType = *m.Path.Type
		}
		if m.Path.Value != nil {
			value = *m.Path.Value
		}
	}
	if pathType == gatewayv1.PathMatchPathPrefix && value != "/" {
		// "When specified, a trailing `/` is ignored."
		value = strings.TrimSuffix(value, "/")
	}
	out.Path = &gatewayv1.HTTPPathMatch{Type: &pathType, Value: &value}
	seen := map[string]bool{}
	for _, h := range m.Headers {
		name := strings.ToLower(string(h.Name))
		if seen[name] {
			continue
		}
		seen[name] = true
		t := gatewayv1.HeaderMatchExact
		if h.Type != nil {
			t = *h.Type
		}
		out.Headers = append(out.Headers, gatewayv1.HTTPHeaderMatch{Type: &t, Name: gatewayv1.HTTPHeaderName(name), Value: h.Value})
	}
	slices.SortStableFunc(out.Headers, func(a, b gatewayv1.HTTPHeaderMatch) int { return strings.Compare(string(a.Name), string(b.Name)) })
	seen = map[string]bool{}
	for _, q := range m.QueryParams {
		if seen[string(q.Name)] {
			continue
		}
		seen[string(q.Name)] = true
		t := gatewayv1.QueryParamMatchExact
		if q.Type != nil {
			t = *q.Type
		}
		out.QueryParams = append(out.QueryParams, gatewayv1.HTTPQueryParamMatch{Type: &t, Name: q.Name, Value: q.Value})
	}
	return out
}

// routeMatch translates a normalized match. PathPrefix uses path_separated_prefix, which has
// Gateway API's segment semantics (/foo matches /foo and /foo/bar, not /foobar); the prefix
// "/" stays a plain prefix. Headers are sorted by name, then :method. An error names a
// regular expression that does not compile (RE2, as Envoy's) or an unknown match type.
func routeMatch(m gatewayv1.HTTPRouteMatch) (*routev3.RouteMatch, error) {
	out := &routev3.RouteMatch{}
	value := *m.Path.Value
	switch *m.Path.Type {
	case gatewayv1.PathMatchExact:
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: value}
	case gatewayv1.PathMatchPathPrefix:
		if value == "/" {
			out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		} else {
			out.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: value}
		}
	case gatewayv1.PathMatchRegularExpression:
		if err := checkRegex("path", value); err != nil {
			return nil, err
		}
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: value}}
	default:
		return nil, fmt.Errorf("path match type %q is not supported", *m.Path.Type)
	}
	for _, h := range m.Headers {
		hm := &routev3.HeaderMatcher{Name: string(h.Name)}
		switch *h.Type {
		case gatewayv1.HeaderMatchExact:
			hm.HeaderMatchSpecifier = exactHeader(h.Value)
		case gatewayv1.HeaderMatchRegularExpression:
			if err := setRegexHeader(hm, h.Value); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("header match type %q is not supported", *h.Type)
		}
		out.Headers = append(out.Headers, hm)
	}
	if m.Method != nil {
		out.Headers = append(out.Headers, &routev3.HeaderMatcher{Name: headerMethod, HeaderMatchSpecifier: exactHeader(string(*m.Method))})
	}
	for _, q := range m.QueryParams {
		qm := &routev3.QueryParameterMatcher{Name: string(q.Name)}
		switch *q.Type {
		case gatewayv1.QueryParamMatchExact:
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: q.Value},
			}}
		case gatewayv1.QueryParamMatchRegularExpression:
			if q.Value == "*" {
				// istiod turns the non-regex "*" into a presence match.
				qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
				break
			}
			if err := checkRegex(fmt.Sprintf("query parameter %q", q.Name), q.Value); err != nil {
				return nil, err
			}
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: q.Value}},
			}}
		default:
			return nil, fmt.Errorf("query parameter match type %q is not supported", *q.Type)
		}
		out.QueryParameters = append(out.QueryParameters, qm)
	}
	return out, nil
}

func exactHeader(v string) *routev3.HeaderMatcher_StringMatch {
	return &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
		MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v},
	}}
}

func setRegexHeader(hm *routev3.HeaderMatcher, v string) error {
	if v == "*" {
		// istiod turns the non-regex "*" into a presence match.
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		return nil
	}
	if err := checkRegex(fmt.Sprintf("header %q", hm.Name), v); err != nil {
		return err
	}
	hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
		MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: v}},
	}}
	return nil
}

// checkRegex refuses an expression the waypoint would NACK; Go's regexp is RE2, as Envoy's.
func checkRegex(what, expr string) error {
	if _, err := regexp.Compile(expr); err != nil {
		return fmt.Errorf("%s regular expression %q: %w", what, expr, err)
	}
	return nil
}
