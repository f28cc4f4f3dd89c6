package l7config

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/authz"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

// Compile validates rc and compiles it. Errors name the virtual host and route.
func Compile(rc *routev3.RouteConfiguration) (*Table, error) {
	if rc == nil {
		return nil, errors.New("empty route configuration")
	}
	t := &Table{Name: rc.GetName(), byPort: map[uint16]*VirtualHost{}}
	for i, v := range rc.GetVirtualHosts() {
		vh, port, err := compileVirtualHost(v)
		if err != nil {
			return nil, fmt.Errorf("virtual host %d (%s): %w", i, v.GetName(), err)
		}
		if port == 0 {
			if t.any == nil {
				t.any = vh
			}
			continue
		}
		if _, dup := t.byPort[port]; dup {
			return nil, fmt.Errorf("virtual host %d (%s): a second virtual host for port %d", i, v.GetName(), port)
		}
		t.byPort[port] = vh
	}
	return t, nil
}

// vhostPort is the port a virtual host serves: from its name `<hostname>:<port>`, else
// from a `<host>:<port>` domain; 0 for any port.
func vhostPort(v *routev3.VirtualHost) (uint16, error) {
	candidates := append([]string{v.GetName()}, v.GetDomains()...)
	for _, c := range candidates {
		i := strings.LastIndexByte(c, ':')
		if i < 0 || strings.HasSuffix(c, "]") {
			continue
		}
		p, err := strconv.ParseUint(c[i+1:], 10, 16)
		if err != nil || p == 0 {
			if c[i+1:] == "*" {
				continue
			}
			return 0, fmt.Errorf("bad port in %q", c)
		}
		return uint16(p), nil
	}
	return 0, nil
}

func compileVirtualHost(v *routev3.VirtualHost) (*VirtualHost, uint16, error) {
	port, err := vhostPort(v)
	if err != nil {
		return nil, 0, err
	}
	vh := &VirtualHost{Name: v.GetName()}
	if vh.Authz, err = authz.Compile(v.GetTypedPerFilterConfig()); err != nil {
		return nil, 0, fmt.Errorf("authorization: %w", err)
	}
	if vh.RequestHeaders, err = headerMods(v.GetRequestHeadersToAdd(), v.GetRequestHeadersToRemove()); err != nil {
		return nil, 0, err
	}
	if vh.ResponseHeaders, err = headerMods(v.GetResponseHeadersToAdd(), v.GetResponseHeadersToRemove()); err != nil {
		return nil, 0, err
	}
	//lint:ignore SA1019 a virtual host that still sets the deprecated cors field is refused, not silently served
	if len(v.GetRequestMirrorPolicies()) > 0 || v.GetRetryPolicy() != nil || v.GetCors() != nil || len(v.GetRateLimits()) > 0 {
		return nil, 0, errors.New("virtual host level mirror, retry, cors or rate limit policies are not supported")
	}
	for i, r := range v.GetRoutes() {
		rt, err := compileRoute(r)
		if err != nil {
			return nil, 0, fmt.Errorf("route %d (%s): %w", i, r.GetName(), err)
		}
		vh.Routes = append(vh.Routes, rt)
	}
	return vh, port, nil
}

