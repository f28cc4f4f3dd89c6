package netns

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/mtls"
	"github.com/ambient-lite/ambient-lite/tests/testca"
)

// waypointMeshConfig is meshConfig with a waypoint in front of echo's Service (named by the
// waypoint Service's VIP, as istiod names it): the waypoint pod 10.10.3.2 on node B is not
// captured (dataplane-mode none), like Istio's. Service down names a waypoint that does not
// exist.
var waypointMeshConfig = fmt.Sprintf(`
workloads:
- uid: Kubernetes//Pod/default/client
  name: client
  namespace: default
  serviceAccount: sleep
  workloadName: client
  canonicalName: client
  addresses: [10.10.1.2]
  tunnelProtocol: HBONE
  node: node-a
- uid: Kubernetes//Pod/default/server
  name: server
  namespace: default
  serviceAccount: echo
  workloadName: server
  canonicalName: echo
  addresses: [10.10.2.2]
  tunnelProtocol: HBONE
  node: node-b
  services:
    default/echo.default.svc.cluster.local: {}
- uid: Kubernetes//Pod/default/waypoint
  name: waypoint
  namespace: default
  serviceAccount: waypoint
  workloadName: waypoint
  canonicalName: waypoint
  addresses: [10.10.3.2]
  node: node-b
  services:
    default/waypoint.default.svc.cluster.local: {}
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: [10.96.0.20]
  ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: {address: {address: %q}, hboneMtlsPort: 15008}
- name: waypoint
  namespace: default
  hostname: waypoint.default.svc.cluster.local
  addresses: [10.96.0.30]
  ports: [{servicePort: 15021, targetPort: 15021}, {servicePort: 15008, targetPort: 15008}]
- name: down
  namespace: default
  hostname: down.default.svc.cluster.local
  addresses: [10.96.0.70]
  ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: {hostname: {namespace: default, hostname: missing.default.svc.cluster.local}, hboneMtlsPort: 15008}
`, base64.StdEncoding.EncodeToString(netip.MustParseAddr("10.96.0.30").AsSlice()))

// seenStream is what the fake waypoint learned of one HBONE stream.
type seenStream struct {
	target netip.AddrPort
	peer   identity.ID
	fwd    string
}

