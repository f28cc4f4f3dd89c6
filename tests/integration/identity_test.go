package integration

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/tests/cluster"
	"github.com/ambient-lite/ambient-lite/tests/istiodtest"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// csrFor returns a PEM CSR naming spiffeID, and its key.
func csrFor(t testing.TB, spiffeID string) (string, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

// ask sends CreateCertificate for spiffeID with token, impersonating when asked.
func ask(m istiodtest.Mesh, t testing.TB, token, spiffeID string, impersonate bool, ttl int64) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	csr, _ := csrFor(t, spiffeID)
	req := &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: ttl}
	if impersonate {
		req.Metadata, _ = structpb.NewStruct(map[string]any{"ImpersonatedIdentity": spiffeID})
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token), 10*time.Second)
	defer cancel()
	return m.CA.CreateCertificate(ctx, req)
}

func parseChain(t testing.TB, pems []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, p := range pems {
		block, rest := pem.Decode([]byte(p))
		if block == nil || strings.TrimSpace(string(rest)) != "" {
			t.Fatalf("chain element is not exactly one PEM certificate: %q", p)
			return nil
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func wantCode(t testing.TB, err error, code codes.Code, msgPart string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msgPart) {
		t.Fatalf("err = %v, want %v mentioning %q", err, code, msgPart)
	}
}

// 1. A ServiceAccount token gets a certificate with exactly its URI SAN, which
// x509svid.Verify accepts against the root published in the workload's namespace.
func TestWorkloadCertificate(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	app := c.Namespace(t, nil)
	istiodtest.CreateSA(t, c, app, "productpage")
	id := "spiffe://cluster.local/ns/" + app + "/sa/productpage"

	resp, err := ask(m, t, istiodtest.SAToken(t, c, app, "productpage", "istio-ca", nil), id, false, 3600)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	chain := parseChain(t, resp.CertChain)
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Fatalf("leaf SANs: URIs %v DNS %v IPs %v, want exactly %s", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, id)
	}
	if life := time.Until(leaf.NotAfter); life < 59*time.Minute || life > 61*time.Minute {
		t.Errorf("leaf valid for another %s, want ~1h", life)
	}
	appRoot := istiodtest.PublishedRoot(t, c, app) // what a workload in that namespace trusts
	if !chain[len(chain)-1].Equal(appRoot) {
		t.Error("chain does not end with the published root")
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	got, _, err := x509svid.Verify(chain[:len(chain)-1], x509bundle.FromX509Authorities(td, []*x509.Certificate{appRoot}))
	if err != nil || got.String() != id {
		t.Fatalf("x509svid.Verify = %v, %v; want %s", got, err, id)
	}

	// The maximum validity is enforced whatever is asked.
	resp, err = ask(m, t, istiodtest.SAToken(t, c, app, "productpage", "istio-ca", nil), id, false, 30*24*3600)
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(parseChain(t, resp.CertChain)[0].NotAfter); life > 24*time.Hour+time.Minute {
		t.Errorf("a 30-day request got %s, want at most the 24h maximum", life)
	}
}

// 2. A token of SA A asking for SA B is PermissionDenied; expired, wrong-audience and
// absent tokens are Unauthenticated; a malformed CSR is InvalidArgument.
func TestCallerRefusals(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	app := c.Namespace(t, nil)
	istiodtest.CreateSA(t, c, app, "a", "b")
	idA := "spiffe://cluster.local/ns/" + app + "/sa/a"
	idB := "spiffe://cluster.local/ns/" + app + "/sa/b"
	tokenA := istiodtest.SAToken(t, c, app, "a", "istio-ca", nil)

	_, err := ask(m, t, tokenA, idB, false, 0)
	wantCode(t, err, codes.PermissionDenied, "may only request its own identity")

	_, err = ask(m, t, istiodtest.SAToken(t, c, app, "a", "some-other-audience", nil), idA, false, 0)
	wantCode(t, err, codes.Unauthenticated, "istio-ca")

	expired, err := c.SignServiceAccountToken(app, "a", []string{"istio-ca"}, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ask(m, t, expired, idA, false, 0)
	wantCode(t, err, codes.Unauthenticated, "expired")
	// The same signing path with a live expiry is accepted: the refusal above is the expiry.
	live, err := c.SignServiceAccountToken(app, "a", []string{"istio-ca"}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ask(m, t, live, idA, false, 0); err != nil {
		t.Fatalf("a live token from the same signer was refused: %v", err)
	}

	_, err = ask(m, t, tokenA, "spiffe://cluster.local/ns/"+app+"/sa/a", true, 0)
	wantCode(t, err, codes.PermissionDenied, "not a trusted node account")

	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tokenA)
	_, err = m.CA.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"})
	wantCode(t, err, codes.InvalidArgument, "invalid CSR")
	_, err = m.CA.CreateCertificate(context.Background(), &pb.IstioCertificateRequest{Csr: "x"})
	wantCode(t, err, codes.Unauthenticated, "no bearer token")
}

// 3. ztunnel's impersonation is allowed only for ServiceAccounts that have a pod on the
// caller's node.
func TestNodeImpersonation(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	app := c.Namespace(t, nil)
	istiodtest.CreateSA(t, c, m.NS, "ztunnel")
	istiodtest.CreateSA(t, c, app, "cart", "payments", "idle")
	nodeA, nodeB := "node-a-"+app, "node-b-"+app
	for _, n := range []string{nodeA, nodeB} {
		if _, err := c.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
	}
	ztunnelPod := createPod(t, c, m.NS, "ztunnel-a", "ztunnel", nodeA)
	cartPod := createPod(t, c, app, "cart-1", "cart", nodeA)
	createPod(t, c, app, "payments-1", "payments", nodeB)
	zt := istiodtest.SAToken(t, c, m.NS, "ztunnel", "istio-ca", ztunnelPod)
	id := func(sa string) string { return "spiffe://cluster.local/ns/" + app + "/sa/" + sa }

	// The pod index follows the informer: allow a moment for the pods to arrive.
	var resp *pb.IstioCertificateResponse
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		var err error
		resp, err = ask(m, t, zt, id("cart"), true, 0)
		return err == nil, nil
	})
	if err != nil {
		_, err := ask(m, t, zt, id("cart"), true, 0)
		t.Fatalf("ztunnel on %s asking for cart (pod on %s): %v", nodeA, nodeA, err)
	}
	if got := parseChain(t, resp.CertChain)[0].URIs[0].String(); got != id("cart") {
		t.Errorf("impersonated certificate is for %s, want %s", got, id("cart"))
	}

	_, err = ask(m, t, zt, id("payments"), true, 0)
	wantCode(t, err, codes.PermissionDenied, "no pod running as "+app+"/payments is on node "+nodeA)
	_, err = ask(m, t, zt, id("idle"), true, 0)
	wantCode(t, err, codes.PermissionDenied, "no pod running as "+app+"/idle")

	// A token not bound to a pod cannot impersonate, even for a trusted account.
	_, err = ask(m, t, istiodtest.SAToken(t, c, m.NS, "ztunnel", "istio-ca", nil), id("cart"), true, 0)
	wantCode(t, err, codes.PermissionDenied, "pod-bound token")

	// Once the cart pod is gone from the node, so is ztunnel's right to its identity.
	if err := c.Client.CoreV1().Pods(app).Delete(context.Background(), cartPod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		_, err := ask(m, t, zt, id("cart"), true, 0)
		return status.Code(err) == codes.PermissionDenied, nil
	})
	if err != nil {
		t.Fatal("impersonation still allowed after the last cart pod left the node")
	}
}

