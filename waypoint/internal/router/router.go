// Package router applies a route's action to a request, as pure functions over the
// compiled route (package l7config): the weighted choice of a cluster, the upstream path
// after prefix or regex rewrite, and the Location of a redirect, with Envoy's semantics.
//
// It does not match routes (l7config does), resolve clusters to endpoints or do I/O
// (package proxy does).
package router

import (
	"net"
	"strconv"
	"strings"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

// PickCluster returns the weighted cluster that r selects, for r drawn uniformly from
// [0, f.TotalWeight): the first cluster whose cumulative weight exceeds r.
func PickCluster(f *l7config.Forward, r uint32) *l7config.WeightedCluster {
	var acc uint64
	for i := range f.Clusters {
		acc += uint64(f.Clusters[i].Weight)
		if uint64(r) < acc {
			return &f.Clusters[i]
		}
	}
	return &f.Clusters[len(f.Clusters)-1]
}

// splitQuery splits a request target into its path and its query (with the '?').
func splitQuery(target string) (path, query string) {
	if i := strings.IndexByte(target, '?'); i >= 0 {
		return target[:i], target[i:]
	}
	return target, ""
}

// rewritePrefix replaces the part of path that the route's prefix (or exact path) matched.
func rewritePrefix(m *l7config.Match, path, with string) string {
	n := len(m.Path)
	if n > len(path) {
		return path
	}
	return with + path[n:]
}

// UpstreamPath returns the request target (path and query) to send upstream.
func UpstreamPath(rt *l7config.Route, target string) string {
	f := rt.Forward
	if f == nil {
		return target
	}
	path, q := splitQuery(target)
	switch {
	case f.PrefixRewrite != "":
		path = rewritePrefix(&rt.Match, path, f.PrefixRewrite)
	case f.RegexRewrite != nil:
		path = f.RegexRewrite.ReplaceAllString(path, f.RegexSubst)
	}
	return path + q
}

// UpstreamHost returns the Host to send upstream: the rewrite, or the request's.
func UpstreamHost(rt *l7config.Route, host string) string {
	if rt.Forward != nil && rt.Forward.HostRewrite != "" {
		return rt.Forward.HostRewrite
	}
	return host
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http":
		return "80"
	case "https":
		return "443"
	}
	return ""
}

// RedirectLocation returns the Location of rt's redirect for a request with scheme, host
// (:authority) and target (path and query).
func RedirectLocation(rt *l7config.Route, scheme, host, target string) string {
	rd := rt.Redirect
	if scheme == "" {
		scheme = "http"
	}
	newScheme := scheme
	if rd.Scheme != "" {
		newScheme = rd.Scheme
	}
	hostname, port := host, ""
	if h, p, err := net.SplitHostPort(host); err == nil {
		hostname, port = h, p
		if strings.Contains(h, ":") {
			hostname = "[" + h + "]"
		}
	}
	if rd.Host != "" {
		hostname, port = rd.Host, ""
		if h, p, err := net.SplitHostPort(rd.Host); err == nil {
			hostname, port = h, p
		}
	}
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(int(rd.Port))
	case newScheme != scheme && port == defaultPort(scheme):
		port = ""
	}
	if port == defaultPort(newScheme) {
		port = ""
	}
	authority := hostname
	if port != "" {
		authority += ":" + port
	}

	path, q := splitQuery(target)
	switch {
	case rd.HasPath:
		if p, nq := splitQuery(rd.Path); nq != "" {
			path, q = p, nq
		} else {
			path = rd.Path
		}
	case rd.HasPrefix:
		path = rewritePrefix(&rt.Match, path, rd.PrefixRewrite)
	case rd.RegexRewrite != nil:
		path = rd.RegexRewrite.ReplaceAllString(path, rd.RegexSubst)
	}
	if rd.StripQuery {
		q = ""
	}
	return newScheme + "://" + authority + path + q
}