func compileRoute(r *routev3.Route) (*Route, error) {
	rt := &Route{Name: r.GetName()}
	var err error
	if rt.Match, err = compileMatch(r.GetMatch()); err != nil {
		return nil, fmt.Errorf("match: %w", err)
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		if rt.Forward, err = compileForward(a.Route, rt.Match); err != nil {
			return nil, fmt.Errorf("route action: %w", err)
		}
	case *routev3.Route_Redirect:
		if rt.Redirect, err = compileRedirect(a.Redirect, rt.Match); err != nil {
			return nil, fmt.Errorf("redirect: %w", err)
		}
	case *routev3.Route_DirectResponse:
		if rt.Direct, err = compileDirect(a.DirectResponse); err != nil {
			return nil, fmt.Errorf("direct response: %w", err)
		}
	case nil:
		return nil, errors.New("no action")
	default:
		return nil, fmt.Errorf("unsupported action %T", a)
	}
	if rt.RequestHeaders, err = headerMods(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove()); err != nil {
		return nil, err
	}
	if rt.ResponseHeaders, err = headerMods(r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	return rt, nil
}

func compileMatch(m *routev3.RouteMatch) (Match, error) {
	var out Match
	if m == nil {
		return out, errors.New("no match")
	}
	out.CaseInsensitive = m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.PathKind, out.Path = PathPrefix, p.Prefix
	case *routev3.RouteMatch_Path:
		out.PathKind, out.Path = PathExact, p.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		if strings.ContainsAny(p.PathSeparatedPrefix, "?#") || strings.HasSuffix(p.PathSeparatedPrefix, "/") {
			return out, fmt.Errorf("bad path_separated_prefix %q", p.PathSeparatedPrefix)
		}
		out.PathKind, out.Path = PathSeparatedPrefix, p.PathSeparatedPrefix
	case *routev3.RouteMatch_SafeRegex:
		re, err := match.Regex(p.SafeRegex)
		if err != nil {
			return out, fmt.Errorf("path: %w", err)
		}
		out.PathKind, out.Regex = PathRegex, re
	case nil:
		return out, errors.New("no path specifier")
	default:
		return out, fmt.Errorf("unsupported path specifier %T", p)
	}
	if m.GetRuntimeFraction() != nil || len(m.GetCookies()) > 0 || m.GetGrpc() != nil || m.GetTlsContext() != nil ||
		len(m.GetDynamicMetadata()) > 0 || len(m.GetFilterState()) > 0 {
		return out, errors.New("unsupported match field (runtime_fraction, cookies, grpc, tls_context, dynamic_metadata or filter_state)")
	}
	for i, h := range m.GetHeaders() {
		c, err := match.CompileHeader(h)
		if err != nil {
			return out, fmt.Errorf("header %d: %w", i, err)
		}
		out.Headers = append(out.Headers, c)
	}
	for i, q := range m.GetQueryParameters() {
		if q.GetName() == "" {
			return out, fmt.Errorf("query parameter %d has no name", i)
		}
		qm := QueryMatch{Name: q.GetName()}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *routev3.QueryParameterMatcher_PresentMatch:
			if !s.PresentMatch {
				return out, fmt.Errorf("query parameter %q: present_match false is not supported", q.GetName())
			}
			qm.Present = true
		case *routev3.QueryParameterMatcher_StringMatch:
			c, err := match.CompileString(s.StringMatch)
			if err != nil {
				return out, fmt.Errorf("query parameter %q: %w", q.GetName(), err)
			}
			qm.Value = &c
		default:
			return out, fmt.Errorf("query parameter %q: unsupported match %T", q.GetName(), s)
		}
		out.Query = append(out.Query, qm)
	}
	return out, nil
}

