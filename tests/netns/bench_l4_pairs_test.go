package netns

// The baselines of BenchmarkL4 beside the two ztunnels: pairs of well-known proxies doing
// the same job on the same nodes (plaintext from the client pod to node A, mTLS from node A
// to node B, plaintext to the server pod).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pairCerts are the files of a test CA and a leaf certificate for each node.
type pairCerts struct {
	ca          string // the CA certificate
	certA, keyA string // node A's
	certB, keyB string // node B's
	bundleA     string // node A's certificate and key in one file (haproxy's crt)
	bundleB     string
	dir         string
}

// newPairCerts writes a CA and ECDSA P-256 leaf certificates for node A and node B, valid
// for client and server authentication, into a temporary directory.
func newPairCerts(t testing.TB) pairCerts {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name string, blocks ...*pem.Block) string {
		var b []byte
		for _, blk := range blocks {
			b = append(b, pem.EncodeToMemory(blk)...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c := pairCerts{dir: dir, ca: write("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	leaf := func(name string, serial int64) (cert, key, bundle string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, ca, k.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(k)
		certBlk, keyBlk := &pem.Block{Type: "CERTIFICATE", Bytes: der}, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}
		return write(name+".pem", certBlk), write(name+".key", keyBlk), write(name+".bundle.pem", certBlk, keyBlk)
	}
	c.certA, c.keyA, c.bundleA = leaf("node-a", 2)
	c.certB, c.keyB, c.bundleB = leaf("node-b", 3)
	return c
}

// pairPorts are a proxy pair's listening ports on node A (the client pod dials 10.10.1.1);
// node B's are one higher.
type pairPorts struct{ iperf, fortio int }

// routes are the pair's (node A listen, node B listen, server) addresses, per port.
func (p pairPorts) routes() [][3]string {
	var r [][3]string
	for _, x := range [][2]int{{p.iperf, iperfMesh}, {p.fortio, fortioMesh}} {
		r = append(r, [3]string{pairAddr(x[0]), fmt.Sprintf("10.0.0.2:%d", x[0]+1), fmt.Sprintf("10.10.2.2:%d", x[1])})
	}
	return r
}

// pairAddr is where the client pod reaches a pair's port: node A.
func pairAddr(port int) string { return fmt.Sprintf("10.10.1.1:%d", port) }

// stunnelPair runs stunnel4 on both nodes: node A accepts plaintext from the client pod and
// originates mTLS to node B, which verifies the client and connects to the server pod. It
// returns their process IDs.
func (m *mesh) stunnelPair(t testing.TB, c pairCerts, ports pairPorts) []int {
	t.Helper()
	conf := func(name string, client bool, cert, key string, services [][2]string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "foreground = yes\npid =\nsyslog = no\ndebug = 3\n")
		for i, s := range services {
			fmt.Fprintf(&b, "[s%d]\nclient = %v\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n",
				i, map[bool]string{true: "yes", false: "no"}[client], s[0], s[1], cert, key, c.ca)
		}
		p := filepath.Join(c.dir, "stunnel-"+name+".conf")
		if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var onA, onB [][2]string
	for _, r := range ports.routes() {
		onA = append(onA, [2]string{r[0], r[1]})
		onB = append(onB, [2]string{r[1], r[2]})
	}
	b, _ := startIn(t, m.tp, m.nodeB, "stunnel4", nil, "stunnel4", conf("b", false, c.certB, c.keyB, onB))
	a, _ := startIn(t, m.tp, m.nodeA, "stunnel4", nil, "stunnel4", conf("a", true, c.certA, c.keyA, onA))
	return []int{a.Process.Pid, b.Process.Pid}
}

// haproxyPair runs HAProxy in TCP mode on both nodes, one thread each (as the ztunnels run
// one P): an epoll event loop in C. With mTLS, node A originates TLS 1.3 (OpenSSL) to node
// B, which verifies the client; without, the pair relays plain TCP through kernel pipes
// (splice, no copy to userspace): the least two relaying hops cost on this machine. It
// returns their process IDs.
func (m *mesh) haproxyPair(t testing.TB, c pairCerts, ports pairPorts, mTLS bool) []int {
	t.Helper()
	conf := func(name string, lines []string) string {
		b := strings.Join(append([]string{
			"global", "  nbthread 1", "  ssl-default-server-options ssl-min-ver TLSv1.3", "  ssl-default-bind-options ssl-min-ver TLSv1.3",
			"defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 5m", "  timeout server 5m",
		}, lines...), "\n") + "\n"
		p := filepath.Join(c.dir, fmt.Sprintf("haproxy-%s-%d.cfg", name, ports.fortio))
		if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var onA, onB []string
	for i, r := range ports.routes() {
		server, bind := "  server b "+r[1], "  bind "+r[1]
		// Plain TCP moves through kernel pipes (splice), never copied to userspace.
		options := []string{"  option splice-auto"}
		if mTLS {
			server += fmt.Sprintf(" ssl crt %s ca-file %s verify required", c.bundleA, c.ca)
			bind += fmt.Sprintf(" ssl crt %s ca-file %s verify required", c.bundleB, c.ca)
			options = nil
		}
		onA = append(append(onA, fmt.Sprintf("listen p%d", i), "  bind "+r[0], server), options...)
		onB = append(append(onB, fmt.Sprintf("listen p%d", i), bind, "  server s "+r[2]), options...)
	}
	b, _ := startIn(t, m.tp, m.nodeB, "haproxy", nil, "haproxy", "-db", "-f", conf("b", onB))
	a, _ := startIn(t, m.tp, m.nodeA, "haproxy", nil, "haproxy", "-db", "-f", conf("a", onA))
	return []int{a.Process.Pid, b.Process.Pid}
}
