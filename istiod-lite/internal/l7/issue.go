package l7

import (
	"fmt"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Reasons istiod uses beyond Gateway API's own.
const (
	// ReasonInvalidFilter: a filter is unsupported or invalid (istiod's InvalidFilter).
	ReasonInvalidFilter gatewayv1.RouteConditionReason = "InvalidFilter"
)

// issue is a problem with an HTTPRoute: the condition it sets to False, with reason and
// message. The route is still translated; the rule concerned answers 500 or loses the match.
type issue struct {
	cond   gatewayv1.RouteConditionType
	reason gatewayv1.RouteConditionReason
	msg    string
}

func (i issue) Error() string { return fmt.Sprintf("%s: %s", i.reason, i.msg) }

func refIssue(reason gatewayv1.RouteConditionReason, format string, args ...any) issue {
	return issue{cond: gatewayv1.RouteConditionResolvedRefs, reason: reason, msg: fmt.Sprintf(format, args...)}
}

func acceptIssue(reason gatewayv1.RouteConditionReason, format string, args ...any) issue {
	return issue{cond: gatewayv1.RouteConditionAccepted, reason: reason, msg: fmt.Sprintf(format, args...)}
}