func compileForward(a *routev3.RouteAction, m Match) (*Forward, error) {
	f := &Forward{Timeout: DefaultTimeout}
	switch c := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		cl, err := ParseCluster(c.Cluster)
		if err != nil {
			return nil, err
		}
		f.Clusters, f.TotalWeight = []WeightedCluster{{Cluster: cl, Weight: 1}}, 1
	case *routev3.RouteAction_WeightedClusters:
		if c.WeightedClusters.GetHeaderName() != "" || c.WeightedClusters.GetUseHashPolicy() != nil {
			return nil, errors.New("weighted clusters by header or hash are not supported")
		}
		var total uint64
		for _, wc := range c.WeightedClusters.GetClusters() {
			if wc.GetClusterHeader() != "" {
				return nil, errors.New("weighted cluster_header is not supported")
			}
			cl, err := ParseCluster(wc.GetName())
			if err != nil {
				return nil, err
			}
			w := WeightedCluster{Cluster: cl, Weight: wc.GetWeight().GetValue()}
			var err2 error
			if w.RequestHeaders, err2 = headerMods(wc.GetRequestHeadersToAdd(), wc.GetRequestHeadersToRemove()); err2 != nil {
				return nil, err2
			}
			if w.ResponseHeaders, err2 = headerMods(wc.GetResponseHeadersToAdd(), wc.GetResponseHeadersToRemove()); err2 != nil {
				return nil, err2
			}
			total += uint64(w.Weight)
			f.Clusters = append(f.Clusters, w)
		}
		if total == 0 || total > math.MaxUint32 {
			return nil, fmt.Errorf("weighted clusters: total weight %d, want 1..%d", total, uint32(math.MaxUint32))
		}
		f.TotalWeight = uint32(total)
	case nil:
		return nil, errors.New("no cluster")
	default:
		return nil, fmt.Errorf("unsupported cluster specifier %T", c)
	}
	if a.GetPathRewritePolicy() != nil || a.GetHostRewriteSpecifier() != nil && a.GetHostRewriteLiteral() == "" {
		return nil, errors.New("only prefix_rewrite, regex_rewrite and host_rewrite_literal rewrites are supported")
	}
	f.HostRewrite = a.GetHostRewriteLiteral()
	code, ok := map[routev3.RouteAction_ClusterNotFoundResponseCode]int{
		routev3.RouteAction_SERVICE_UNAVAILABLE: 503, routev3.RouteAction_NOT_FOUND: 404, routev3.RouteAction_INTERNAL_SERVER_ERROR: 500,
	}[a.GetClusterNotFoundResponseCode()]
	if !ok {
		return nil, fmt.Errorf("unknown cluster_not_found_response_code %v", a.GetClusterNotFoundResponseCode())
	}
	f.ClusterNotFound = code
	if a.GetPrefixRewrite() != "" {
		if m.PathKind == PathRegex {
			return nil, errors.New("prefix_rewrite needs a prefix or path match")
		}
		f.PrefixRewrite = a.GetPrefixRewrite()
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		if f.PrefixRewrite != "" {
			return nil, errors.New("both prefix_rewrite and regex_rewrite")
		}
		re, subst, err := regexRewrite(rr)
		if err != nil {
			return nil, err
		}
		f.RegexRewrite, f.RegexSubst = re, subst
	}
	for i, mp := range a.GetRequestMirrorPolicies() {
		cl, err := ParseCluster(mp.GetCluster())
		if err != nil {
			return nil, fmt.Errorf("mirror %d: %w", i, err)
		}
		if mp.GetClusterHeader() != "" {
			return nil, fmt.Errorf("mirror %d: cluster_header is not supported", i)
		}
		pct := 100.0
		if rf := mp.GetRuntimeFraction(); rf != nil {
			pct = percent(rf.GetDefaultValue())
		}
		f.Mirrors = append(f.Mirrors, Mirror{Cluster: cl, Percent: pct})
	}
	if a.GetTimeout() != nil {
		if err := a.GetTimeout().CheckValid(); err != nil || a.GetTimeout().AsDuration() < 0 {
			return nil, fmt.Errorf("bad timeout %v", a.GetTimeout())
		}
		f.Timeout = a.GetTimeout().AsDuration()
	}
	pt, err := perTryTimeout(a.GetRetryPolicy())
	if err != nil {
		return nil, fmt.Errorf("retry_policy: %w", err)
	}
	f.PerTryTimeout = pt
	return f, nil
}

func percent(fp *typev3.FractionalPercent) float64 {
	d := map[typev3.FractionalPercent_DenominatorType]float64{
		typev3.FractionalPercent_HUNDRED: 100, typev3.FractionalPercent_TEN_THOUSAND: 10000, typev3.FractionalPercent_MILLION: 1e6,
	}[fp.GetDenominator()]
	return min(100, 100*float64(fp.GetNumerator())/d)
}

// regexRewrite compiles a RegexMatchAndSubstitute. The pattern is not anchored (Envoy
// replaces every match); the substitution's \N become Go's ${N}.
func regexRewrite(rr *matcherv3.RegexMatchAndSubstitute) (*regexp.Regexp, string, error) {
	re, err := regexp.Compile(rr.GetPattern().GetRegex())
	if err != nil || rr.GetPattern() == nil {
		return nil, "", fmt.Errorf("regex_rewrite: bad regex %q: %v", rr.GetPattern().GetRegex(), err)
	}
	return re, envoySubst(rr.GetSubstitution()), nil
}

var backref = regexp.MustCompile(`\\([0-9])`)

