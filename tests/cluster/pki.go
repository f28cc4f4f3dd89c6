package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pki is the set of files the control plane components read: one CA for serving and
// client certificates, and a ServiceAccount token signing key pair.
type pki struct {
	dir string

	CACert, CAKey           string
	ServingCert, ServingKey string
	// Client certificates, one per component, each with its own identity so RBAC applies.
	AdminCert, AdminKey                 string
	ControllerCert, ControllerKey       string
	SchedulerCert, SchedulerKey         string
	KubeletClientCert, KubeletClientKey string
	KubeProxyCert, KubeProxyKey         string
	SAPublic, SAPrivate                 string
	// Nodes holds each node's kubelet certificates, by node name.
	Nodes map[string]*nodePKI

	caPEM []byte
}

// nodePKI is a kubelet's identity towards the apiserver (system:node:<name> in
// system:nodes, which the Node authorizer recognises) and its serving certificate for :10250,
// which the apiserver verifies when it proxies exec, logs and port-forward.
type nodePKI struct {
	ClientCert, ClientKey   string
	ServingCert, ServingKey string
}

type issuer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// certValidity is long enough for any test run or demo session, short enough that a leaked
// local key is worthless soon.
const certValidity = 7 * 24 * time.Hour

// newPKI generates every key and certificate into dir. serviceIP is the first address of
// the Service CIDR (the in-cluster "kubernetes" Service), which the serving cert must name,
// as it must name apiserverIPs (the apiserver's address on the cluster network, if any);
// nodes get kubelet certificates.
func newPKI(dir string, serviceIP net.IP, apiserverIPs []net.IP, nodes []machine) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pki dir: %w", err)
	}
	p := &pki{dir: dir}
	ca, err := p.newCA()
	if err != nil {
		return nil, err
	}
	type leaf struct {
		cert, key *string
		tmpl      x509.Certificate
	}
	leaves := []leaf{
		{&p.ServingCert, &p.ServingKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc.cluster.local"},
			IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, serviceIP}, apiserverIPs...),
		}},
		{&p.AdminCert, &p.AdminKey, clientTemplate("ambient-lite-admin", "system:masters")},
		{&p.ControllerCert, &p.ControllerKey, clientTemplate("system:kube-controller-manager")},
		{&p.SchedulerCert, &p.SchedulerKey, clientTemplate("system:kube-scheduler")},
		{&p.KubeletClientCert, &p.KubeletClientKey, clientTemplate("kube-apiserver-kubelet-client", "system:masters")},
		{&p.KubeProxyCert, &p.KubeProxyKey, clientTemplate("system:kube-proxy")},
	}
	p.Nodes = map[string]*nodePKI{}
	for _, n := range nodes {
		np := &nodePKI{}
		user := "system:node:" + n.Name
		serving := x509.Certificate{
			Subject:     pkix.Name{CommonName: user},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{n.Name},
			IPAddresses: []net.IP{n.IP.AsSlice()},
		}
		leaves = append(leaves,
			leaf{&np.ClientCert, &np.ClientKey, clientTemplate(user, "system:nodes")},
			leaf{&np.ServingCert, &np.ServingKey, serving},
		)
		p.Nodes[n.Name] = np
	}
	for _, l := range leaves {
		name := strings.ReplaceAll(l.tmpl.Subject.CommonName, ":", "-")
		if l.tmpl.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth && l.tmpl.Subject.CommonName != "kube-apiserver" {
			name += "-serving"
		}
		if *l.cert, *l.key, err = p.issue(ca, name, l.tmpl); err != nil {
			return nil, fmt.Errorf("issuing %s certificate: %w", name, err)
		}
	}
	if err := p.newServiceAccountKey(); err != nil {
		return nil, err
	}
	return p, nil
}

func clientTemplate(cn string, groups ...string) x509.Certificate {
	return x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

func (p *pki) newCA() (issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return issuer{}, fmt.Errorf("generating CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "ambient-lite-local-ca"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return issuer{}, fmt.Errorf("self-signing CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return issuer{}, fmt.Errorf("parsing CA certificate: %w", err)
	}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if p.CACert, p.CAKey, err = p.write("ca", p.caPEM, key); err != nil {
		return issuer{}, err
	}
	return issuer{cert: cert, key: key}, nil
}

func (p *pki) issue(ca issuer, name string, tmpl x509.Certificate) (certPath, keyPath string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generating key: %w", err)
	}
	tmpl.SerialNumber = randomSerial()
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = ca.cert.NotAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return "", "", fmt.Errorf("signing: %w", err)
	}
	return p.write(name, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key)
}

func (p *pki) newServiceAccountKey() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("encoding service account public key: %w", err)
	}
	p.SAPublic = filepath.Join(p.dir, "sa.pub")
	if err := os.WriteFile(p.SAPublic, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return fmt.Errorf("writing service account public key: %w", err)
	}
	p.SAPrivate = filepath.Join(p.dir, "sa.key")
	return writeKey(p.SAPrivate, key)
}

func (p *pki) write(name string, certPEM []byte, key crypto.Signer) (certPath, keyPath string, err error) {
	certPath = filepath.Join(p.dir, name+".crt")
	keyPath = filepath.Join(p.dir, name+".key")
	if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("writing %s: %w", certPath, err)
	}
	return certPath, keyPath, writeKey(keyPath, key)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key %s: %w", path, err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("writing key %s: %w", path, err)
	}
	return nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // never happens on Linux
	}
	return n
}
