// Package match compiles Envoy's request matchers (envoy.type.matcher.v3.StringMatcher,
// RegexMatcher and envoy.config.route.v3.HeaderMatcher) into Go values that the waypoint's
// route table and RBAC engine evaluate against an HTTP request, with Envoy's semantics:
// regexes match the whole value (RE2), a header that appears several times is matched as
// its values joined with ",", and pseudo-headers (:method, :path, :authority, :scheme) read
// the request line.
//
// It is not a router or a policy engine: it answers "does this value match", nothing
// more. Compile errors name the unsupported field, so callers can NACK.
package match

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Request is what matchers read of an HTTP request.
type Request struct {
	Method string
	// Path is the request target as sent, with the query (Envoy's :path).
	Path   string
	Host   string // :authority
	Scheme string // :scheme; "http" if empty
	Header http.Header
}

// URLPath is Path without its query and fragment.
func (r *Request) URLPath() string {
	p := r.Path
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return p
}

// Lookup returns the value of header name (lowercase or any case; pseudo-headers too) and
// whether it is present. Repeated headers are joined with ",".
func (r *Request) Lookup(name string) (string, bool) {
	switch strings.ToLower(name) {
	case ":method":
		return r.Method, r.Method != ""
	case ":path":
		return r.Path, r.Path != ""
	case ":authority", "host":
		return r.Host, r.Host != ""
	case ":scheme":
		if r.Scheme == "" {
			return "http", true
		}
		return r.Scheme, true
	}
	vs, ok := r.Header[http.CanonicalHeaderKey(name)]
	if !ok || len(vs) == 0 {
		return "", false
	}
	return strings.Join(vs, ","), true
}

// Regex compiles an Envoy RegexMatcher so that it matches whole values, as Envoy's
// safe_regex does.
func Regex(m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if m == nil {
		return nil, fmt.Errorf("regex matcher is empty")
	}
	return FullRegex(m.GetRegex())
}

// FullRegex compiles expr (RE2 syntax) anchored at both ends.
func FullRegex(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("bad regex %q: %w", expr, err)
	}
	return re, nil
}

// String is a compiled StringMatcher. The zero value matches nothing.
type String struct {
	kind       stringKind
	val        string
	re         *regexp.Regexp
	ignoreCase bool
}

type stringKind uint8

const (
	stringNone stringKind = iota
	stringExact
	stringPrefix
	stringSuffix
	stringContains
	stringRegex
)

// CompileString compiles m; a nil or empty matcher, or a custom one, is an error.
func CompileString(m *matcherv3.StringMatcher) (String, error) {
	s := String{ignoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		s.kind, s.val = stringExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		s.kind, s.val = stringPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		s.kind, s.val = stringSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		s.kind, s.val = stringContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := Regex(p.SafeRegex)
		if err != nil {
			return String{}, err
		}
		s.kind, s.re = stringRegex, re
	case nil:
		return String{}, fmt.Errorf("string matcher has no pattern")
	default:
		return String{}, fmt.Errorf("unsupported string matcher %T", p)
	}
	if s.ignoreCase {
		s.val = strings.ToLower(s.val)
	}
	return s, nil
}

// Match reports whether v matches.
func (s String) Match(v string) bool {
	if s.ignoreCase && s.kind != stringRegex {
		v = strings.ToLower(v)
	}
	switch s.kind {
	case stringExact:
		return v == s.val
	case stringPrefix:
		return strings.HasPrefix(v, s.val)
	case stringSuffix:
		return strings.HasSuffix(v, s.val)
	case stringContains:
		return strings.Contains(v, s.val)
	case stringRegex:
		return s.re.MatchString(v)
	}
	return false
}

// Header is a compiled HeaderMatcher.
type Header struct {
	name          string
	str           *String
	present       *bool
	rangeLo, rhi  int64
	isRange       bool
	invert        bool
	missingAsEmpt bool
}

// CompileHeader compiles m.
func CompileHeader(m *routev3.HeaderMatcher) (Header, error) {
	if m.GetName() == "" {
		return Header{}, fmt.Errorf("header matcher has no name")
	}
	h := Header{name: strings.ToLower(m.GetName()), invert: m.GetInvertMatch(), missingAsEmpt: m.GetTreatMissingHeaderAsEmpty()}
	var sm *matcherv3.StringMatcher
	switch p := m.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: p.ExactMatch}}
	case *routev3.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p.PrefixMatch}}
	case *routev3.HeaderMatcher_SuffixMatch:
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: p.SuffixMatch}}
	case *routev3.HeaderMatcher_ContainsMatch:
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: p.ContainsMatch}}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: p.SafeRegexMatch}}
	case *routev3.HeaderMatcher_StringMatch:
		sm = p.StringMatch
	case *routev3.HeaderMatcher_PresentMatch:
		v := p.PresentMatch
		h.present = &v
	case *routev3.HeaderMatcher_RangeMatch:
		h.isRange, h.rangeLo, h.rhi = true, p.RangeMatch.GetStart(), p.RangeMatch.GetEnd()
	case nil: // Envoy: no specifier means "present"
		v := true
		h.present = &v
	default:
		return Header{}, fmt.Errorf("header %q: unsupported match %T", m.GetName(), p)
	}
	if sm != nil {
		s, err := CompileString(sm)
		if err != nil {
			return Header{}, fmt.Errorf("header %q: %w", m.GetName(), err)
		}
		h.str = &s
	}
	return h, nil
}

// Name returns the lowercase header name the matcher reads.
func (h Header) Name() string { return h.name }

// Match reports whether the request's header matches, with Envoy's treatment of an absent
// header: a presence matcher compares presence (then inverted), any other matcher fails
// even when inverted, unless treat_missing_header_as_empty matches it as "".
func (h Header) Match(r *Request) bool {
	v, ok := r.Lookup(h.name)
	if !ok && h.missingAsEmpt {
		v, ok = "", true
	}
	if !ok {
		if h.present != nil {
			return !*h.present != h.invert
		}
		return false
	}
	var m bool
	switch {
	case h.present != nil:
		m = *h.present
	case h.isRange:
		n, err := strconv.ParseInt(v, 10, 64)
		m = err == nil && n >= h.rangeLo && n < h.rhi
	case h.str != nil:
		m = h.str.Match(v)
	}
	return m != h.invert
}