func envoySubst(s string) string {
	s = strings.ReplaceAll(s, "$", "$$")
	return backref.ReplaceAllString(s, `$${$1}`)
}

func compileRedirect(r *routev3.RedirectAction, m Match) (*Redirect, error) {
	rd := &Redirect{Host: r.GetHostRedirect(), Port: r.GetPortRedirect(), StripQuery: r.GetStripQuery()}
	if r.GetPortRedirect() > 65535 {
		return nil, fmt.Errorf("bad port %d", r.GetPortRedirect())
	}
	switch s := r.GetSchemeRewriteSpecifier().(type) {
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			rd.Scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.Scheme = strings.ToLower(s.SchemeRedirect)
	}
	switch p := r.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		rd.Path, rd.HasPath = p.PathRedirect, true
	case *routev3.RedirectAction_PrefixRewrite:
		if m.PathKind == PathRegex {
			return nil, errors.New("prefix_rewrite needs a prefix or path match")
		}
		rd.PrefixRewrite, rd.HasPrefix = p.PrefixRewrite, true
	case *routev3.RedirectAction_RegexRewrite:
		re, subst, err := regexRewrite(p.RegexRewrite)
		if err != nil {
			return nil, err
		}
		rd.RegexRewrite, rd.RegexSubst = re, subst
	case nil:
	default:
		return nil, fmt.Errorf("unsupported path rewrite %T", p)
	}
	code, ok := map[routev3.RedirectAction_RedirectResponseCode]int{
		routev3.RedirectAction_MOVED_PERMANENTLY: 301, routev3.RedirectAction_FOUND: 302, routev3.RedirectAction_SEE_OTHER: 303,
		routev3.RedirectAction_TEMPORARY_REDIRECT: 307, routev3.RedirectAction_PERMANENT_REDIRECT: 308,
	}[r.GetResponseCode()]
	if !ok {
		return nil, fmt.Errorf("unknown response code %v", r.GetResponseCode())
	}
	rd.Code = code
	return rd, nil
}

func compileDirect(d *routev3.DirectResponseAction) (*Direct, error) {
	if d.GetStatus() < 200 || d.GetStatus() > 599 {
		return nil, fmt.Errorf("status %d, want 200..599", d.GetStatus())
	}
	out := &Direct{Status: int(d.GetStatus())}
	if d.GetBodyFormat() != nil {
		return nil, errors.New("body_format is not supported")
	}
	switch b := d.GetBody().GetSpecifier().(type) {
	case *corev3.DataSource_InlineString:
		out.Body = b.InlineString
	case *corev3.DataSource_InlineBytes:
		out.Body = string(b.InlineBytes)
	case nil:
	default:
		return nil, fmt.Errorf("body source %T is not supported (inline only)", b)
	}
	return out, nil
}

func headerMods(add []*corev3.HeaderValueOption, remove []string) (HeaderMods, error) {
	var m HeaderMods
	for _, r := range remove {
		if r == "" || strings.HasPrefix(r, ":") {
			return m, fmt.Errorf("cannot remove header %q", r)
		}
		m.Remove = append(m.Remove, r)
	}
	for _, a := range add {
		h := a.GetHeader()
		if h.GetKey() == "" || strings.HasPrefix(h.GetKey(), ":") || strings.EqualFold(h.GetKey(), "host") {
			return m, fmt.Errorf("cannot add header %q", h.GetKey())
		}
		if strings.ContainsAny(h.GetKey()+h.GetValue(), "\r\n\x00") {
			return m, fmt.Errorf("header %q: control characters", h.GetKey())
		}
		action := AppendAction(a.GetAppendAction())
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		if ap := a.GetAppend(); ap != nil && !ap.GetValue() { // deprecated append=false: overwrite
			action = OverwriteIfExistsOrAdd
		}
		if action > OverwriteIfExists {
			return m, fmt.Errorf("header %q: unknown append action %d", h.GetKey(), action)
		}
		v := h.GetValue()
		if v == "" && len(h.GetRawValue()) > 0 {
			v = string(h.GetRawValue())
		}
		m.Add = append(m.Add, HeaderAdd{Name: h.GetKey(), Value: v, Action: action})
	}
	return m, nil
}
