// Package caclient is the client side of Istio's certificate service,
// istio.v1.auth.IstioCertificateService (gRPC over TLS, served by istiod on :15012): it
// sends a CSR with the caller's ServiceAccount token and, for a node proxy, the identity it
// asks for on a workload's behalf, and returns the parsed certificate chain.
//
// It is protocol only: it implements secrets.Signer but does not verify what it gets back
// (pkg/secrets does), generate keys, cache or retry. It knows nothing of Kubernetes beyond
// reading a projected token file. Any package may import it.
package caclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/secrets"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
)

// Wire names Istio uses.
const (
	// ImpersonatedIdentityKey is the IstioCertificateRequest.Metadata field a node proxy
	// sets to the SPIFFE ID it requests on behalf of a workload.
	ImpersonatedIdentityKey = "ImpersonatedIdentity"
	// DefaultServerName is the name the CA's serving certificate is checked against.
	DefaultServerName = "istiod.istio-system.svc"
	// DefaultClusterID is sent in the clusterid header when Options.ClusterID is empty.
	DefaultClusterID = "Kubernetes"
)

// Options configures a Client.
type Options struct {
	// Address is the CA's host:port, for example "istiod.istio-system.svc:15012". Required.
	Address string
	// Roots verify the CA's serving certificate. Required.
	Roots *x509.CertPool
	// ServerName is the name the serving certificate must carry. If empty,
	// DefaultServerName.
	ServerName string
	// TokenPath is a projected ServiceAccount token file, read again for every request
	// because the kubelet rotates it. Exactly one of TokenPath and Token is required.
	TokenPath string
	// Token returns the bearer token for a request; an alternative to TokenPath.
	Token func(ctx context.Context) (string, error)
	// ClusterID is sent as the clusterid request header. If empty, DefaultClusterID.
	ClusterID string
	// Log receives a Debug line per request. If nil, slog.Default().
	Log *slog.Logger
	// DialOptions are appended to the client's own (TLS with Roots), for example a
	// grpc.WithContextDialer in tests.
	DialOptions []grpc.DialOption
}

// Client requests certificates from an Istio CA. It is safe for concurrent use.
type Client struct {
	address   string
	conn      *grpc.ClientConn
	rpc       pb.IstioCertificateServiceClient
	token     func(context.Context) (string, error)
	clusterID string
	log       *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

var _ secrets.Signer = (*Client)(nil)

// New validates opts and returns a Client. It does not connect: the connection is made
// on the first request and re-made as needed.
func New(opts Options) (*Client, error) {
	switch {
	case opts.Address == "":
		return nil, errors.New("caclient: Options.Address is required")
	case opts.Roots == nil:
		return nil, errors.New("caclient: Options.Roots is required to verify the CA's certificate")
	case (opts.TokenPath == "") == (opts.Token == nil):
		return nil, errors.New("caclient: exactly one of Options.TokenPath and Options.Token is required")
	}
	if opts.ServerName == "" {
		opts.ServerName = DefaultServerName
	}
	if opts.ClusterID == "" {
		opts.ClusterID = DefaultClusterID
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	token := opts.Token
	if token == nil {
		token = fileToken(opts.TokenPath)
	}
	creds := credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    opts.Roots,
		ServerName: opts.ServerName,
	})
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts.DialOptions...)
	conn, err := grpc.NewClient(opts.Address, dial...)
	if err != nil {
		return nil, fmt.Errorf("caclient: connecting to %s: %w", opts.Address, err)
	}
	return &Client{
		address:   opts.Address,
		conn:      conn,
		rpc:       pb.NewIstioCertificateServiceClient(conn),
		token:     token,
		clusterID: opts.ClusterID,
		log:       opts.Log,
	}, nil
}

// Sign implements secrets.Signer: it sends csrPEM for ttl (rounded up to whole seconds;
// zero lets the CA choose) and returns the chain, leaf first. If impersonate is not zero
// the request carries it as ImpersonatedIdentity. Errors from the CA wrap its gRPC status,
// so status.Code(err) reports it.
func (c *Client) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, impersonate identity.ID) ([]*x509.Certificate, error) {
	token, err := c.token(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading token for the CA: %w", err)
	}
	req := &pb.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: seconds(ttl)}
	if !impersonate.IsZero() {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentityKey: structpb.NewStringValue(impersonate.String()),
		}}
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, "clusterid", c.clusterID)
	c.log.Debug("requesting certificate", "ca", c.address, "impersonate", impersonate, "ttl", ttl)
	resp, err := c.rpc.CreateCertificate(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("requesting certificate from %s: %w", c.address, err)
	}
	chain, err := ParseChain(resp.GetCertChain())
	if err != nil {
		return nil, fmt.Errorf("certificate chain from %s: %w", c.address, err)
	}
	return chain, nil
}

// Close closes the connection. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if err := c.conn.Close(); err != nil {
			c.closeErr = fmt.Errorf("closing connection to %s: %w", c.address, err)
		}
	})
	return c.closeErr
}

// seconds converts ttl to whole seconds, rounding up; zero or negative is 0.
func seconds(ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return int64((ttl + time.Second - 1) / time.Second)
}
