package istiodtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Mesh is an istiod-lite running in its own namespace, with its published root and a CA
// client that trusts it.
type Mesh struct {
	*Istiod
	Root *x509.Certificate
	CA   pb.IstioCertificateServiceClient
}

// StartMesh starts an istiod-lite in a fresh namespace of c, with its own ServiceAccount
// and RBAC, and waits for its root to be published; extra flags are appended.
func StartMesh(t testing.TB, c *cluster.Cluster, extra ...string) Mesh {
	t.Helper()
	ns := c.Namespace(t, nil)
	d := New(t, ns, Kubeconfig(t, c, ns), extra...)
	d.Start()
	root := PublishedRoot(t, c, ns)
	return Mesh{Istiod: d, Root: root, CA: d.CAClient(t, root)}
}

// SAToken returns a token for ns/sa with audience aud, bound to pod when given.
func SAToken(t testing.TB, c *cluster.Cluster, ns, sa, aud string, pod *corev1.Pod) string {
	t.Helper()
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{aud}, ExpirationSeconds: ptr.To[int64](3600)}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, sa, err)
	}
	return tr.Status.Token
}

// CreateSA creates ServiceAccounts in ns.
func CreateSA(t testing.TB, c *cluster.Cluster, ns string, names ...string) {
	t.Helper()
	for _, n := range names {
		_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// XDSConn dials istiod-lite's gRPC port with TLS verified against root, sending token
// (none when empty).
func XDSConn(t testing.TB, d *Istiod, root *x509.Certificate, token string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(d.GRPCAddr, DialOptions(d, root, token)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// DialOptions are the gRPC options of XDSConn, for clients that dial themselves.
func DialOptions(d *Istiod, root *x509.Certificate, token string) []grpc.DialOption {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: "istiod." + d.NS + ".svc", MinVersion: tls.VersionTLS12,
	}))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	return opts
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }
