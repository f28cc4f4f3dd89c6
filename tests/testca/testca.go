// Package testca serves Istio's certificate service (IstioCertificateService) from an
// in-memory CA on a unix socket, for tests that run ztunnel or waypoint without istiod-lite
// (network-namespace tests cannot reach the local apiserver). A unix socket is reachable
// from every network namespace.
//
// It trusts every caller and signs any well-formed CSR: it stands in for the CA's signing,
// never for its authorization, which tests/integration checks against istiod-lite.
package testca

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// ServerName is the name in the server's certificate (Istio's default CA address).
const ServerName = "istiod.istio-system.svc"

// Server is a running test CA.
type Server struct {
	CA *secretstest.CA
	// Address is the gRPC target, unix:///…/ca.sock.
	Address string
	// RootPath is a PEM file with the CA's root: the mesh root and the root of the
	// server's own certificate.
	RootPath string
}

// Start serves until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	ca := secretstest.New(t)
	dir := t.TempDir()
	s := &Server{CA: ca, Address: "unix://" + filepath.Join(dir, "ca.sock"), RootPath: filepath.Join(dir, "root-cert.pem")}
	if err := os.WriteFile(s.RootPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	serving, err := ca.IssueServing([]string{ServerName}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "ca.sock"))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*serving}, MinVersion: tls.VersionTLS12})))
	pb.RegisterIstioCertificateServiceServer(g, &service{ca: ca})
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return s
}

type service struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca *secretstest.CA
}

func (s *service) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	chain, err := s.ca.Issue([]byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &pb.IstioCertificateResponse{}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	return resp, nil
}
