package l7

// One HTTPRoute rule → Envoy routes (one per match), as istiod's convertHTTPRoute and
// route.TranslateRoute do for gateway semantics.

import (
	"fmt"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// routeEntries translates every rule of r for a virtual host on Service port port: one
// entry per match (a rule without matches has the default match, PathPrefix "/"), and the
// issues found. A rule with an unsupported or invalid filter, or whose backends all fail to
// resolve, answers 500 (Gateway API: such a filter must not be skipped); a match that cannot
// be translated is dropped.
func routeEntries(in Input, r *gatewayv1.HTTPRoute, port int32) ([]entry, []issue) {
	var entries []entry
	var issues []issue
	for i, rule := range r.Spec.Rules {
		tmpl, rewrite, ruleIssues := ruleTemplate(in, r.Namespace, rule, port)
		issues = append(issues, ruleIssues...)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for j, m := range matches {
			nm := normalizeMatch(m)
			rm, err := routeMatch(nm)
			if err != nil {
				issues = append(issues, acceptIssue(gatewayv1.RouteReasonUnsupportedValue, "rule %d match %d: %v", i, j, err))
				continue
			}
			rt := proto.Clone(tmpl).(*routev3.Route)
			rt.Name = fmt.Sprintf("%s.%s.%d", r.Namespace, r.Name, i)
			rt.Match = rm
			if a := rt.GetRoute(); a != nil && rewrite != nil {
				if err := applyRewrite(a, rewrite, rm); err != nil {
					issues = append(issues, refIssue(ReasonInvalidFilter, "rule %d: %v", i, err))
					rt.Action = internalError()
				}
			}
			entries = append(entries, entry{
				route: rt, match: nm, created: r.CreationTimestamp, ns: r.Namespace, name: r.Name, rule: i, index: j,
			})
		}
	}
	return entries, issues
}

// ruleTemplate builds a rule's route without match and name; a URLRewrite is returned to be
// applied per match (removing a prefix depends on the prefix matched).
func ruleTemplate(in Input, ns string, rule gatewayv1.HTTPRouteRule, port int32) (*routev3.Route, *gatewayv1.HTTPURLRewriteFilter, []issue) {
	out := &routev3.Route{}
	var issues []issue
	fail := func(i issue) {
		issues = append(issues, i)
		out.Action = internalError()
	}
	var (
		reqHost  string
		redirect *gatewayv1.HTTPRequestRedirectFilter
		rewrite  *gatewayv1.HTTPURLRewriteFilter
		mirrors  []*routev3.RouteAction_RequestMirrorPolicy
	)
	for _, f := range rule.Filters {
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			request := f.Type == gatewayv1.HTTPRouteFilterRequestHeaderModifier
			hf := f.ResponseHeaderModifier
			if request {
				hf = f.RequestHeaderModifier
			}
			ops, err := headerModifier(hf)
			if err != nil {
				fail(refIssue(ReasonInvalidFilter, "%s: %v", f.Type, err))
				continue
			}
			if request {
				out.RequestHeadersToAdd = append(out.RequestHeadersToAdd, ops.add...)
				out.RequestHeadersToRemove = append(out.RequestHeadersToRemove, ops.remove...)
				reqHost = ops.host
			} else {
				out.ResponseHeadersToAdd = append(out.ResponseHeadersToAdd, ops.add...)
				out.ResponseHeadersToRemove = append(out.ResponseHeadersToRemove, ops.remove...)
			}
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			redirect = f.RequestRedirect
		case gatewayv1.HTTPRouteFilterURLRewrite:
			rewrite = f.URLRewrite
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if f.RequestMirror == nil {
				continue
			}
			cluster, bad := resolveBackend(in, f.RequestMirror.BackendRef, ns)
			if bad != nil {
				// As istiod: the mirror is dropped and the route reports the reference.
				issues = append(issues, *bad)
				continue
			}
			mirrors = append(mirrors, &routev3.RouteAction_RequestMirrorPolicy{
				Cluster: cluster, RuntimeFraction: mirrorFraction(f.RequestMirror),
			})
		case gatewayv1.HTTPRouteFilterExtensionRef, gatewayv1.HTTPRouteFilterCORS, gatewayv1.HTTPRouteFilterExternalAuth:
			fail(refIssue(ReasonInvalidFilter, "unsupported filter type %q", f.Type))
		default:
			fail(acceptIssue(gatewayv1.RouteReasonUnsupportedValue, "unknown filter type %q", f.Type))
		}
	}
	if out.Action != nil {
		return out, nil, issues
	}
	if redirect != nil {
		ra, err := redirectAction(redirect, port)
		if err != nil {
			fail(acceptIssue(gatewayv1.RouteReasonUnsupportedValue, "%v", err))
			return out, nil, issues
		}
		out.Action = &routev3.Route_Redirect{Redirect: ra}
		return out, nil, issues
	}
	action := &routev3.RouteAction{
		ClusterNotFoundResponseCode: routev3.RouteAction_INTERNAL_SERVER_ERROR,
		RequestMirrorPolicies:       mirrors,
	}
	if reqHost != "" {
		action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: reqHost}
	}
	if ok := setBackends(in, ns, rule.BackendRefs, out, action, &issues); !ok {
		out.Action = internalError()
		return out, nil, issues
	}
	if err := setTimeouts(action, rule.Timeouts); err != nil {
		issues = append(issues, acceptIssue(gatewayv1.RouteReasonUnsupportedValue, "%v", err))
	}
	out.Action = &routev3.Route_Route{Route: action}
	return out, rewrite, issues
}

