package caclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

func TestSign(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	workload := mustID(t)
	tests := []struct {
		name         string
		ttl          time.Duration
		impersonate  identity.ID
		clusterID    string
		wantSeconds  int64
		wantCluster  string
		wantMetadata bool
	}{
		{name: "own identity", ttl: 24 * time.Hour, wantSeconds: 86400, wantCluster: "Kubernetes"},
		{name: "impersonating", ttl: time.Hour, impersonate: workload, wantSeconds: 3600, wantCluster: "Kubernetes", wantMetadata: true},
		{name: "fraction rounds up", ttl: 1500 * time.Millisecond, wantSeconds: 2, wantCluster: "Kubernetes"},
		{name: "zero lets the CA choose", ttl: 0, wantSeconds: 0, wantCluster: "Kubernetes"},
		{name: "cluster ID", ttl: time.Minute, clusterID: "east", wantSeconds: 60, wantCluster: "east"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, f, func(o *Options) { o.ClusterID = tt.clusterID })
			csr := testCSR(t, workload)
			before := len(f.requests())
			chain, err := c.Sign(t.Context(), csr, tt.ttl, tt.impersonate)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if len(chain) != 3 || !chain[2].Equal(f.ca.Root) || !chain[1].Equal(f.ca.Intermediate) {
				t.Fatalf("chain of %d, want leaf, intermediate, root", len(chain))
			}
			if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != workload.String() {
				t.Errorf("leaf URIs %v", chain[0].URIs)
			}
			reqs := f.requests()
			if len(reqs) != before+1 {
				t.Fatalf("%d requests, want 1", len(reqs)-before)
			}
			got := reqs[len(reqs)-1]
			if a := got.md.Get("authorization"); len(a) != 1 || a[0] != "Bearer static-token" {
				t.Errorf("authorization %q", a)
			}
			if cl := got.md.Get("clusterid"); len(cl) != 1 || cl[0] != tt.wantCluster {
				t.Errorf("clusterid %q, want %q", cl, tt.wantCluster)
			}
			if got.req.GetCsr() != string(csr) {
				t.Error("CSR not sent verbatim")
			}
			if got.req.GetValidityDuration() != tt.wantSeconds {
				t.Errorf("validity %d s, want %d", got.req.GetValidityDuration(), tt.wantSeconds)
			}
			fields := got.req.GetMetadata().GetFields()
			switch {
			case tt.wantMetadata && (len(fields) != 1 || fields["ImpersonatedIdentity"].GetStringValue() != workload.String()):
				t.Errorf("metadata %v, want only ImpersonatedIdentity=%s", got.req.GetMetadata(), workload)
			case !tt.wantMetadata && got.req.GetMetadata() != nil:
				t.Errorf("metadata %v, want none", got.req.GetMetadata())
			}
			if got.tlsVersion < tls.VersionTLS12 {
				t.Errorf("TLS version %#x, want 1.2 or later", got.tlsVersion)
			}
		})
	}
}

