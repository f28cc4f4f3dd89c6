package kube

import (
	"errors"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
	authnv1 "k8s.io/api/authentication/v1"
)

func TestCallerFromReview(t *testing.T) {
	podBound := authnv1.TokenReviewStatus{
		Authenticated: true, Audiences: []string{"istio-ca"},
		User: authnv1.UserInfo{Username: "system:serviceaccount:istio-system:ztunnel", Extra: map[string]authnv1.ExtraValue{
			extraPodName: {"ztunnel-x"}, extraPodUID: {"uid-1"}, extraNodeName: {"node-a"},
		}},
	}
	got, err := callerFromReview(podBound, "istio-ca")
	want := caserver.Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-x", PodUID: "uid-1", NodeName: "node-a"}
	if err != nil || got != want {
		t.Fatalf("callerFromReview = %+v, %v; want %+v", got, err, want)
	}
	for name, tt := range map[string]struct {
		st   authnv1.TokenReviewStatus
		want string
	}{
		"not authenticated": {authnv1.TokenReviewStatus{Error: "token has expired"}, "token has expired"},
		"wrong audience":    {authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"api"}, User: podBound.User}, "do not include istio-ca"},
		"not a ServiceAccount": {authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"},
			User: authnv1.UserInfo{Username: "alice"}}, "is not a ServiceAccount"},
		"malformed SA user": {authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"},
			User: authnv1.UserInfo{Username: "system:serviceaccount:ns"}}, "is not a ServiceAccount"},
	} {
		_, err := callerFromReview(tt.st, "istio-ca")
		if !errors.Is(err, caserver.ErrUnauthenticated) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want ErrUnauthenticated containing %q", name, err, tt.want)
		}
	}
}
