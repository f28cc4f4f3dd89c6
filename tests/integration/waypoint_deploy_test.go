package integration

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// TestWaypointDeployment applies Gateways to the real apiserver with istiod-lite running: the
// istio-waypoint GatewayClass is created and Accepted; a waypoint Gateway gets its
// ServiceAccount, Deployment and Service (server-side applied, owned by the Gateway) and its
// status; a Gateway of another class is left alone; a deleted Deployment is restored; deleting
// the Gateway lets the garbage collector remove the rest. The control plane has no kubelet,
// so no waypoint pod becomes ready: readiness is a hand-made EndpointSlice.
func TestWaypointDeployment(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	gw, err := gatewayclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := c.Namespace(t, nil)
	poll := func(what string, timeout time.Duration, cond func(ctx context.Context) (bool, error)) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, cond); err != nil {
			t.Fatalf("waiting for %s: %v\nistiod-lite log:\n%s", what, err, m.Log())
		}
	}

	poll("GatewayClass istio-waypoint, Accepted", 20*time.Second, func(ctx context.Context) (bool, error) {
		gc, err := gw.GatewayV1().GatewayClasses().Get(ctx, "istio-waypoint", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if gc.Spec.ControllerName != "istio.io/mesh-controller" {
			t.Fatalf("GatewayClass controllerName = %q", gc.Spec.ControllerName)
		}
		return gatewayCondition(gc.Status.Conditions, "Accepted").Status == metav1.ConditionTrue, nil
	})

	listeners := []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}
	other, err := gw.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "ingress"},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: "someone-elses", Listeners: listeners},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waypoint, err := gw.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Labels: map[string]string{"istio.io/waypoint-for": "service"}},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint", Listeners: listeners},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	poll("the waypoint's ServiceAccount, Deployment and Service", 20*time.Second, func(ctx context.Context) (bool, error) {
		_, e1 := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		_, e2 := c.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		_, e3 := c.Client.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return e1 == nil && e2 == nil && e3 == nil, nil
	})
	sa, _ := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	dep, _ := c.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	svc, _ := c.Client.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	for _, o := range []metav1.Object{sa, dep, svc} {
		refs := o.GetOwnerReferences()
		if len(refs) != 1 || refs[0].Kind != "Gateway" || refs[0].APIVersion != "gateway.networking.k8s.io/v1" || refs[0].UID != waypoint.UID {
			t.Errorf("%s: ownerReferences = %+v, want the Gateway", o.GetName(), refs)
		}
		l := o.GetLabels()
		if l["gateway.networking.k8s.io/gateway-name"] != "waypoint" || l["gateway.istio.io/managed"] != "istio.io-mesh-controller" || l["istio.io/waypoint-for"] != "service" {
			t.Errorf("%s: labels = %v", o.GetName(), l)
		}
		if mf := o.GetManagedFields(); len(mf) == 0 || mf[0].Manager != "istiod-lite" || mf[0].Operation != metav1.ManagedFieldsOperationApply {
			t.Errorf("%s: managedFields = %+v, want a server-side apply by istiod-lite", o.GetName(), mf)
		}
	}
	pod := dep.Spec.Template
	if pod.Labels["istio.io/dataplane-mode"] != "none" || pod.Spec.ServiceAccountName != "waypoint" ||
		dep.Spec.Selector.MatchLabels["gateway.networking.k8s.io/gateway-name"] != "waypoint" {
		t.Errorf("pod template: labels %v, serviceAccount %q, selector %v", pod.Labels, pod.Spec.ServiceAccountName, dep.Spec.Selector)
	}
	ctr := pod.Spec.Containers[0]
	_, grpcPort, _ := net.SplitHostPort(m.GRPCAddr)
	env := map[string]string{}
	for _, e := range ctr.Env {
		env[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
		}
	}
	wantEnv := map[string]string{
		"POD_NAME": "fieldRef:metadata.name", "POD_NAMESPACE": "fieldRef:metadata.namespace", "INSTANCE_IP": "fieldRef:status.podIP",
		"SERVICE_ACCOUNT": "fieldRef:spec.serviceAccountName", "GATEWAY_NAME": "waypoint", "TRUST_DOMAIN": "cluster.local",
		"CA_ADDRESS": "istiod." + m.NS + ".svc:" + grpcPort, "XDS_ADDRESS": "istiod." + m.NS + ".svc:" + grpcPort,
		"CA_SERVER_NAME": "istiod." + m.NS + ".svc",
	}
	for k, v := range wantEnv {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	if ctr.Image != "ambient-lite.local/waypoint:dev" || ctr.ImagePullPolicy != corev1.PullIfNotPresent ||
		ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet.Path != "/healthz/ready" || ctr.ReadinessProbe.HTTPGet.Port.IntValue() != 15021 ||
		ctr.SecurityContext == nil || !ptr.Deref(ctr.SecurityContext.RunAsNonRoot, false) {
		t.Errorf("container: image %q, pull %q, readiness %+v, securityContext %+v", ctr.Image, ctr.ImagePullPolicy, ctr.ReadinessProbe, ctr.SecurityContext)
	}
	var token, root bool
	for _, v := range pod.Spec.Volumes {
		if p := v.Projected; p != nil && len(p.Sources) == 1 && p.Sources[0].ServiceAccountToken != nil {
			st := p.Sources[0].ServiceAccountToken
			token = st.Audience == "istio-ca" && ptr.Deref(st.ExpirationSeconds, 0) == 43200 && st.Path == "istio-token"
		}
		if v.ConfigMap != nil && v.ConfigMap.Name == "istio-ca-root-cert" {
			root = true
		}
	}
	if !token || !root {
		t.Errorf("volumes %+v: istio-ca token %v, root ConfigMap %v", pod.Spec.Volumes, token, root)
	}
	var hbone *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if p.Port == 15008 {
			hbone = &svc.Spec.Ports[i]
		}
	}
	if hbone == nil || hbone.Name != "mesh" || ptr.Deref(hbone.AppProtocol, "") != "hbone" || svc.Spec.ClusterIP == "" || svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service: type %s, clusterIP %q, ports %+v", svc.Spec.Type, svc.Spec.ClusterIP, svc.Spec.Ports)
	}

	hostname := "waypoint." + ns + ".svc.cluster.local"
	poll("Accepted, not Programmed (no ready pod)", 20*time.Second, func(ctx context.Context) (bool, error) {
		g, err := gw.GatewayV1().Gateways(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		acc, prog := gatewayCondition(g.Status.Conditions, "Accepted"), gatewayCondition(g.Status.Conditions, "Programmed")
		return acc.Status == metav1.ConditionTrue && acc.Reason == "Accepted" && acc.ObservedGeneration == g.Generation &&
			prog.Status == metav1.ConditionFalse && prog.Reason == "AddressNotAssigned" &&
			len(g.Status.Addresses) == 0 && len(g.Status.Listeners) == 1 && g.Status.Listeners[0].Name == "mesh" &&
			gatewayCondition(g.Status.Listeners[0].Conditions, "Accepted").Status == metav1.ConditionTrue, nil
	})

	// A ready waypoint endpoint (the kubelet would make the pod ready; here a slice of our
	// own, which the EndpointSlice controller leaves alone).
	if _, err := c.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint-ready", Labels: map[string]string{
			discoveryv1.LabelServiceName: "waypoint", discoveryv1.LabelManagedBy: "integration-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("mesh"), Port: ptr.To[int32](15008), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.9.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("Programmed with the Service's address and hostname", 20*time.Second, func(ctx context.Context) (bool, error) {
		g, err := gw.GatewayV1().Gateways(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		a := g.Status.Addresses
		return gatewayCondition(g.Status.Conditions, "Programmed").Status == metav1.ConditionTrue && len(a) == 2 &&
			*a[0].Type == gatewayv1.IPAddressType && a[0].Value == svc.Spec.ClusterIP &&
			*a[1].Type == gatewayv1.HostnameAddressType && a[1].Value == hostname, nil
	})

	// The other class's Gateway was queued first and left alone.
	if _, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "ingress", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Deployment for a Gateway of another class: err = %v", err)
	}
	if g, _ := gw.GatewayV1().Gateways(ns).Get(ctx, other.Name, metav1.GetOptions{}); gatewayCondition(g.Status.Conditions, "Accepted").Reason != "Pending" {
		t.Errorf("a Gateway of another class got a status: %+v", g.Status.Conditions)
	}

	// Steady state: an event that changes nothing of ours applies nothing.
	applied := func() int { return strings.Count(m.Log(), `"msg":"applied"`) }
	time.Sleep(time.Second) // the Deployment controller's status updates settle
	before := applied()
	svc, _ = c.Client.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	svc.Annotations["example.com/unrelated"] = "x"
	if _, err := c.Client.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{FieldManager: "integration-test"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if n := applied() - before; n != 0 {
		t.Errorf("%d applies in a steady state; istiod-lite log:\n%s", n, m.Log())
	}

	// A deleted Deployment comes back.
	if err := c.Client.AppsV1().Deployments(ns).Delete(ctx, "waypoint", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("the Deployment restored", 20*time.Second, func(ctx context.Context) (bool, error) {
		d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && d.UID != dep.UID, nil
	})

	// Deleting the Gateway: the garbage collector removes what it owned.
	if err := gw.GatewayV1().Gateways(ns).Delete(ctx, "waypoint", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("the garbage collector to remove the waypoint's objects", 90*time.Second, func(ctx context.Context) (bool, error) {
		_, e1 := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		_, e2 := c.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		_, e3 := c.Client.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return apierrors.IsNotFound(e1) && apierrors.IsNotFound(e2) && apierrors.IsNotFound(e3), nil
	})
}

func gatewayCondition(conds []metav1.Condition, typ string) metav1.Condition {
	for _, c := range conds {
		if c.Type == typ {
			return c
		}
	}
	return metav1.Condition{}
}
