package cluster_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	securityv1beta1api "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }

// poll waits until cond holds, failing the test after timeout with what was last seen.
func poll(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true, cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func TestServiceAccountTokenRequestAndReview(t *testing.T) {
	c := cluster.Shared(t)
	ctx := context.Background()
	ns := c.Namespace(t, nil)
	sa, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "workload"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	request := func(audience string) string {
		t.Helper()
		tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name, &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](600)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenRequest for audience %s: %v", audience, err)
		}
		return tr.Status.Token
	}
	review := func(token string) authnv1.TokenReviewStatus {
		t.Helper()
		r, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{"istio-ca"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenReview: %v", err)
		}
		return r.Status
	}

	istioToken := request("istio-ca")
	got := review(istioToken)
	wantUser := "system:serviceaccount:" + ns + ":workload"
	if !got.Authenticated || got.User.Username != wantUser || got.User.UID != string(sa.UID) {
		t.Fatalf("review of an istio-ca token = %+v, want authenticated as %s (uid %s)", got, wantUser, sa.UID)
	}
	if len(got.Audiences) != 1 || got.Audiences[0] != "istio-ca" {
		t.Errorf("review audiences = %v, want [istio-ca]", got.Audiences)
	}

	if got := review(request("some-other-audience")); got.Authenticated {
		t.Errorf("a token for another audience was accepted for istio-ca: %+v", got)
	}
	if got := review(istioToken[:len(istioToken)-4] + "AAAA"); got.Authenticated {
		t.Errorf("a token with a forged signature was accepted: %+v", got)
	}

	// A bound token dies with its ServiceAccount.
	if err := c.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, sa.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "the deleted ServiceAccount's token to be rejected (the apiserver caches successful authentications for 10 s)", func(context.Context) (bool, error) {
		return !review(istioToken).Authenticated, nil
	})
}

// TestRBACEnforced checks that authorization is real: a ServiceAccount with no role can
// do nothing, and gains exactly what a RoleBinding grants.
func TestRBACEnforced(t *testing.T) {
	c := cluster.Shared(t)
	ctx := context.Background()
	ns := c.Namespace(t, nil)
	if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "reader", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(c.Config)
	cfg.BearerToken = tr.Status.Token
	sa := kubernetes.NewForConfigOrDie(cfg)

	if _, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("listing pods without a role: err = %v, want Forbidden", err)
	}
	if _, err := c.Client.RbacV1().RoleBindings(ns).Create(ctx, roleBinding(ns, "reader", "view"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "the view role to take effect", func(ctx context.Context) (bool, error) {
		_, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil, nil
	})
	if _, err := sa.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing pods in another namespace: err = %v, want Forbidden", err)
	}
}

