// Package l7config is the waypoint's L7 configuration: it validates each Envoy
// RouteConfiguration istiod-lite sends (one per Service, `<namespace>/<hostname>`, and one
// per Gateway, `gateway/<namespace>/<name>`) and compiles it into a route table — virtual
// hosts by port, routes in the order given with their matchers, actions and header
// modifiers, and the virtual host's RBAC engine. A configuration the waypoint cannot use
// (an unknown match or action, a bad regex, an unknown cluster form) is an error naming the
// resource and the problem: the caller NACKs the whole response and keeps the last good
// tables (Store).
//
// It decides which route a request takes (first match); applying the route's action
// (rewrites, redirects, weighted choice) is package router's, proxying is package proxy's.
package l7config

import (
	"net/http"
	"regexp"
	"time"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/authz"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

// DefaultTimeout is Envoy's route timeout when a route sets none.
const DefaultTimeout = 15 * time.Second

// Table is a compiled RouteConfiguration.
type Table struct {
	Name   string
	byPort map[uint16]*VirtualHost
	any    *VirtualHost // a virtual host without a port (the Gateway's "*")
}

// VirtualHost returns the virtual host serving port, or nil.
func (t *Table) VirtualHost(port uint16) *VirtualHost {
	if vh, ok := t.byPort[port]; ok {
		return vh
	}
	return t.any
}

// VirtualHost is one virtual host: its routes in order and its authorization.
type VirtualHost struct {
	Name   string
	Routes []*Route
	// Authz is nil when no policy applies.
	Authz *authz.Engine
	// RequestHeaders and ResponseHeaders apply to every route of the host, after the route's.
	RequestHeaders, ResponseHeaders HeaderMods
}

// Route returns the first route that matches r, or nil.
func (vh *VirtualHost) Route(r *match.Request) *Route {
	for _, rt := range vh.Routes {
		if rt.Matches(r) {
			return rt
		}
	}
	return nil
}

// Route is one compiled route. Exactly one of Forward, Redirect and Direct is set.
type Route struct {
	Name  string
	Match Match

	Forward  *Forward
	Redirect *Redirect
	Direct   *Direct

	RequestHeaders, ResponseHeaders HeaderMods
}

// PathKind is the kind of a route's path match.
type PathKind uint8

// Path match kinds.
const (
	PathPrefix PathKind = iota
	PathExact
	PathRegex
	PathSeparatedPrefix
)

// Match is a compiled RouteMatch.
type Match struct {
	PathKind PathKind
	Path     string         // the prefix or exact path
	Regex    *regexp.Regexp // PathRegex
	// CaseInsensitive: prefix and exact path compare without case.
	CaseInsensitive bool
	Headers         []match.Header
	Query           []QueryMatch
}

// QueryMatch is a compiled QueryParameterMatcher.
type QueryMatch struct {
	Name    string
	Present bool          // presence only
	Value   *match.String // else the value must match
}

// Forward is a route action: proxy to a cluster.
type Forward struct {
	// Clusters with their weights; a single cluster has weight 1.
	Clusters    []WeightedCluster
	TotalWeight uint32

	PrefixRewrite string
	RegexRewrite  *regexp.Regexp // with RegexSubstitution; Go replacement syntax (\1 → ${1})
	RegexSubst    string
	HostRewrite   string

	// ClusterNotFound is the status when a cluster names a Service the waypoint does not
	// know (cluster_not_found_response_code: 503, 404 or 500).
	ClusterNotFound int

	Mirrors []Mirror
	// Timeout bounds the whole exchange, until the response is complete (0: none).
	// PerTryTimeout bounds the one try until the response starts (0: none): as in Envoy,
	// once response headers went downstream it no longer applies. There are no retries
	// (a retry policy asking for them is rejected), so the try is the only one.
	Timeout, PerTryTimeout time.Duration
}

// WeightedCluster is a cluster and its weight.
type WeightedCluster struct {
	Cluster Cluster
	Weight  uint32
	// RequestHeaders and ResponseHeaders apply when this cluster is chosen.
	RequestHeaders, ResponseHeaders HeaderMods
}

// Mirror is a request mirror policy: a copy of each request (Percent of them) goes to
// Cluster, its response ignored.
type Mirror struct {
	Cluster Cluster
	Percent float64 // 0..100
}

// Redirect is a route action: answer with a redirect.
type Redirect struct {
	Scheme        string // "" keeps the request's
	Host          string // "" keeps the request's
	Port          uint32 // 0 keeps the request's
	Path          string // replaces the path (and the query if it has one)
	PrefixRewrite string // replaces the matched prefix
	RegexRewrite  *regexp.Regexp
	RegexSubst    string
	HasPath       bool // Path set (even to "")
	HasPrefix     bool
	Code          int
	StripQuery    bool
}

// Direct is a route action: answer with Status and Body.
type Direct struct {
	Status int
	Body   string
}

// HeaderMods are a route's header additions and removals, applied in Envoy's order:
// removals, then additions.
type HeaderMods struct {
	Add    []HeaderAdd
	Remove []string
}

// AppendAction is Envoy's HeaderValueOption.HeaderAppendAction.
type AppendAction uint8

// Append actions.
const (
	AppendIfExistsOrAdd AppendAction = iota
	AddIfAbsent
	OverwriteIfExistsOrAdd
	OverwriteIfExists
)

// HeaderAdd adds one header.
type HeaderAdd struct {
	Name, Value string
	Action      AppendAction
}

// Apply modifies h.
func (m HeaderMods) Apply(h http.Header) {
	for _, n := range m.Remove {
		h.Del(n)
	}
	for _, a := range m.Add {
		_, present := h[http.CanonicalHeaderKey(a.Name)]
		switch a.Action {
		case AppendIfExistsOrAdd:
			h.Add(a.Name, a.Value)
		case AddIfAbsent:
			if !present {
				h.Set(a.Name, a.Value)
			}
		case OverwriteIfExistsOrAdd:
			h.Set(a.Name, a.Value)
		case OverwriteIfExists:
			if present {
				h.Set(a.Name, a.Value)
			}
		}
	}
}