func TestTokenFileReadEveryCall(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	path := filepath.Join(t.TempDir(), "istio-token")
	c := newClient(t, f, func(o *Options) { o.Token, o.TokenPath = nil, path })
	steps := []struct {
		name      string
		content   *string // nil: remove the file
		wantToken string  // "" when Sign must fail before any request
		wantErr   string
	}{
		{name: "first token", content: ptr("token-one\n"), wantToken: "token-one"},
		{name: "rotated by the kubelet", content: ptr("  token-two "), wantToken: "token-two"},
		{name: "empty file", content: ptr("\n"), wantErr: "is empty"},
		{name: "missing file", wantErr: "reading token file"},
		{name: "too large", content: ptr(strings.Repeat("x", maxTokenSize+1)), wantErr: "larger than"},
		{name: "back again", content: ptr("token-three"), wantToken: "token-three"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.content == nil {
				_ = os.Remove(path)
			} else if err := os.WriteFile(path, []byte(*s.content), 0o600); err != nil {
				t.Fatal(err)
			}
			before := len(f.requests())
			_, err := c.Sign(t.Context(), testCSR(t, mustID(t)), time.Hour, identity.ID{})
			if s.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), s.wantErr) {
					t.Fatalf("Sign = %v, want error containing %q", err, s.wantErr)
				}
				if len(f.requests()) != before {
					t.Error("a request was sent without a token")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			reqs := f.requests()
			if a := reqs[len(reqs)-1].md.Get("authorization"); len(a) != 1 || a[0] != "Bearer "+s.wantToken {
				t.Errorf("authorization %q, want Bearer %s", a, s.wantToken)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestTokenFuncError(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	errNoToken := errors.New("no token yet")
	c := newClient(t, f, func(o *Options) {
		o.Token = func(context.Context) (string, error) { return "", errNoToken }
	})
	if _, err := c.Sign(t.Context(), testCSR(t, mustID(t)), time.Hour, identity.ID{}); !errors.Is(err, errNoToken) {
		t.Errorf("Sign = %v, want it to wrap the token error", err)
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("%d requests sent without a token", n)
	}
}

func TestStatusPreserved(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	c := newClient(t, f, nil)
	for _, code := range []codes.Code{codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.Internal, codes.Unavailable} {
		t.Run(code.String(), func(t *testing.T) {
			f.setRespond(func(context.Context, *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
				return nil, status.Error(code, "refused by test")
			})
			_, err := c.Sign(t.Context(), testCSR(t, mustID(t)), time.Hour, identity.ID{})
			if status.Code(err) != code {
				t.Errorf("status.Code(%v) = %s, want %s", err, status.Code(err), code)
			}
			if err == nil || !strings.Contains(err.Error(), "requesting certificate from "+f.addr) || !strings.Contains(err.Error(), "refused by test") {
				t.Errorf("error %q lacks context or the CA's message", err)
			}
		})
	}
}

func TestBadResponses(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	c := newClient(t, f, nil)
	tests := []struct {
		name    string
		chain   []string
		wantErr string
	}{
		{"empty chain", nil, "empty certificate chain"},
		{"garbage", []string{"not a certificate"}, "unexpected data"},
		{"CSR echoed back", []string{string(testCSR(t, mustID(t)))}, "want CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.setRespond(func(context.Context, *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
				return &pb.IstioCertificateResponse{CertChain: tt.chain}, nil
			})
			_, err := c.Sign(t.Context(), testCSR(t, mustID(t)), time.Hour, identity.ID{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "certificate chain from") {
				t.Errorf("Sign = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestServerVerification checks that the client only talks to a CA whose certificate
// verifies against Roots for ServerName over TLS 1.2 or later.
func TestServerVerification(t *testing.T) {
	tests := []struct {
		name       string
		dnsName    string
		serverTLS  func(*tls.Config)
		otherRoots bool
		serverName string
	}{
		{name: "unknown root", dnsName: DefaultServerName, otherRoots: true},
		{name: "wrong server name", dnsName: "istiod.elsewhere.svc"},
		{name: "custom server name mismatch", dnsName: DefaultServerName, serverName: "ca.example.org"},
		{name: "TLS 1.1 server", dnsName: DefaultServerName, serverTLS: func(c *tls.Config) { c.MaxVersion = tls.VersionTLS11 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startCA(t, tt.dnsName, tt.serverTLS)
			c := newClient(t, f, func(o *Options) {
				o.ServerName = tt.serverName
				if tt.otherRoots {
					_, o.Roots = servingCert(t, DefaultServerName)
				}
			})
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			_, err := c.Sign(ctx, testCSR(t, mustID(t)), time.Hour, identity.ID{})
			if status.Code(err) != codes.Unavailable {
				t.Errorf("Sign = %v, want Unavailable (handshake refused)", err)
			}
			if n := len(f.requests()); n != 0 {
				t.Errorf("%d requests reached an unverified CA", n)
			}
		})
	}
	t.Run("custom server name", func(t *testing.T) {
		f := startCA(t, "ca.example.org", nil)
		c := newClient(t, f, func(o *Options) { o.ServerName = "ca.example.org" })
		if _, err := c.Sign(t.Context(), testCSR(t, mustID(t)), time.Hour, identity.ID{}); err != nil {
			t.Errorf("Sign: %v", err)
		}
	})
}

func TestContextCancel(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	f.setRespond(func(ctx context.Context, _ *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	c := newClient(t, f, nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		for len(f.requests()) == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := c.Sign(ctx, testCSR(t, mustID(t)), time.Hour, identity.ID{}); status.Code(err) != codes.Canceled {
		t.Errorf("Sign = %v, want Canceled", err)
	}
}

func TestNewValidatesOptions(t *testing.T) {
	pool := x509.NewCertPool()
	tok := func(context.Context) (string, error) { return "t", nil }
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"valid with token func", Options{Address: "127.0.0.1:15012", Roots: pool, Token: tok}, ""},
		{"valid with token file", Options{Address: "istiod.istio-system.svc:15012", Roots: pool, TokenPath: "/var/run/secrets/tokens/istio-token"}, ""},
		{"no address", Options{Roots: pool, Token: tok}, "Address is required"},
		{"no roots", Options{Address: "a:1", Token: tok}, "Roots is required"},
		{"no token", Options{Address: "a:1", Roots: pool}, "exactly one of Options.TokenPath and Options.Token"},
		{"two tokens", Options{Address: "a:1", Roots: pool, Token: tok, TokenPath: "/t"}, "exactly one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				for range 2 {
					if err := c.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSignAfterClose(t *testing.T) {
	f := startCA(t, DefaultServerName, nil)
	c := newClient(t, f, nil)
	if _, err := c.Sign(t.Context(), testCSR(t, mustID(t)), time.Hour, identity.ID{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Sign(t.Context(), testCSR(t, mustID(t)), time.Hour, identity.ID{}); status.Code(err) != codes.Canceled {
		t.Errorf("Sign after Close = %v, want Canceled", err)
	}
}

func TestSeconds(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want int64
	}{
		{0, 0}, {-time.Second, 0}, {time.Nanosecond, 1}, {time.Second, 1}, {time.Second + 1, 2}, {24 * time.Hour, 86400},
	}
	for _, tt := range tests {
		if got := seconds(tt.in); got != tt.want {
			t.Errorf("seconds(%s) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
