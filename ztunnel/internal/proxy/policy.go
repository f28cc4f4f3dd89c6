package proxy

import (
	"fmt"
	"log/slog"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
)

// PolicyAuthorizer enforces Istio's L4 authorization (pkg/authz) at the destination.
type PolicyAuthorizer struct {
	// Policies returns the current policy set; nil means no policy (allow).
	Policies func() *authz.Policies
	// Log receives dry-run results. If nil, nothing is logged.
	Log *slog.Logger
}

// Authorize implements Authorizer.
func (a PolicyAuthorizer) Authorize(c Conn) error {
	d := a.Policies().Evaluate(authz.Connection{
		SourceIdentity: c.Source, SourceIP: c.SourceIP,
		DestinationIP: c.DestIP, DestinationPort: c.DestPort,
		DestinationNamespace: c.Dest.GetNamespace(), DestinationPolicies: c.Dest.GetAuthorizationPolicies(),
	})
	if len(d.DryRun) > 0 && a.Log != nil {
		a.Log.Info("dry-run policy would change the decision", "policies", d.DryRun, "allowed", d.Allowed,
			"src", c.Source, "srcIP", c.SourceIP, "dst", c.Dest.Uid, "port", c.DestPort)
	}
	if d.Allowed {
		return nil
	}
	if d.Policy != "" {
		return fmt.Errorf("denied by authorization policy %s (%s)", d.Policy, d.Reason)
	}
	return fmt.Errorf("denied: %s", d.Reason)
}
