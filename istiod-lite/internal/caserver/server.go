// Package caserver serves Istio's certificate service (istio.v1.auth.IstioCertificateService/
// CreateCertificate): it authenticates the caller's bearer token, decides whether the caller
// may have the identity its CSR names — its own, or another through node-proxy impersonation
// (the ImpersonatedIdentity metadata field) — and has the CA sign.
//
// The decision is a pure function (authorize); Kubernetes is reached only through the small
// Authenticator and Pods interfaces this package owns. It is not the CA's key handling (ca)
// nor the gRPC listener set-up (app).
package caserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/ca"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// ImpersonatedIdentityKey is the request metadata field a node proxy sets to the SPIFFE ID
// it asks for on behalf of a workload on its node.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// ErrUnauthenticated wraps every reason a token is not accepted.
var ErrUnauthenticated = errors.New("unauthenticated")

// Authenticator validates a bearer token and says who presented it.
type Authenticator interface {
	// Authenticate returns the caller, or an error wrapping ErrUnauthenticated when the token
	// is invalid, expired, for another audience or not a ServiceAccount's. Other errors mean
	// the check itself failed (the apiserver is unreachable).
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// Options configures a Server.
type Options struct {
	Bundle      *ca.Bundle
	TrustDomain string
	// DefaultTTL is used when a request asks for no validity; MaxTTL caps every request.
	DefaultTTL, MaxTTL time.Duration
	// TrustedNodeAccounts may request other identities (ztunnel's ServiceAccount).
	TrustedNodeAccounts []Account
	Auth                Authenticator
	Pods                Pods
	// Log receives one line per issued or refused certificate. If nil, slog.Default().
	Log *slog.Logger
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
}

// Server implements IstioCertificateServiceServer.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer
	opts Options
}

var _ pb.IstioCertificateServiceServer = (*Server)(nil)

// New checks opts and returns a Server.
func New(opts Options) (*Server, error) {
	switch {
	case opts.Bundle == nil:
		return nil, errors.New("caserver: no CA bundle")
	case opts.Auth == nil || opts.Pods == nil:
		return nil, errors.New("caserver: Auth and Pods are required")
	case opts.TrustDomain == "":
		return nil, errors.New("caserver: no trust domain")
	case opts.MaxTTL <= 0 || opts.DefaultTTL <= 0:
		return nil, fmt.Errorf("caserver: TTLs must be positive (default %s, max %s)", opts.DefaultTTL, opts.MaxTTL)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Server{opts: opts}, nil
}

// CreateCertificate signs the request's CSR if the caller may have its identity.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	caller, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	csr, id, err := ca.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, s.refuse(codes.InvalidArgument, caller, "", err.Error())
	}
	impersonating := false
	if f, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; ok {
		want, err := identity.Parse(f.GetStringValue())
		if err != nil {
			return nil, s.refuse(codes.InvalidArgument, caller, id.String(), fmt.Sprintf("%s metadata: %v", ImpersonatedIdentityKey, err))
		}
		if want != id {
			return nil, s.refuse(codes.InvalidArgument, caller, id.String(),
				fmt.Sprintf("the CSR names %s but %s is %s", id, ImpersonatedIdentityKey, want))
		}
		impersonating = true
	}
	if err := authorize(caller, id, impersonating, s.opts.TrustDomain, s.opts.TrustedNodeAccounts, s.opts.Pods); err != nil {
		return nil, s.refuse(codes.PermissionDenied, caller, id.String(), err.Error())
	}
	ttl, err := s.ttl(req.GetValidityDuration())
	if err != nil {
		return nil, s.refuse(codes.InvalidArgument, caller, id.String(), err.Error())
	}
	chain, err := s.opts.Bundle.Sign(csr, id, ttl, s.opts.Now())
	if err != nil {
		s.opts.Log.Error("signing certificate", "identity", id, "caller", caller, "err", err)
		return nil, status.Errorf(codes.Internal, "signing certificate for %s: %v", id, err)
	}
	s.opts.Log.Info("issued certificate", "identity", id, "caller", caller, "impersonated", impersonating,
		"notAfter", chain[0].NotAfter.UTC().Format(time.RFC3339))
	return &pb.IstioCertificateResponse{CertChain: ca.EncodeChain(chain)}, nil
}

func (s *Server) authenticate(ctx context.Context) (Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var token string
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			token = strings.TrimSpace(t)
		}
	}
	if token == "" {
		return Caller{}, s.refuse(codes.Unauthenticated, Caller{}, "", "no bearer token in the authorization metadata (send a projected ServiceAccount token with audience istio-ca)")
	}
	caller, err := s.opts.Auth.Authenticate(ctx, token)
	if errors.Is(err, ErrUnauthenticated) {
		return Caller{}, s.refuse(codes.Unauthenticated, Caller{}, "", err.Error())
	}
	if err != nil {
		s.opts.Log.Error("authenticating caller", "err", err)
		return Caller{}, status.Errorf(codes.Unavailable, "authenticating caller: %v", err)
	}
	return caller, nil
}

func (s *Server) ttl(seconds int64) (time.Duration, error) {
	switch {
	case seconds < 0:
		return 0, fmt.Errorf("validity_duration %d s is negative", seconds)
	case seconds == 0:
		return min(s.opts.DefaultTTL, s.opts.MaxTTL), nil
	case time.Duration(seconds) > s.opts.MaxTTL/time.Second:
		return s.opts.MaxTTL, nil
	}
	return time.Duration(seconds) * time.Second, nil
}

func (s *Server) refuse(code codes.Code, caller Caller, id, msg string) error {
	s.opts.Log.Warn("refused certificate", "code", code.String(), "caller", caller, "identity", id, "reason", msg)
	return status.Error(code, msg)
}
