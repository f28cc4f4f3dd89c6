package caserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/ca"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// fakePods is an in-memory Pods: pods by namespace/name.
type fakePods map[string]fakePod

type fakePod struct {
	ns, name string
	Pod
}

func (f fakePods) Pod(ns, name string) (Pod, bool) {
	p, ok := f[ns+"/"+name]
	return p.Pod, ok
}

func (f fakePods) HasServiceAccountOnNode(node, ns, sa string) bool {
	for _, p := range f {
		if p.NodeName == node && p.ns == ns && p.ServiceAccount == sa {
			return true
		}
	}
	return false
}

func pods(list ...fakePod) fakePods {
	m := fakePods{}
	for _, p := range list {
		m[p.ns+"/"+p.name] = p
	}
	return m
}

func mustID(t testing.TB, s string) identity.ID {
	id, err := identity.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestAuthorize(t *testing.T) {
	trusted := []Account{{"istio-system", "ztunnel"}}
	world := pods(
		fakePod{"istio-system", "ztunnel-a", Pod{UID: "uid-za", ServiceAccount: "ztunnel", NodeName: "node-a"}},
		fakePod{"istio-system", "ztunnel-b", Pod{UID: "uid-zb", ServiceAccount: "ztunnel", NodeName: "node-b"}},
		fakePod{"istio-system", "ztunnel-pending", Pod{UID: "uid-zp", ServiceAccount: "ztunnel"}},
		fakePod{"shop", "cart-1", Pod{UID: "uid-c", ServiceAccount: "cart", NodeName: "node-a"}},
		fakePod{"shop", "pay-1", Pod{UID: "uid-p", ServiceAccount: "payments", NodeName: "node-b"}},
	)
	ztunnelA := Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", PodUID: "uid-za", NodeName: "node-a"}
	cart := "spiffe://cluster.local/ns/shop/sa/cart"
	tests := []struct {
		name        string
		caller      Caller
		requested   string
		impersonate bool
		wantDeny    string // "" = allowed
	}{
		{"own identity", Caller{Namespace: "shop", ServiceAccount: "cart"}, cart, false, ""},
		{"another identity without impersonation", Caller{Namespace: "shop", ServiceAccount: "cart"}, "spiffe://cluster.local/ns/shop/sa/payments", false, "may only request its own identity"},
		{"same SA name, other namespace", Caller{Namespace: "other", ServiceAccount: "cart"}, cart, false, "may only request its own identity"},
		{"foreign trust domain", Caller{Namespace: "shop", ServiceAccount: "cart"}, "spiffe://evil.org/ns/shop/sa/cart", false, "outside the mesh trust domain"},
		{"ztunnel for a pod on its node", ztunnelA, cart, true, ""},
		{"ztunnel for its own identity without impersonation", ztunnelA, "spiffe://cluster.local/ns/istio-system/sa/ztunnel", false, ""},
		{"ztunnel for a pod on another node", ztunnelA, "spiffe://cluster.local/ns/shop/sa/payments", true, "no pod running as shop/payments is on node node-a"},
		{"ztunnel for an SA with no pods", ztunnelA, "spiffe://cluster.local/ns/shop/sa/ghost", true, "no pod running as shop/ghost"},
		{"untrusted caller impersonating", Caller{Namespace: "shop", ServiceAccount: "cart", PodName: "cart-1", PodUID: "uid-c"}, cart, true, "not a trusted node account"},
		{"trusted name in another namespace", Caller{Namespace: "shop", ServiceAccount: "ztunnel", PodName: "x", PodUID: "y"}, cart, true, "not a trusted node account"},
		{"token not bound to a pod", Caller{Namespace: "istio-system", ServiceAccount: "ztunnel"}, cart, true, "needs a pod-bound token"},
		{"pod gone", Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-gone", PodUID: "u"}, cart, true, "no longer exists"},
		{"pod recreated with another uid", Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", PodUID: "old-uid"}, cart, true, "no longer exists"},
		{"pod not scheduled", Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-pending", PodUID: "uid-zp"}, cart, true, "not bound to a node"},
		{"token node disagrees with pod", Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-b", PodUID: "uid-zb", NodeName: "node-a"}, cart, true, "token names node node-a"},
		{"token without node info uses the pod's node", Caller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-b", PodUID: "uid-zb"}, "spiffe://cluster.local/ns/shop/sa/payments", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := authorize(tt.caller, mustID(t, tt.requested), tt.impersonate, "cluster.local", trusted, world)
			if tt.wantDeny == "" {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantDeny) {
				t.Fatalf("err = %v, want a denial containing %q", err, tt.wantDeny)
			}
		})
	}
}

func TestParseAccounts(t *testing.T) {
	got, err := ParseAccounts(" istio-system/ztunnel, kube-system/node-proxy ,")
	if err != nil || len(got) != 2 || got[1] != (Account{"kube-system", "node-proxy"}) {
		t.Fatalf("ParseAccounts = %v, %v", got, err)
	}
	for _, bad := range []string{"ztunnel", "/ztunnel", "ns/", "a/b/c"} {
		if _, err := ParseAccounts(bad); err == nil {
			t.Errorf("ParseAccounts(%q) succeeded", bad)
		}
	}
}

// fakeAuth maps tokens to callers; "down" fails as an unreachable apiserver would.
type fakeAuth map[string]Caller

func (f fakeAuth) Authenticate(_ context.Context, token string) (Caller, error) {
	if token == "down" {
		return Caller{}, errors.New("connection refused")
	}
	c, ok := f[token]
	if !ok {
		return Caller{}, fmt.Errorf("%w: token expired", ErrUnauthenticated)
	}
	return c, nil
}

func newServer(t *testing.T) (*Server, *ca.Bundle) {
	t.Helper()
	b, err := ca.NewSelfSignedRoot("cluster.local", 48*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{
		Bundle: b, TrustDomain: "cluster.local", DefaultTTL: 12 * time.Hour, MaxTTL: 24 * time.Hour,
		TrustedNodeAccounts: []Account{{"istio-system", "ztunnel"}},
		Auth: fakeAuth{
			"cart-token":    {Namespace: "shop", ServiceAccount: "cart"},
			"ztunnel-token": {Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "zt", PodUID: "u1"},
		},
		Pods: pods(
			fakePod{"istio-system", "zt", Pod{UID: "u1", ServiceAccount: "ztunnel", NodeName: "n1"}},
			fakePod{"shop", "cart-1", Pod{UID: "u2", ServiceAccount: "cart", NodeName: "n1"}},
		),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

func request(t *testing.T, id string, ttlSeconds int64, impersonate string) *pb.IstioCertificateRequest {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	req := &pb.IstioCertificateRequest{Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), ValidityDuration: ttlSeconds}
	if impersonate != "" {
		req.Metadata, _ = structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: impersonate})
	}
	return req
}

func withToken(token string) context.Context {
	if token == "" {
		return context.Background()
	}
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
}

func TestCreateCertificate(t *testing.T) {
	cart := "spiffe://cluster.local/ns/shop/sa/cart"
	tests := []struct {
		name     string
		token    string
		req      func(t *testing.T) *pb.IstioCertificateRequest
		wantCode codes.Code
		wantTTL  time.Duration
	}{
		{"own identity, default TTL", "cart-token", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 0, "") }, codes.OK, 12 * time.Hour},
		{"own identity, 10 s", "cart-token", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 10, "") }, codes.OK, 10 * time.Second},
		{"TTL clamped to max", "cart-token", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 7*24*3600, "") }, codes.OK, 24 * time.Hour},
		{"negative TTL", "cart-token", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, -5, "") }, codes.InvalidArgument, 0},
		{"no token", "", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 0, "") }, codes.Unauthenticated, 0},
		{"rejected token", "expired", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 0, "") }, codes.Unauthenticated, 0},
		{"apiserver down", "down", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 0, "") }, codes.Unavailable, 0},
		{"other identity", "cart-token", func(t *testing.T) *pb.IstioCertificateRequest {
			return request(t, "spiffe://cluster.local/ns/shop/sa/payments", 0, "")
		}, codes.PermissionDenied, 0},
		{"garbage CSR", "cart-token", func(*testing.T) *pb.IstioCertificateRequest { return &pb.IstioCertificateRequest{Csr: "nope"} }, codes.InvalidArgument, 0},
		{"ztunnel impersonates a pod on its node", "ztunnel-token", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 0, cart) }, codes.OK, 12 * time.Hour},
		{"impersonation header differs from CSR", "ztunnel-token", func(t *testing.T) *pb.IstioCertificateRequest {
			return request(t, cart, 0, "spiffe://cluster.local/ns/shop/sa/payments")
		}, codes.InvalidArgument, 0},
		{"impersonation header malformed", "ztunnel-token", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 0, "not-an-id") }, codes.InvalidArgument, 0},
		{"workload impersonating", "cart-token", func(t *testing.T) *pb.IstioCertificateRequest { return request(t, cart, 0, cart) }, codes.PermissionDenied, 0},
	}
	s, b := newServer(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			resp, err := s.CreateCertificate(withToken(tt.token), tt.req(t))
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.wantCode)
			}
			if err != nil {
				if msg := status.Convert(err).Message(); len(msg) < 10 {
					t.Errorf("error message %q does not say what was wrong", msg)
				}
				return
			}
			if n := len(resp.CertChain); n != 2 || resp.CertChain[1] != string(b.RootPEM()) {
				t.Fatalf("chain has %d elements or does not end with the root", n)
			}
			block, _ := pem.Decode([]byte(resp.CertChain[0]))
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if life := leaf.NotAfter.Sub(start); life < tt.wantTTL-2*time.Second || life > tt.wantTTL+2*time.Second {
				t.Errorf("leaf valid for %s, want %s", life, tt.wantTTL)
			}
			if leaf.URIs[0].String() != cart {
				t.Errorf("leaf SAN = %s, want %s", leaf.URIs[0], cart)
			}
		})
	}
}
