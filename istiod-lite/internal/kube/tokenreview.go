// Package kube connects istiod-lite to the Kubernetes API: it authenticates tokens with
// TokenReview, indexes pods by node and ServiceAccount, stores and loads the CA's root in
// a Secret, and publishes the root to every namespace. It is the only istiod-lite package
// that imports client-go; the decisions live in the packages it serves (caserver, ca).
package kube

import (
	"context"
	"fmt"
	"strings"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/caserver"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Keys of the extra info the apiserver attaches to pod-bound ServiceAccount tokens.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// TokenReviewer authenticates bearer tokens with the apiserver's TokenReview API, for one
// audience.
type TokenReviewer struct {
	Client   kubernetes.Interface
	Audience string
}

var _ caserver.Authenticator = (*TokenReviewer)(nil)

// Authenticate implements caserver.Authenticator.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (caserver.Caller, error) {
	review, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{r.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return caserver.Caller{}, fmt.Errorf("reviewing token: %w", err)
	}
	return callerFromReview(review.Status, r.Audience)
}

// callerFromReview turns a TokenReview status into the caller, or an error wrapping
// caserver.ErrUnauthenticated.
func callerFromReview(st authnv1.TokenReviewStatus, audience string) (caserver.Caller, error) {
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "token not authenticated"
		}
		return caserver.Caller{}, fmt.Errorf("%w: %s (want a valid ServiceAccount token with audience %s)", caserver.ErrUnauthenticated, reason, audience)
	}
	audOK := false
	for _, a := range st.Audiences {
		audOK = audOK || a == audience
	}
	if !audOK {
		return caserver.Caller{}, fmt.Errorf("%w: token audiences %v do not include %s", caserver.ErrUnauthenticated, st.Audiences, audience)
	}
	rest, ok := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" {
		return caserver.Caller{}, fmt.Errorf("%w: %q is not a ServiceAccount", caserver.ErrUnauthenticated, st.User.Username)
	}
	first := func(k string) string {
		if v := st.User.Extra[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	return caserver.Caller{
		Namespace: ns, ServiceAccount: sa,
		PodName: first(extraPodName), PodUID: first(extraPodUID), NodeName: first(extraNodeName),
	}, nil
}