func TestMeshCRDs(t *testing.T) {
	c := cluster.Shared(t)
	ctx := context.Background()
	ns := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	istio := istioclient.NewForConfigOrDie(c.Config)
	gw := gatewayclient.NewForConfigOrDie(c.Config)

	ap := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-frontend"},
		Spec: securityv1beta1api.AuthorizationPolicy{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "backend"}},
			Action:   securityv1beta1api.AuthorizationPolicy_ALLOW,
			Rules: []*securityv1beta1api.Rule{{
				From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{
					Principals: []string{"cluster.local/ns/" + ns + "/sa/frontend"},
				}}},
				To: []*securityv1beta1api.Rule_To{{Operation: &securityv1beta1api.Operation{Ports: []string{"8080"}}}},
			}},
		},
	}
	created, err := istio.SecurityV1().AuthorizationPolicies(ns).Create(ctx, ap, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating AuthorizationPolicy: %v", err)
	}
	if p := created.Spec.Rules[0].From[0].Source.Principals; len(p) != 1 || !strings.HasSuffix(p[0], "/sa/frontend") {
		t.Errorf("AuthorizationPolicy round trip lost the principal: %v", p)
	}
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	pa.Spec.Mtls = &securityv1beta1api.PeerAuthentication_MutualTLS{Mode: securityv1beta1api.PeerAuthentication_MutualTLS_STRICT}
	if _, err := istio.SecurityV1().PeerAuthentications(ns).Create(ctx, pa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating PeerAuthentication: %v", err)
	}

	// The CRDs carry their validation: the apiserver rejects what Istio would reject.
	bad := ap.DeepCopy()
	bad.Name = "bad-selector"
	bad.Spec.Selector.MatchLabels = map[string]string{"app": "backend", "": "empty-key"}
	if _, err := istio.SecurityV1().AuthorizationPolicies(ns).Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("AuthorizationPolicy with an empty selector key: err = %v, want Invalid", err)
	}

	waypoint := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Labels: map[string]string{"istio.io/waypoint-for": "service"}},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	if _, err := gw.GatewayV1().Gateways(ns).Create(ctx, waypoint, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating waypoint Gateway: %v", err)
	}

	// A GAMMA route: attached to a Service, as mesh routes are.
	prefix := gatewayv1.PathMatchPathPrefix
	route := &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{
				Group: ptr.To[gatewayv1.Group](""), Kind: ptr.To[gatewayv1.Kind]("Service"), Name: "reviews",
			}}},
			Rules: []gatewayv1.HTTPRouteRule{{
				Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: &prefix, Value: ptr.To("/v2")}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
					BackendObjectReference: gatewayv1.BackendObjectReference{Name: "reviews-v2", Port: ptr.To[gatewayv1.PortNumber](9080)},
				}}},
			}},
		},
	}
	if _, err := gw.GatewayV1().HTTPRoutes(ns).Create(ctx, route, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating HTTPRoute: %v", err)
	}
	badRoute := route.DeepCopy()
	badRoute.Name = "bad-prefix"
	badRoute.Spec.Rules[0].Matches[0].Path.Value = ptr.To("no-leading-slash")
	if _, err := gw.GatewayV1().HTTPRoutes(ns).Create(ctx, badRoute, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("HTTPRoute with a path prefix lacking '/': err = %v, want Invalid (CEL validation)", err)
	}
}

// TestDeploymentIsScheduled drives the controller manager and the scheduler: a Deployment
// gets a ReplicaSet and pods; with no node they are found unschedulable, and once a Ready
// node exists the scheduler binds them to it.
func TestDeploymentIsScheduled(t *testing.T) {
	c := cluster.Shared(t)
	ctx := context.Background()
	ns := c.Namespace(t, nil)
	labels := map[string]string{"app": "echo"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"ambient-lite.test/node-for": ns},
					Containers:   []corev1.Container{{Name: "echo", Image: "echo:test"}},
				},
			},
		},
	}
	if _, err := c.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	poll(t, 30*time.Second, "a ReplicaSet owned by the Deployment", func(ctx context.Context) (bool, error) {
		rs, err := c.Client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(rs.Items) != 1 {
			return false, err
		}
		owner := metav1.GetControllerOf(&rs.Items[0])
		return owner != nil && owner.Kind == "Deployment" && owner.Name == "echo", nil
	})
	listPods := func(ctx context.Context) []corev1.Pod {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return pods.Items
	}
	poll(t, 30*time.Second, "2 pods found unschedulable by the scheduler", func(ctx context.Context) (bool, error) {
		pods := listPods(ctx)
		n := 0
		for _, p := range pods {
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
					n++
				}
			}
		}
		return n == 2 && len(pods) == 2, nil
	})

	// A node only these pods select, so other tests' pods never land on it.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   "node-" + ns,
		Labels: map[string]string{"ambient-lite.test/node-for": ns, "kubernetes.io/os": "linux"},
	}}
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	node.Status = corev1.NodeStatus{
		Capacity:    corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")},
		Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")},
		Conditions:  []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now()}},
	}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 60*time.Second, "both pods bound to "+node.Name, func(ctx context.Context) (bool, error) {
		n := 0
		for _, p := range listPods(ctx) {
			if p.Spec.NodeName == node.Name {
				n++
			}
		}
		return n == 2, nil
	})
}

func roleBinding(namespace, serviceAccount, clusterRole string) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: serviceAccount + "-" + clusterRole},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: clusterRole},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: serviceAccount, Namespace: namespace}},
	}
}
