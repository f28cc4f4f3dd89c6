package discovery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"
)

// DialOptions locate and authenticate to the control plane.
type DialOptions struct {
	// Address is host:port (or unix:///path) of istiod-lite's xDS server.
	Address, ServerName string
	// Roots verify the server's certificate.
	Roots *x509.CertPool
	// TokenPath is the projected ServiceAccount token (audience istio-ca), re-read per stream.
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

// Node describes this ztunnel to the control plane as Istio's ztunnel does.
func Node(podIP, podName, podNamespace, nodeName string) *corev3.Node {
	meta, _ := structpb.NewStruct(map[string]any{
		"NAME": podName, "NAMESPACE": podNamespace, "INSTANCE_IPS": podIP, "NODE_NAME": nodeName,
	})
	return &corev3.Node{
		Id:       fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", podIP, podName, podNamespace, podNamespace),
		Metadata: meta,
	}
}
