package l7

// Gateway API precedence of route matches across all the HTTPRoutes of one Service port.

import (
	"cmp"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// entry is one Envoy route made from one match of one rule, with what orders it.
type entry struct {
	route   *routev3.Route
	match   gatewayv1.HTTPRouteMatch // normalized
	created metav1.Time
	ns      string
	name    string
	rule    int
	index   int // of the match in the rule
}

// pathRank ranks path match types as istiod does: Exact > PathPrefix > RegularExpression
// (Gateway API leaves regular expressions implementation-specific).
func pathRank(m gatewayv1.HTTPRouteMatch) int {
	switch *m.Path.Type {
	case gatewayv1.PathMatchExact:
		return 3
	case gatewayv1.PathMatchPathPrefix:
		return 2
	case gatewayv1.PathMatchRegularExpression:
		return 1
	}
	return 0
}

// comparePrecedence orders a before b (negative) if a takes precedence: an exact path, then
// the longest path (prefixes without their trailing "/"), then a method match, then more
// header matches, then more query parameter matches, then the oldest route, then the route
// first by namespace/name, then rule and match order.
func comparePrecedence(a, b entry) int {
	return cmp.Or(
		-cmp.Compare(pathRank(a.match), pathRank(b.match)),
		-cmp.Compare(len(*a.match.Path.Value), len(*b.match.Path.Value)),
		-cmp.Compare(boolRank(a.match.Method != nil), boolRank(b.match.Method != nil)),
		-cmp.Compare(len(a.match.Headers), len(b.match.Headers)),
		-cmp.Compare(len(a.match.QueryParams), len(b.match.QueryParams)),
		a.created.Time.Compare(b.created.Time),
		strings.Compare(a.ns, b.ns),
		strings.Compare(a.name, b.name),
		cmp.Compare(a.rule, b.rule),
		cmp.Compare(a.index, b.index),
	)
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// sortEntries orders the routes of one virtual host by comparePrecedence.
func sortEntries(es []entry) { slices.SortStableFunc(es, comparePrecedence) }
