package adsc

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/xds"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	"google.golang.org/protobuf/proto"
	"istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"istio.io/istio/pkg/adsc"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
)

func TestMain(m *testing.M) {
	code := cluster.Main(m)
	istiodtest.Cleanup()
	os.Exit(code)
}

const (
	addressType       = "type.googleapis.com/istio.workload.Address"
	authorizationType = "type.googleapis.com/istio.security.Authorization"
)

// seen is what Istio's client decoded: the typed entity per type URL and name.
type seen struct {
	mu  sync.Mutex
	res map[string]map[string]proto.Message
}

func (s *seen) set(typeURL, name string, m proto.Message, event adsc.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.res[typeURL] == nil {
		s.res[typeURL] = map[string]proto.Message{}
	}
	if event == adsc.EventDelete {
		delete(s.res[typeURL], name)
		return
	}
	s.res[typeURL][name] = m
}

func (s *seen) names(typeURL string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.res[typeURL] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (s *seen) get(typeURL, name string) proto.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res[typeURL][name]
}

// TestIstioDeltaClient subscribes Istio's delta ADS client to istiod-lite as a ztunnel
// does (wildcard Address and Authorization), checks it decodes every resource the server
// has — the same set our own client receives — with the fields Istio's types carry, and
// follows an update and a deletion.
func TestIstioDeltaClient(t *testing.T) {
	for _, scope := range []string{"adsc", "delta", "default"} {
		if s := istiolog.FindScope(scope); s != nil {
			s.SetOutputLevel(istiolog.WarnLevel)
		}
	}
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	ctx := t.Context()

	app := c.Namespace(t, map[string]string{"istio.io/dataplane-mode": "ambient"})
	var pods []string
	for i, ip := range []string{"10.31.0.1", "10.31.0.2", "10.31.0.3"} {
		name := []string{"web-0", "web-1", "db-0"}[i]
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: app, Labels: map[string]string{"app": name[:len(name)-2]},
				Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "x",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		}
		p, err := c.Client.CoreV1().Pods(app).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if _, err := c.Client.CoreV1().Pods(app).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, "Kubernetes//Pod/"+app+"/"+name)
	}
	_, err := c.Client.CoreV1().Services(app).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: app},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	istio, err := istioclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	_, err = istio.SecurityV1().AuthorizationPolicies(app).Create(ctx, &securityclient.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "db-from-web", Namespace: app},
		Spec: v1beta1.AuthorizationPolicy{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "db"}},
			Rules: []*v1beta1.Rule{{From: []*v1beta1.Rule_From{{Source: &v1beta1.Source{
				Principals: []string{"cluster.local/ns/" + app + "/sa/default"}}}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	istiodtest.CreateSA(t, c, m.NS, "ztunnel")
	token := istiodtest.SAToken(t, c, m.NS, "ztunnel", "istio-ca", nil)

	// Our own client is the reference: the full set the server serves.
	ours := &seen{res: map[string]map[string]proto.Message{}}
	ourClient, err := xds.NewClient(xds.ClientOptions{
		Conn: istiodtest.XDSConn(t, m.Istiod, m.Root, token), Logger: slog.New(slog.DiscardHandler),
		Handler: func(typeURL string, ups []*xds.Resource, removals []string) error {
			for _, u := range ups {
				ours.set(typeURL, u.Name, nil, adsc.EventAdd)
			}
			for _, r := range removals {
				ours.set(typeURL, r, nil, adsc.EventDelete)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ourClient.Watch(addressType)
	ourClient.Watch(authorizationType)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { _ = ourClient.Run(runCtx) })

	theirs := &seen{res: map[string]map[string]proto.Message{}}
	client := adsc.NewDelta(m.GRPCAddr, &adsc.DeltaADSConfig{Config: adsc.Config{
		ClientName: "istio-adsc", Namespace: m.NS, Workload: "ztunnel-interop", NodeType: "ztunnel", IP: "127.0.0.1",
		GrpcOpts: istiodtest.DialOptions(m.Istiod, m.Root, token),
	}},
		adsc.Register(func(_ adsc.HandlerContext, name, _ string, a *workloadapi.Address, ev adsc.Event) {
			theirs.set(addressType, name, a, ev)
		}),
		adsc.Watch[*workloadapi.Address]("*"),
		adsc.Register(func(_ adsc.HandlerContext, name, _ string, a *security.Authorization, ev adsc.Event) {
			theirs.set(authorizationType, name, a, ev)
		}),
		adsc.Watch[*security.Authorization]("*"),
	)
	wg.Go(func() { client.Run(runCtx) })
	defer client.Close()
	select {
	case <-client.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("Istio's delta client did not sync with istiod-lite within 30 s")
	}

	converge := func(what string, cond func() bool) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			return cond(), nil
		})
		if err != nil {
			t.Fatalf("%s: Istio's client has Address %v and Authorization %v; ours has %v and %v", what,
				theirs.names(addressType), theirs.names(authorizationType), ours.names(addressType), ours.names(authorizationType))
		}
	}
	sameAsOurs := func() bool {
		return slices.Equal(theirs.names(addressType), ours.names(addressType)) &&
			slices.Equal(theirs.names(authorizationType), ours.names(authorizationType))
	}
	converge("initial state", func() bool {
		return sameAsOurs() && theirs.get(addressType, pods[0]) != nil && theirs.get(authorizationType, app+"/db-from-web") != nil
	})
	t.Logf("Istio's delta client decoded %d addresses and %d authorizations, the same set as our client",
		len(theirs.names(addressType)), len(theirs.names(authorizationType)))

	// Every resource decoded into Istio's types with the fields we sent.
	for _, name := range theirs.names(addressType) {
		a, _ := theirs.get(addressType, name).(*workloadapi.Address)
		if a == nil || (a.GetWorkload() == nil && a.GetService() == nil) {
			t.Errorf("address %s decoded to %v", name, a)
		}
	}
	web := theirs.get(addressType, pods[0]).(*workloadapi.Address).GetWorkload()
	if ip, _ := netip.AddrFromSlice(firstAddr(web)); ip.String() != "10.31.0.1" || web.TunnelProtocol != workloadapi.TunnelProtocol_HBONE ||
		web.Namespace != app || web.ServiceAccount != "default" || web.Node != "node-a" || len(web.Services) != 1 {
		t.Errorf("web-0 as Istio decodes it: %v", web)
	}
	svc := theirs.get(addressType, app+"/web."+app+".svc.cluster.local")
	if s, _ := svc.(*workloadapi.Address); s.GetService() == nil || s.GetService().Hostname != "web."+app+".svc.cluster.local" {
		t.Errorf("Service web as Istio decodes it: %v", svc)
	}
	db := theirs.get(addressType, pods[2]).(*workloadapi.Address).GetWorkload()
	if !slices.Contains(db.AuthorizationPolicies, app+"/db-from-web") {
		t.Errorf("db-0 policies %v, want %s/db-from-web", db.AuthorizationPolicies, app)
	}
	if z, _ := theirs.get(authorizationType, app+"/db-from-web").(*security.Authorization); z.GetAction() != security.Action_ALLOW ||
		z.GetScope() != security.Scope_WORKLOAD_SELECTOR || len(z.GetGroups()) != 1 {
		t.Errorf("policy as Istio decodes it: %v", z)
	}

	// An update and a deletion reach Istio's client too.
	p, err := c.Client.CoreV1().Pods(app).Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(p.Annotations, "ambient.istio.io/redirection")
	if _, err := c.Client.CoreV1().Pods(app).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	converge("redirection annotation removed", func() bool {
		a, _ := theirs.get(addressType, pods[1]).(*workloadapi.Address)
		return a != nil && a.GetWorkload().GetTunnelProtocol() == workloadapi.TunnelProtocol_NONE
	})
	if err := c.Client.CoreV1().Pods(app).Delete(ctx, "db-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	converge("pod deleted", func() bool { return theirs.get(addressType, pods[2]) == nil && sameAsOurs() })
}

func firstAddr(w *workloadapi.Workload) []byte {
	if w == nil || len(w.Addresses) == 0 {
		return nil
	}
	return w.Addresses[0]
}
