package l7config

import (
	"errors"
	"fmt"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
)

// errRetries is why a retry policy asking for retries is rejected: istiod-lite's
// translation emits only per_try_timeout (HTTPRoute timeouts.backendRequest), so retries
// (retry_on, num_retries and their options) are not implemented, and a configuration asking
// for them is NACKed rather than served without them.
var errRetries = errors.New("retries are not supported: a retry_policy may set only per_try_timeout (retry_on, num_retries and the other retry fields are unsupported)")

// perTryTimeout validates a route's retry policy and returns its per_try_timeout (0: none).
// num_retries 0 asks for nothing and is accepted.
func perTryTimeout(rp *routev3.RetryPolicy) (time.Duration, error) {
	if rp == nil {
		return 0, nil
	}
	rest := proto.Clone(rp).(*routev3.RetryPolicy)
	rest.PerTryTimeout = nil
	if rest.GetNumRetries().GetValue() == 0 {
		rest.NumRetries = nil
	}
	if !proto.Equal(rest, &routev3.RetryPolicy{}) {
		return 0, errRetries
	}
	pt := rp.GetPerTryTimeout()
	if pt == nil {
		return 0, nil
	}
	if err := pt.CheckValid(); err != nil || pt.AsDuration() < 0 {
		return 0, fmt.Errorf("bad per_try_timeout %v", pt)
	}
	return pt.AsDuration(), nil
}