// setBackends sets the cluster or weighted clusters of action; per-backend header filters go
// on the route for a single backend and on its ClusterWeight otherwise. Backends of weight 0
// are left out. It returns false if the rule must answer 500: no backend of positive
// weight, every one unresolved, a Service backend without port (the CRD requires one), or a
// backend filter that cannot be translated.
func setBackends(in Input, ns string, refs []gatewayv1.HTTPBackendRef, rt *routev3.Route, action *routev3.RouteAction, issues *[]issue) bool {
	type backend struct {
		weight   uint32
		cluster  string
		req, rsp headerOps
	}
	var backends []backend
	resolved := 0
	for _, ref := range refs {
		w := int32(1)
		if ref.Weight != nil {
			w = *ref.Weight
		}
		if w <= 0 {
			continue
		}
		cluster, bad := resolveBackend(in, ref.BackendObjectReference, ns)
		if bad != nil {
			*issues = append(*issues, *bad)
			if cluster == "" {
				return false
			}
		} else {
			resolved++
		}
		b := backend{weight: uint32(w), cluster: cluster}
		for _, f := range ref.Filters {
			var err error
			switch f.Type {
			case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
				b.req, err = headerModifier(f.RequestHeaderModifier)
			case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
				b.rsp, err = headerModifier(f.ResponseHeaderModifier)
			default:
				err = fmt.Errorf("unsupported filter type %q on a backendRef", f.Type)
			}
			if err != nil {
				*issues = append(*issues, refIssue(ReasonInvalidFilter, "backendRef %s: %v", ref.Name, err))
				return false
			}
		}
		backends = append(backends, b)
	}
	if resolved == 0 {
		return false
	}
	if len(backends) == 1 {
		b := backends[0]
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: b.cluster}
		rt.RequestHeadersToAdd = append(rt.RequestHeadersToAdd, b.req.add...)
		rt.RequestHeadersToRemove = append(rt.RequestHeadersToRemove, b.req.remove...)
		rt.ResponseHeadersToAdd = append(rt.ResponseHeadersToAdd, b.rsp.add...)
		rt.ResponseHeadersToRemove = append(rt.ResponseHeadersToRemove, b.rsp.remove...)
		if b.req.host != "" && action.HostRewriteSpecifier == nil {
			action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: b.req.host}
		}
		return true
	}
	wc := &routev3.WeightedCluster{}
	for _, b := range backends {
		cw := &routev3.WeightedCluster_ClusterWeight{
			Name:                    b.cluster,
			Weight:                  wrapperspb.UInt32(b.weight),
			RequestHeadersToAdd:     b.req.add,
			RequestHeadersToRemove:  b.req.remove,
			ResponseHeadersToAdd:    b.rsp.add,
			ResponseHeadersToRemove: b.rsp.remove,
		}
		if b.req.host != "" {
			cw.HostRewriteSpecifier = &routev3.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: b.req.host}
		}
		wc.Clusters = append(wc.Clusters, cw)
	}
	action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	return true
}

// setTimeouts sets the route timeout from timeouts.request and the per-try timeout from
// timeouts.backendRequest ("0s" disables a timeout, as in Envoy). An error names a duration
// that does not parse; the timeouts are then left unset. Without timeouts.request the route
// timeout is 0s (none), as istiod sets it: Envoy's and the waypoint's default of 15 s would cut
// long streams.
func setTimeouts(action *routev3.RouteAction, t *gatewayv1.HTTPRouteTimeouts) error {
	action.Timeout = durationpb.New(0)
	if t == nil {
		return nil
	}
	var request, backend *durationpb.Duration
	for _, d := range []struct {
		name string
		in   *gatewayv1.Duration
		out  **durationpb.Duration
	}{{"request", t.Request, &request}, {"backendRequest", t.BackendRequest, &backend}} {
		if d.in == nil {
			continue
		}
		v, err := time.ParseDuration(string(*d.in))
		if err != nil || v < 0 {
			return fmt.Errorf("timeouts.%s %q is not a valid duration", d.name, *d.in)
		}
		*d.out = durationpb.New(v)
	}
	if request != nil {
		action.Timeout = request
	}
	if backend != nil {
		action.RetryPolicy = &routev3.RetryPolicy{PerTryTimeout: backend}
	}
	return nil
}

func internalError() *routev3.Route_DirectResponse {
	return &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 500}}
}
