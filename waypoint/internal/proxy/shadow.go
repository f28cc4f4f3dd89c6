package proxy

import (
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/authz"
)

// shadow reports the dry-run policies' would-be decisions of d as Envoy's RBAC shadow
// engine does: a debug line "shadow allowed" or "shadow denied" with the matching policy
// ("none" if none), and the access log's dry-run fields it returns. It changes nothing.
func (p *Proxy) shadow(d authz.Decision, a *authz.Attributes, st *stream) []accesslog.DryRun {
	if len(d.Shadow) == 0 {
		return nil
	}
	out := make([]accesslog.DryRun, 0, len(d.Shadow))
	for _, s := range d.Shadow {
		p.log.Debug("shadow "+s.Result(), "policy", orNone(s.Policy), "prefix", s.Prefix,
			"principal", a.Principal, "path", a.Request.Path, "target", st.plan.Target)
		out = append(out, accesslog.DryRun{Prefix: s.Prefix, Result: s.Result(), Policy: s.Policy})
	}
	return out
}
