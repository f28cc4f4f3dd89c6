// Package istiodtest runs istiod-lite as a real process against the local control plane
// (tests/cluster) for integration and interop tests: its ServiceAccount and least RBAC, a
// kubeconfig with that account's token, start/stop with readiness, the published root, CA
// and xDS connections, and ServiceAccount tokens for callers. It is test support only; no
// mesh code imports it.
package istiodtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// Istiod is one istiod-lite process under test.
type Istiod struct {
	// NS is istiod-lite's own namespace (--namespace).
	NS string
	// GRPCAddr serves the CA and xDS; HTTPAddr serves /ready.
	GRPCAddr, HTTPAddr string

	t         testing.TB
	kubeconf  string
	args      []string
	cmd       *exec.Cmd
	done      chan struct{}
	log       *testenv.Buffer
	stoppedMu sync.Mutex
}

// RBAC is what istiod-lite needs from the apiserver, granted to its ServiceAccount.
var RBAC = []rbacv1.PolicyRule{
	{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
	{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
	{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"security.istio.io"}, Resources: []string{"authorizationpolicies", "peerauthentications"}, Verbs: []string{"get", "list", "watch"}},
	// The waypoint deployer: Gateways and GatewayClasses, their status, and each waypoint's
	// ServiceAccount, Deployment and Service (applied server-side).
	{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways", "gatewayclasses"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gatewayclasses"}, Verbs: []string{"create"}},
	{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"gateways/status", "gatewayclasses/status"}, Verbs: []string{"get", "update", "patch"}},
	// The waypoints' L7 configuration (HTTPRoutes) and the HTTPRoute status writer.
	{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes/status"}, Verbs: []string{"update", "patch"}},
	{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"create", "update", "patch"}},
}

// SecretsRBAC is granted in istiod-lite's own namespace only.
var SecretsRBAC = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "create"}},
}

// Kubeconfig creates istiod-lite's ServiceAccount and RBAC in ns and returns a
// kubeconfig with a token of that ServiceAccount, so the test also proves the RBAC is enough.
func Kubeconfig(t testing.TB, c *cluster.Cluster, ns string) string {
	t.Helper()
	ctx := context.Background()
	name := "istiod-lite-" + ns
	create := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "istiod"}}, metav1.CreateOptions{})
	create(err)
	_, err = c.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: RBAC}, metav1.CreateOptions{})
	create(err)
	t.Cleanup(func() {
		_ = c.Client.RbacV1().ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "istiod", Namespace: ns}}
	_, err = c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Subjects: subject,
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
	}, metav1.CreateOptions{})
	create(err)
	t.Cleanup(func() {
		_ = c.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	_, err = c.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "istiod"}, Rules: SecretsRBAC}, metav1.CreateOptions{})
	create(err)
	_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod"}, Subjects: subject,
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "istiod"},
	}, metav1.CreateOptions{})
	create(err)
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "istiod", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	create(err)

	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: c.Config.Host, CertificateAuthorityData: c.Config.CAData}
	cfg.AuthInfos["istiod"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["istiod"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "istiod"}
	cfg.CurrentContext = "istiod"
	path := filepath.Join(t.TempDir(), "istiod.kubeconfig")
	create(clientcmd.WriteToFile(*cfg, path))
	return path
}

// New prepares an istiod-lite in ns (not started); extra flags are appended.
func New(t testing.TB, ns, kubeconfig string, extra ...string) *Istiod {
	t.Helper()
	ports := FreePorts(t, 2)
	return &Istiod{
		t: t, NS: ns, kubeconf: kubeconfig,
		GRPCAddr: "127.0.0.1:" + strconv.Itoa(ports[0]),
		HTTPAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
		args:     extra,
	}
}

// Start runs the process and waits until /ready answers 200.
func (d *Istiod) Start() {
	t := d.t
	t.Helper()
	d.log = &testenv.Buffer{}
	d.cmd = exec.Command(Binary(t, "istiod-lite/cmd/istiod-lite"), append([]string{
		"--kubeconfig=" + d.kubeconf, "--namespace=" + d.NS,
		"--grpc-addr=" + d.GRPCAddr, "--http-addr=" + d.HTTPAddr, "--log-level=debug",
	}, d.args...)...)
	d.cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // nothing leaks in from the test's environment
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := cluster.StartChild(d.cmd); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(d.Stop)
	err := wait.PollUntilContextTimeout(context.Background(), 25*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		select {
		case <-d.done:
			return false, fmt.Errorf("istiod-lite exited: %v", d.cmd.ProcessState)
		default:
		}
		resp, err := http.Get("http://" + d.HTTPAddr + "/ready")
		if err != nil {
			return false, nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("istiod-lite not ready: %v\nlog:\n%s", err, d.log.String())
	}
}

// Stop terminates the process (SIGTERM) and waits for it; safe to call twice.
func (d *Istiod) Stop() {
	d.stoppedMu.Lock()
	defer d.stoppedMu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.done:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	}
	if d.t.Failed() {
		d.t.Logf("istiod-lite (%s) log:\n%s", d.NS, d.log.String())
	}
	d.cmd = nil
}

// CAClient dials the CA with TLS verified against root, as a workload proxy does.
func (d *Istiod) CAClient(t testing.TB, root *x509.Certificate) pb.IstioCertificateServiceClient {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(root)
	conn, err := grpc.NewClient(d.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: "istiod." + d.NS + ".svc", MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return pb.NewIstioCertificateServiceClient(conn)
}

// PublishedRoot waits for the istio-ca-root-cert ConfigMap in ns and returns its root.
func PublishedRoot(t testing.TB, c *cluster.Cluster, ns string) *x509.Certificate {
	t.Helper()
	var root *x509.Certificate
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		block, _ := pem.Decode([]byte(cm.Data["root-cert.pem"]))
		if block == nil {
			return false, fmt.Errorf("ConfigMap istio-ca-root-cert in %s has no PEM root-cert.pem", ns)
		}
		root, err = x509.ParseCertificate(block.Bytes)
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("waiting for the root ConfigMap in %s: %v", ns, err)
	}
	return root
}

// FreePorts returns n free loopback TCP ports.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// Log is everything the process has written so far.
func (d *Istiod) Log() string { return d.log.String() }

// PID is the process id of the running process (0 when stopped).
func (d *Istiod) PID() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}
