//go:build unix

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

// caServerName is the name in the control plane's serving certificates (Istio's default
// CA and xDS address).
const caServerName = "istiod.istio-system.svc"

// testCA is Istio's certificate service on a unix socket, signing every well-formed CSR,
// as tests/testca is (which waypoint/ may not import).
type testCA struct {
	ca       *secretstest.CA
	address  string // unix:///…/ca.sock
	rootPath string // PEM of the mesh root
}

func startCA(t *testing.T) *testCA {
	t.Helper()
	dir := t.TempDir()
	c := &testCA{ca: secretstest.New(t), address: "unix://" + filepath.Join(dir, "ca.sock"), rootPath: filepath.Join(dir, "root-cert.pem")}
	if err := os.WriteFile(c.rootPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.ca.Root.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "ca.sock"))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(c.serving(t)))
	pb.RegisterIstioCertificateServiceServer(g, &caService{ca: c.ca})
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return c
}

// serving returns gRPC server credentials for caServerName, signed by the mesh root.
func (c *testCA) serving(t *testing.T) credentials.TransportCredentials {
	t.Helper()
	cert, err := c.ca.IssueServing([]string{caServerName}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12})
}

// workloadCert issues a certificate for id, as a client of the mesh presents.
func (c *testCA) workloadCert(t *testing.T, id identity.ID) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id.String())
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.ca.Issue(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	out := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}

type caService struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca *secretstest.CA
}

func (s *caService) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	chain, err := s.ca.Issue([]byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &pb.IstioCertificateResponse{CertChain: secretstest.EncodePEM(chain)}, nil
}
