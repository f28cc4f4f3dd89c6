package hbone_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
)

// The inbound side: serve HBONE on :15008, decide each CONNECT in the handler.
func ExampleServer() {
	var (
		cert  mtls.ServerCertificate // the destination workload's certificate
		roots mtls.Roots             // the mesh roots
	)
	cfg, err := mtls.ServerConfig(spiffeid.RequireTrustDomainFromString("cluster.local"), cert, roots)
	if err != nil {
		log.Fatal(err)
	}
	srv, err := hbone.NewServer(hbone.ServerOptions{
		TLS: cfg,
		Handler: func(ctx context.Context, req *hbone.Request) (net.Conn, error) {
			if req.Peer.Namespace() != "frontend" { // the caller's policy, not hbone's
				return nil, hbone.Reject(http.StatusUnauthorized, nil)
			}
			up, err := new(net.Dialer).DialContext(ctx, "tcp", req.Target.String())
			if err != nil {
				return nil, hbone.Reject(http.StatusServiceUnavailable, err)
			}
			return up, nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := new(net.ListenConfig).Listen(context.Background(), "tcp", ":15008")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(srv.Serve(context.Background(), ln))
}

// The outbound side: open a stream to 10.0.0.2:8080 through its ztunnel at 10.0.0.2:15008.
func ExampleDialer() {
	var (
		src, dst identity.ID            // chosen by the caller from mesh state
		cert     mtls.ClientCertificate // src's certificate
		roots    mtls.Roots
	)
	d, err := hbone.NewDialer(hbone.DialerOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	cfg, err := mtls.ClientConfig(cert, roots, dst)
	if err != nil {
		log.Fatal(err)
	}
	s, err := d.Dial(context.Background(), hbone.DialRequest{
		Key: hbone.PoolKey{
			Source: src, Destinations: hbone.IdentitySet(dst),
			SourceIP: netip.MustParseAddr("10.0.0.1"), DestinationIP: netip.MustParseAddr("10.0.0.2"),
		},
		Address: netip.MustParseAddrPort("10.0.0.2:15008"),
		Target:  netip.MustParseAddrPort("10.0.0.2:8080"),
		TLS:     cfg,
		Source:  netip.MustParseAddrPort("10.0.0.1:43210"),
	})
	if err != nil {
		log.Fatal(err) // a refusal is a *hbone.StatusError
	}
	defer s.Close()
	io.WriteString(s, "GET / HTTP/1.0\r\n\r\n")
	s.CloseWrite()
	io.Copy(io.Discard, s)
}
