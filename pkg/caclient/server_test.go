package caclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	pb "istio.io/api/security/v1alpha1"
)

// seen is one request as the fake CA received it.
type seen struct {
	md         metadata.MD
	req        *pb.IstioCertificateRequest
	tlsVersion uint16
}

// fakeCA serves IstioCertificateService over TLS on 127.0.0.1:0, records requests and
// signs with a secretstest CA unless respond is set.
type fakeCA struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca      *secretstest.CA
	addr    string
	roots   *x509.CertPool // verify the serving certificate
	mu      sync.Mutex
	seen    []seen
	respond func(context.Context, *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error)
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s := seen{md: md, req: req}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			s.tlsVersion = info.State.Version
		}
	}
	f.mu.Lock()
	f.seen = append(f.seen, s)
	respond := f.respond
	f.mu.Unlock()
	if respond != nil {
		return respond(ctx, req)
	}
	chain, err := f.ca.Issue([]byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, err
	}
	return &pb.IstioCertificateResponse{CertChain: secretstest.EncodePEM(chain)}, nil
}

func (f *fakeCA) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.seen...)
}

func (f *fakeCA) setRespond(r func(context.Context, *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.respond = r
}

// startCA starts a fakeCA whose serving certificate names dnsName; edit may change the
// server's TLS config. The server stops when the test ends.
func startCA(t *testing.T, dnsName string, edit func(*tls.Config)) *fakeCA {
	t.Helper()
	serving, roots := servingCert(t, dnsName)
	conf := &tls.Config{Certificates: []tls.Certificate{serving}}
	if edit != nil {
		edit(conf)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCA{ca: secretstest.New(t), addr: ln.Addr().String(), roots: roots}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(conf)))
	pb.RegisterIstioCertificateServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
}

// servingCert returns a certificate for dnsName issued by a fresh root, and a pool with
// that root.
func servingCert(t *testing.T, dnsName string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), DNSNames: []string{dnsName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, root, &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// newClient returns a Client of f with a static token; edit may change the options.
func newClient(t *testing.T, f *fakeCA, edit func(*Options)) *Client {
	t.Helper()
	opts := Options{
		Address: f.addr,
		Roots:   f.roots,
		Token:   func(context.Context) (string, error) { return "static-token", nil },
		Log:     testLog(t),
	}
	if edit != nil {
		edit(&opts)
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