func createPod(t testing.TB, c *cluster.Cluster, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	p, err := c.Client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa, NodeName: node, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "app", Image: "app:test"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return p
}

// 4. Restarting istiod-lite keeps the root; two instances started together agree on one.
func TestRootIsStableAcrossInstances(t *testing.T) {
	c := cluster.Shared(t)
	ns := c.Namespace(t, nil)
	kubeconfig := istiodtest.Kubeconfig(t, c, ns)
	a, b := istiodtest.New(t, ns, kubeconfig), istiodtest.New(t, ns, kubeconfig)
	var wg sync.WaitGroup
	for _, d := range []*istiodtest.Istiod{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.Start()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	root := istiodtest.PublishedRoot(t, c, ns)
	app := c.Namespace(t, nil)
	istiodtest.CreateSA(t, c, app, "w")
	id := "spiffe://cluster.local/ns/" + app + "/sa/w"
	issuedRoot := func(d *istiodtest.Istiod) *x509.Certificate {
		t.Helper()
		m := istiodtest.Mesh{Istiod: d, Root: root, CA: d.CAClient(t, root)} // TLS to each instance verifies against the one root
		resp, err := ask(m, t, istiodtest.SAToken(t, c, app, "w", "istio-ca", nil), id, false, 0)
		if err != nil {
			t.Fatalf("instance %s: %v", d.GRPCAddr, err)
		}
		chain := parseChain(t, resp.CertChain)
		return chain[len(chain)-1]
	}
	if !issuedRoot(a).Equal(root) || !issuedRoot(b).Equal(root) {
		t.Fatal("the two instances sign with different roots")
	}

	a.Stop()
	b.Stop()
	a.Start()
	if !issuedRoot(a).Equal(root) {
		t.Fatal("the root changed across a restart")
	}
	secret, err := c.Client.CoreV1().Secrets(ns).Get(context.Background(), "istio-ca-secret", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(secret.Data["ca-cert.pem"])
	if block == nil || !root.Equal(mustParse(t, block.Bytes)) {
		t.Error("istio-ca-secret does not hold the root in use")
	}
}

func mustParse(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The root ConfigMap reaches new namespaces and is restored when deleted or edited.
func TestRootPublishedEverywhere(t *testing.T) {
	c := cluster.Shared(t)
	m := istiodtest.StartMesh(t, c)
	ns := c.Namespace(t, nil)
	if got := istiodtest.PublishedRoot(t, c, ns); !got.Equal(m.Root) {
		t.Fatal("a new namespace got a different root")
	}
	cms := c.Client.CoreV1().ConfigMaps(ns)
	if err := cms.Delete(context.Background(), "istio-ca-root-cert", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := istiodtest.PublishedRoot(t, c, ns); !got.Equal(m.Root) {
		t.Fatal("the deleted ConfigMap came back with a different root")
	}
	patch := []byte(`{"data":{"root-cert.pem":"tampered"}}`)
	if _, err := cms.Patch(context.Background(), "istio-ca-root-cert", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		cm, err := cms.Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		return err == nil && strings.HasPrefix(cm.Data["root-cert.pem"], "-----BEGIN CERTIFICATE-----"), nil
	})
	if err != nil {
		t.Fatal("an edited root ConfigMap was not restored")
	}
}

// A plug-in CA in the cacerts Secret (Istio's layout) is used instead of a generated root:
// leaves chain to the operator's root through its intermediate, and that root is published.
func TestPluginCA(t *testing.T) {
	c := cluster.Shared(t)
	ns := c.Namespace(t, nil)
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTemplate := func(cn string, serial int64) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		}
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, caTemplate("operator root", 1), caTemplate("operator root", 1), rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root := mustParse(t, rootDER)
	interDER, err := x509.CreateCertificate(rand.Reader, caTemplate("cluster intermediate", 2), root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(interKey)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER})
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})
	_, err = c.Client.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "cacerts"},
		Data: map[string][]byte{
			"ca-cert.pem": certPEM, "ca-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
			"root-cert.pem": rootPEM, "cert-chain.pem": append(append([]byte(nil), certPEM...), rootPEM...),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := istiodtest.New(t, ns, istiodtest.Kubeconfig(t, c, ns))
	d.Start()
	if published := istiodtest.PublishedRoot(t, c, ns); !published.Equal(root) {
		t.Fatalf("published root is %s, want the plug-in root", published.Subject)
	}
	m := istiodtest.Mesh{Istiod: d, Root: root, CA: d.CAClient(t, root)}
	app := c.Namespace(t, nil)
	istiodtest.CreateSA(t, c, app, "w")
	id := "spiffe://cluster.local/ns/" + app + "/sa/w"
	resp, err := ask(m, t, istiodtest.SAToken(t, c, app, "w", "istio-ca", nil), id, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, resp.CertChain)
	if len(chain) != 3 || chain[1].Subject.CommonName != "cluster intermediate" || !chain[2].Equal(root) {
		t.Fatalf("chain = %d certificates, want leaf, intermediate, operator root", len(chain))
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	if _, _, err := x509svid.Verify(chain[:2], x509bundle.FromX509Authorities(td, []*x509.Certificate{root})); err != nil {
		t.Fatalf("leaf does not verify to the operator root: %v", err)
	}
	if _, err := c.Client.CoreV1().Secrets(ns).Get(context.Background(), "istio-ca-secret", metav1.GetOptions{}); err == nil {
		t.Error("istio-ca-secret was created although a plug-in CA is configured")
	}
}
