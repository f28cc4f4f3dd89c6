package l7

// HTTPRoute filters: header modifiers, redirect, URL rewrite and mirror, as istiod's
// createHeadersFilter, createRedirectFilter, createRewriteFilter and createMirrorFilter and
// then route.TranslateRoute do.

import (
	"fmt"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// headerOps are the header changes of one RequestHeaderModifier or ResponseHeaderModifier.
type headerOps struct {
	add    []*corev3.HeaderValueOption
	remove []string
	// host is the value set or added for Host (request only): it becomes host_rewrite_literal,
	// as Envoy cannot change Host as a header.
	host string
}

// headerModifier translates a header filter: set entries overwrite (OVERWRITE_IF_EXISTS_OR_ADD)
// then add entries append (APPEND_IF_EXISTS_OR_ADD); names are lowercased and the first of a
// repeated name wins; pseudo-headers and Host are dropped from the lists, a Host value becomes
// ops.host (set wins over add). An error names a value with control characters.
func headerModifier(f *gatewayv1.HTTPHeaderFilter) (headerOps, error) {
	var ops headerOps
	if f == nil {
		return ops, nil
	}
	var setHost, addHost string
	convert := func(hs []gatewayv1.HTTPHeader, action corev3.HeaderValueOption_HeaderAppendAction, host *string) error {
		seen := map[string]bool{}
		for _, h := range hs {
			if !validHeaderValue(h.Value) {
				return fmt.Errorf("header %q value contains invalid characters", h.Name)
			}
			name := strings.ToLower(string(h.Name))
			if seen[name] {
				continue
			}
			seen[name] = true
			if name == "host" || name == ":authority" {
				*host = h.Value
				continue
			}
			if strings.HasPrefix(name, ":") {
				continue
			}
			ops.add = append(ops.add, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: name, Value: h.Value},
				AppendAction: action,
			})
		}
		return nil
	}
	if err := convert(f.Set, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, &setHost); err != nil {
		return ops, err
	}
	if err := convert(f.Add, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, &addHost); err != nil {
		return ops, err
	}
	ops.host = addHost
	if setHost != "" {
		ops.host = setHost
	}
	for _, r := range f.Remove {
		name := strings.ToLower(r)
		if name == "host" || strings.HasPrefix(name, ":") {
			continue
		}
		ops.remove = append(ops.remove, name)
	}
	return ops, nil
}

// validHeaderValue is istiod's isValidHeaderValue: HTAB and visible characters only.
func validHeaderValue(v string) bool {
	for _, c := range []byte(v) {
		if c == 0x09 || c >= 0x20 && c != 0x7F {
			continue
		}
		return false
	}
	return true
}

// redirectAction translates a RequestRedirect for a route served on port. Without port,
// the request's port (the Service port) is kept unless a scheme is given, which implies its
// default port; :80 for http and :443 for https are left implicit. ReplacePrefixMatch
// becomes prefix_rewrite (of the path_separated_prefix matched). An error names an
// unsupported status code.
func redirectAction(f *gatewayv1.HTTPRequestRedirectFilter, port int32) (*routev3.RedirectAction, error) {
	out := &routev3.RedirectAction{}
	if f.Hostname != nil {
		out.HostRedirect = string(*f.Hostname)
	}
	scheme := "http"
	if f.Scheme != nil {
		scheme = *f.Scheme
		out.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: scheme}
	}
	switch {
	case f.Port != nil:
		out.PortRedirect = uint32(*f.Port)
	case f.Scheme == nil:
		out.PortRedirect = uint32(port)
	}
	if (out.PortRedirect == 80 && scheme == "http") || (out.PortRedirect == 443 && scheme == "https") {
		out.PortRedirect = 0
	}
	if p := f.Path; p != nil {
		switch p.Type {
		case gatewayv1.FullPathHTTPPathModifier:
			if p.ReplaceFullPath == nil {
				return nil, fmt.Errorf("redirect path ReplaceFullPath has no value")
			}
			out.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: *p.ReplaceFullPath}
		case gatewayv1.PrefixMatchHTTPPathModifier:
			if p.ReplacePrefixMatch == nil {
				return nil, fmt.Errorf("redirect path ReplacePrefixMatch has no value")
			}
			out.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: *p.ReplacePrefixMatch}
		default:
			return nil, fmt.Errorf("redirect path modifier type %q is not supported", p.Type)
		}
	}
	code := 302 // the CRD's default
	if f.StatusCode != nil {
		code = *f.StatusCode
	}
	switch code {
	case 301:
		out.ResponseCode = routev3.RedirectAction_MOVED_PERMANENTLY
	case 302:
		out.ResponseCode = routev3.RedirectAction_FOUND
	case 303:
		out.ResponseCode = routev3.RedirectAction_SEE_OTHER
	case 307:
		out.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		out.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
	default:
		return nil, fmt.Errorf("redirect status code %d is not supported", code)
	}
	return out, nil
}

// fullPathRewrite is the regex_rewrite pattern that replaces the whole path (ReplaceFullPath).
const fullPathRewrite = "^/.*$"

// applyRewrite applies a URLRewrite to a route action whose match is m. Hostname becomes
// host_rewrite_literal; ReplaceFullPath a regex_rewrite of the whole path; ReplacePrefixMatch
// (trailing "/" trimmed) a prefix_rewrite, except that "/" (remove the prefix) is a
// regex_rewrite keeping the "/" that follows the matched prefix, as istiod does. An error
// names a path modifier that cannot be translated.
func applyRewrite(a *routev3.RouteAction, f *gatewayv1.HTTPURLRewriteFilter, m *routev3.RouteMatch) error {
	if f.Hostname != nil {
		a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*f.Hostname)}
	}
	p := f.Path
	if p == nil {
		return nil
	}
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if p.ReplaceFullPath == nil {
			return fmt.Errorf("rewrite path ReplaceFullPath has no value")
		}
		a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
			Pattern:      &matcherv3.RegexMatcher{Regex: fullPathRewrite},
			Substitution: *p.ReplaceFullPath,
		}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if p.ReplacePrefixMatch == nil {
			return fmt.Errorf("rewrite path ReplacePrefixMatch has no value")
		}
		if m.GetPath() != "" || m.GetSafeRegex() != nil {
			return fmt.Errorf("rewrite path ReplacePrefixMatch needs a PathPrefix match")
		}
		prefix := strings.TrimSuffix(*p.ReplacePrefixMatch, "/")
		if prefix != "" {
			a.PrefixRewrite = prefix
			break
		}
		a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
			Pattern:      &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(m.GetPathSeparatedPrefix()) + `(/?)(.*)`},
			Substitution: `/\2`,
		}
	default:
		return fmt.Errorf("rewrite path modifier type %q is not supported", p.Type)
	}
	return nil
}

// mirrorFraction is the share of requests a RequestMirror copies: Percent, Fraction, or all.
func mirrorFraction(f *gatewayv1.HTTPRequestMirrorFilter) *corev3.RuntimeFractionalPercent {
	pct := &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}
	switch {
	case f.Percent != nil:
		pct.Numerator = uint32(max(*f.Percent, 0))
	case f.Fraction != nil:
		den := int64(100)
		if f.Fraction.Denominator != nil && *f.Fraction.Denominator > 0 {
			den = int64(*f.Fraction.Denominator)
		}
		num := min(max(int64(f.Fraction.Numerator), 0), den)
		if den != 100 {
			pct.Denominator = typev3.FractionalPercent_MILLION
			num = num * 1_000_000 / den
		}
		pct.Numerator = uint32(num)
	}
	return &corev3.RuntimeFractionalPercent{DefaultValue: pct}
}
