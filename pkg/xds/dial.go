package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// DialOptions locate and authenticate to a control plane, as Istio's data plane does: TLS
// verified against the mesh roots, and a bearer token on every stream.
type DialOptions struct {
	// Address is host:port (or unix:///path) of the xDS server.
	Address, ServerName string
	// Roots verify the server's certificate.
	Roots *x509.CertPool
	// TokenPath is the projected ServiceAccount token (audience istio-ca), re-read per
	// stream so a rotated token is used.
	TokenPath string
}

// Dial returns a connection to the control plane; it connects lazily.
func Dial(o DialOptions) (*grpc.ClientConn, error) {
	creds := credentials.NewTLS(&tls.Config{RootCAs: o.Roots, ServerName: o.ServerName, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(o.Address, grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(tokenFile(o.TokenPath)))
	if err != nil {
		return nil, fmt.Errorf("dialing xDS server %s: %w", o.Address, err)
	}
	return conn, nil
}

// tokenFile sends the token file's current content as a bearer token.
type tokenFile string

func (p tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(p))
	if err != nil {
		return nil, fmt.Errorf("reading xDS token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + strings.TrimSpace(string(b))}, nil
}

func (tokenFile) RequireTransportSecurity() bool { return true }
