package match

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

func exact(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

func regex(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: v}}}
}

func TestString(t *testing.T) {
	tests := []struct {
		name  string
		m     *matcherv3.StringMatcher
		match []string
		miss  []string
	}{
		{"exact", exact("/api"), []string{"/api"}, []string{"/API", "/api/", ""}},
		{"exact ignore case", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "/Api"}, IgnoreCase: true},
			[]string{"/api", "/API"}, []string{"/apis"}},
		{"prefix", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/api/"}},
			[]string{"/api/", "/api/v1"}, []string{"/api", "/API/v1"}},
		{"prefix ignore case", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "Bearer "}, IgnoreCase: true},
			[]string{"bearer x", "BEARER x"}, []string{"basic x"}},
		{"suffix", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: ".json"}},
			[]string{"a.json", ".json"}, []string{"a.json.gz", "a.JSON"}},
		{"contains", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "/ns/"}},
			[]string{"spiffe://td/ns/x/sa/y"}, []string{"spiffe://td/NS/x"}},
		// Envoy's safe_regex matches the whole value; ignore_case does not apply to it.
		{"regex matches the whole value", regex("v[0-9]+"), []string{"v1", "v42"}, []string{"xv1", "v1x", "V1", ""}},
		{"regex alternation is anchored as a whole", regex("a|b"), []string{"a", "b"}, []string{"ab", "ba"}},
		{"regex ignore case has no effect", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
			SafeRegex: &matcherv3.RegexMatcher{Regex: "abc"}}, IgnoreCase: true}, []string{"abc"}, []string{"ABC"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := CompileString(tt.m)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range tt.match {
				if !s.Match(v) {
					t.Errorf("%q does not match, want a match", v)
				}
			}
			for _, v := range tt.miss {
				if s.Match(v) {
					t.Errorf("%q matches, want no match", v)
				}
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	if _, err := CompileString(nil); err == nil {
		t.Error("nil string matcher compiled")
	}
	if _, err := CompileString(regex("(")); err == nil {
		t.Error("bad regex compiled")
	}
	if _, err := CompileHeader(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}); err == nil {
		t.Error("header matcher without a name compiled")
	}
	if _, err := CompileHeader(&routev3.HeaderMatcher{Name: "x", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regex("[")}}); err == nil {
		t.Error("header matcher with a bad regex compiled")
	}
	var zero String
	if zero.Match("") || zero.Match("x") {
		t.Error("the zero String matches")
	}
}

func TestHeader(t *testing.T) {
	req := &Request{Method: "POST", Path: "/a/b?x=1", Host: "reviews:9080", Header: http.Header{
		"X-Version": {"v2"}, "X-Multi": {"a", "b"}, "X-Empty": {""}, "X-Count": {"42"},
	}}
	present := func(name string, v, invert bool) *routev3.HeaderMatcher {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: v}, InvertMatch: invert}
	}
	str := func(name string, m *matcherv3.StringMatcher, invert bool) *routev3.HeaderMatcher {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}, InvertMatch: invert}
	}
	tests := []struct {
		name string
		m    *routev3.HeaderMatcher
		want bool
	}{
		{"exact", str("x-version", exact("v2"), false), true},
		{"exact, any case of name", str("X-VERSION", exact("v2"), false), true},
		{"exact mismatch", str("x-version", exact("v1"), false), false},
		{"inverted mismatch", str("x-version", exact("v1"), true), true},
		{"inverted match", str("x-version", exact("v2"), true), false},
		{"absent header fails", str("x-missing", exact(""), false), false},
		// Envoy: an absent header fails a value matcher, inverted or not; only
		// treat_missing_header_as_empty lets the inversion apply.
		{"absent header, inverted", str("x-missing", exact("v1"), true), false},
		{"absent header treated as empty", &routev3.HeaderMatcher{Name: "x-missing",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("")}, TreatMissingHeaderAsEmpty: true}, true},
		{"absent header treated as empty, inverted", &routev3.HeaderMatcher{Name: "x-missing", InvertMatch: true,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("v1")}, TreatMissingHeaderAsEmpty: true}, true},
		{"empty value is present", present("x-empty", true, false), true},
		{"present", present("x-version", true, false), true},
		{"present, absent", present("x-missing", true, false), false},
		{"present false, absent", present("x-missing", false, false), true},
		{"present false, present", present("x-version", false, false), false},
		{"present, inverted", present("x-version", true, true), false},
		{"present, absent, inverted", present("x-missing", true, true), true},
		{"no specifier means present", &routev3.HeaderMatcher{Name: "x-version"}, true},
		{"no specifier, absent", &routev3.HeaderMatcher{Name: "x-missing"}, false},
		{"repeated header joined with commas", str("x-multi", exact("a,b"), false), true},
		{"legacy exact_match", &routev3.HeaderMatcher{Name: "x-version", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "v2"}}, true},
		{"legacy safe_regex_match", &routev3.HeaderMatcher{Name: "x-version",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: &matcherv3.RegexMatcher{Regex: "v[12]"}}}, true},
		{"range start inclusive", &routev3.HeaderMatcher{Name: "x-count",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 42, End: 43}}}, true},
		{"range end exclusive", &routev3.HeaderMatcher{Name: "x-count",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 0, End: 42}}}, false},
		{"range, not a number", &routev3.HeaderMatcher{Name: "x-version",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 0, End: 100}}}, false},
		{":method", str(":method", exact("POST"), false), true},
		{":path is the whole target", str(":path", exact("/a/b?x=1"), false), true},
		{":authority", str(":authority", exact("reviews:9080"), false), true},
		{":scheme defaults to http", str(":scheme", exact("http"), false), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := CompileHeader(tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.Match(req); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestURLPath(t *testing.T) {
	for in, want := range map[string]string{"/a/b?x=1": "/a/b", "/a#frag": "/a", "/a?x#y": "/a", "/": "/", "": ""} {
		if got := (&Request{Path: in}).URLPath(); got != want {
			t.Errorf("URLPath(%q) = %q, want %q", in, got, want)
		}
	}
}