// TestServiceWaypoint: the client's connection to a Service with a waypoint is tunnelled by
// ztunnel A to the waypoint pod (an HBONE server presenting the waypoint's identity from the
// mesh CA), not to the Service's endpoint, with the Service VIP and port as dialled for
// :authority; the pod IP of the server still goes direct; a Service whose waypoint does not
// exist gets no connection at all.
func TestServiceWaypoint(t *testing.T) {
	ca := testca.Start(t)
	m := newMeshWith(t, node{ca: ca, config: waypointMeshConfig}, node{ca: ca, config: waypointMeshConfig})
	wp := m.tp.Namespace("waypoint")
	m.tp.Link(wp, "eth0", "10.10.3.2/24", m.nodeB, "vwaypoint", "10.10.3.1/24")
	m.tp.Route(wp, "default", "10.10.3.1")
	m.tp.Route(m.nodeA, "10.10.3.0/24", "10.0.0.2")
	echoServer(t, m.tp, m.server, "10.10.2.2:8080")

	seen := make(chan seenStream, 8)
	fakeWaypoint(t, m.tp, wp, ca, "10.10.3.2:15008", seen)

	if got, want := m.roundTripLine(t, "10.96.0.20:80", "hello"), "waypoint got hello for 10.96.0.20:80"; got != want {
		t.Fatalf("client → echo VIP answered %q, want %q (from the waypoint)", got, want)
	}
	select {
	case s := <-seen:
		if s.target.String() != "10.96.0.20:80" {
			t.Errorf("waypoint stream :authority = %s, want the VIP as dialled, 10.96.0.20:80", s.target)
		}
		if s.peer.String() != "spiffe://cluster.local/ns/default/sa/sleep" {
			t.Errorf("waypoint stream peer = %s, want the client's identity", s.peer)
		}
		if !strings.Contains(s.fwd, `for="10.10.1.2:`) || !strings.Contains(s.fwd, "host=echo.default.svc.cluster.local") {
			t.Errorf("waypoint stream forwarded = %q, want the client and the service host", s.fwd)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waypoint saw no stream")
	}

	// The server's pod has no waypoint: by pod IP it is reached directly.
	if got := m.roundTrip(t, "10.10.2.2:8080", "direct"); got != "direct" {
		t.Fatalf("client → server pod = %q, want the echo", got)
	}

	// A waypoint that cannot be resolved fails the connection; it never bypasses it.
	if got := m.readAll(t, "10.96.0.70:80", "must not arrive\n"); got != "" {
		t.Fatalf("client → service with a missing waypoint got %q", got)
	}
	waitFor(t, 5*time.Second, "ztunnel A to name the missing waypoint", func() bool {
		return strings.Contains(m.logA.String(), "waypoint default/missing.default.svc.cluster.local")
	})
	select {
	case s := <-seen:
		t.Errorf("unexpected waypoint stream for %s", s.target)
	default:
	}

	metricsA := m.get(t, m.nodeA, "http://127.0.0.1:15020/metrics")
	var line string
	for _, l := range strings.Split(metricsA, "\n") {
		if strings.HasPrefix(l, "istio_tcp_connections_opened_total{") && strings.Contains(l, `destination_service="echo.default.svc.cluster.local"`) {
			line = l
		}
	}
	for _, want := range []string{`reporter="source"`, `destination_workload="waypoint"`,
		`destination_principal="spiffe://cluster.local/ns/default/sa/waypoint"`, `connection_security_policy="mutual_tls"`} {
		if !strings.Contains(line, want) {
			t.Errorf("ztunnel A's metric for the connection via the waypoint lacks %s: %q", want, line)
		}
	}
}

// fakeWaypoint serves HBONE on addr inside ns with the waypoint's identity from ca: for each
// stream it reports what it saw, reads one line and answers "waypoint got <line> for <authority>".
func fakeWaypoint(t *testing.T, tp *Topology, ns string, ca *testca.Server, addr string, seen chan<- seenStream) {
	t.Helper()
	id, err := identity.New("cluster.local", "default", "waypoint")
	if err != nil {
		t.Fatal(err)
	}
	cert := issue(t, ca, id)
	cfg, err := mtls.ServerConfig(id.TrustDomain(), func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }, ca.CA.Roots)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	srv, err := hbone.NewServer(hbone.ServerOptions{TLS: cfg, Handler: func(_ context.Context, req *hbone.Request) (net.Conn, error) {
		seen <- seenStream{target: req.Target, peer: req.Peer, fwd: req.Header.Get(hbone.HeaderForwarded)}
		up, app := net.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer app.Close()
			_ = app.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(app).ReadString('\n')
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(app, "waypoint got %s for %s", strings.TrimSpace(line), req.Target)
		}()
		return up, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	if err := tp.Do(ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { _ = srv.Close(); _ = l.Close(); wg.Wait() })
}

// issue gets a certificate for id from the test CA, as a workload's CSR would.
func issue(t *testing.T, ca *testca.Server, id identity.ID) *tls.Certificate {
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
	chain, err := ca.CA.Issue(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain[:len(chain)-1] { // leaf and intermediate; the root is the peer's
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// roundTripLine sends line and a newline from the client pod to dst and returns all it gets back.
func (m *mesh) roundTripLine(t *testing.T, dst, line string) string {
	t.Helper()
	return m.readAll(t, dst, line+"\n")
}

// readAll dials dst from the client pod, writes payload (without closing its side) and reads
// until the far end closes; a refused or reset connection returns what arrived before.
func (m *mesh) readAll(t *testing.T, dst, payload string) string {
	t.Helper()
	var got []byte
	err := m.tp.Do(m.client, func() error {
		c, err := net.DialTimeout("tcp", dst, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(payload)); err != nil {
			return nil // closed by ztunnel before the write: nothing arrives
		}
		got, _ = io.ReadAll(c)
		return nil
	})
	if err != nil {
		t.Fatalf("client → %s: %v", dst, err)
	}
	return string(got)
}
