package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const workloadID = "spiffe://cluster.local/ns/default/sa/productpage"

func ecKey(t testing.TB, curve elliptic.Curve) crypto.Signer {
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrPEM builds a CSR; mutate adjusts the template before signing.
func csrPEM(t testing.TB, key crypto.Signer, mutate func(*x509.CertificateRequest)) []byte {
	t.Helper()
	u, _ := url.Parse(workloadID)
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{u}}
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func basicConstraints(t testing.TB, isCA bool) pkix.Extension {
	v, err := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{isCA})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidBasicConstraints, Critical: true, Value: v}
}

func TestParseCSR(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p256 := ecKey(t, elliptic.P256())
	good := csrPEM(t, p256, nil)
	tamperedDER, _ := pem.Decode(good)
	tampered := append([]byte(nil), tamperedDER.Bytes...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature

	tests := []struct {
		name    string
		csr     []byte
		wantErr string // "" = accepted
	}{
		{"ECDSA P-256", good, ""},
		{"ECDSA P-384", csrPEM(t, ecKey(t, elliptic.P384()), nil), ""},
		{"RSA 2048", csrPEM(t, rsaKey, nil), ""},
		{"CA:false is fine", csrPEM(t, p256, func(r *x509.CertificateRequest) { r.ExtraExtensions = []pkix.Extension{basicConstraints(t, false)} }), ""},
		{"CA:true", csrPEM(t, p256, func(r *x509.CertificateRequest) { r.ExtraExtensions = []pkix.Extension{basicConstraints(t, true)} }), "CA:true"},
		{"P-224", csrPEM(t, ecKey(t, elliptic.P224()), nil), "curve P-224"},
		{"RSA 1024", csrPEM(t, smallRSA, nil), "RSA key of 1024 bits"},
		{"ed25519", csrPEM(t, edKey, nil), "key type"},
		{"extra DNS SAN", csrPEM(t, p256, func(r *x509.CertificateRequest) { r.DNSNames = []string{"evil.example"} }), "DNS, email or IP SANs"},
		{"extra IP SAN", csrPEM(t, p256, func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} }), "DNS, email or IP SANs"},
		{"two URI SANs", csrPEM(t, p256, func(r *x509.CertificateRequest) {
			u, _ := url.Parse("spiffe://cluster.local/ns/kube-system/sa/admin")
			r.URIs = append(r.URIs, u)
		}), "2 URI SANs"},
		{"no SAN", csrPEM(t, p256, func(r *x509.CertificateRequest) { r.URIs = nil }), "0 URI SANs"},
		{"non-workload URI", csrPEM(t, p256, func(r *x509.CertificateRequest) { r.URIs[0], _ = url.Parse("spiffe://cluster.local/admin") }), "URI SAN"},
		{"bad signature", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), "signature does not verify"},
		{"not PEM", []byte("hello"), "no PEM block"},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tamperedDER.Bytes}), "want CERTIFICATE REQUEST"},
		{"trailing data", append(append([]byte(nil), good...), "junk"...), "trailing data"},
		{"oversized", []byte(strings.Repeat("a", maxCSRSize+1)), "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, id, err := ParseCSR(tt.csr)
			if tt.wantErr == "" {
				if err != nil || id.String() != workloadID {
					t.Fatalf("ParseCSR = %v, %v; want %s", id, err, workloadID)
				}
				return
			}
			if !errors.Is(err, ErrInvalidCSR) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseCSR err = %v, want ErrInvalidCSR containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSignVerifiesAsSVID(t *testing.T) {
	now := time.Now()
	root, err := NewSelfSignedRoot("cluster.local", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	key := ecKey(t, elliptic.P256())
	csr, id, err := ParseCSR(csrPEM(t, key, nil))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := root.Sign(csr, id, 10*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(root.Root) {
		t.Fatalf("chain has %d certs, want leaf + root", len(chain))
	}
	leaf := chain[0]
	if got := leaf.NotAfter.Sub(now); got < 10*time.Minute-time.Second || got > 10*time.Minute+time.Second {
		t.Errorf("leaf valid for %s after now, want 10m", got)
	}
	if leaf.IsCA || len(leaf.DNSNames) > 0 || len(leaf.URIs) != 1 {
		t.Errorf("leaf IsCA=%v DNS=%v URIs=%v", leaf.IsCA, leaf.DNSNames, leaf.URIs)
	}
	bundle := x509bundle.FromX509Authorities(id.TrustDomain(), []*x509.Certificate{root.Root})
	got, _, err := x509svid.Verify(chain[:1], bundle)
	if err != nil || got != id.SPIFFE() {
		t.Fatalf("x509svid.Verify = %v, %v", got, err)
	}

	// Clamped to the signing certificate's life.
	long, err := root.Sign(csr, id, 48*time.Hour, now)
	if err != nil || !long[0].NotAfter.Equal(root.SigningCert.NotAfter) {
		t.Errorf("48h request: NotAfter %v, want the root's %v (err %v)", long[0].NotAfter, root.SigningCert.NotAfter, err)
	}
	if _, err := root.Sign(csr, id, time.Hour, now.Add(2*time.Hour)); err == nil {
		t.Error("signing after the root expired succeeded")
	}
}

// TestPluginBundle checks an operator-provided intermediate: parsed from the Secret layout,
// leaves chain leaf → intermediate → root and verify against the root alone.
func TestPluginBundle(t *testing.T) {
	now := time.Now()
	root, err := NewSelfSignedRoot("cluster.local", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	interKey := ecKey(t, elliptic.P256())
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Root, interKey.Public(), root.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(interKey)
	certPEM := encodeCert(inter)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	chainPEM := append(encodeCert(inter), root.RootPEM()...) // Istio's cert-chain.pem often holds both

	b, err := ParseBundle(certPEM, keyPEM, chainPEM, root.RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	csr, id, _ := ParseCSR(csrPEM(t, ecKey(t, elliptic.P256()), nil))
	chain, err := b.Sign(csr, id, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || !chain[1].Equal(inter) || !chain[2].Equal(root.Root) {
		t.Fatalf("chain = %d certs, want leaf, intermediate, root", len(chain))
	}
	if _, _, err := x509svid.Verify(chain[:2], x509bundle.FromX509Authorities(id.TrustDomain(), []*x509.Certificate{root.Root})); err != nil {
		t.Fatalf("verify through the intermediate: %v", err)
	}

	otherKey := ecKey(t, elliptic.P256())
	otherDER, _ := x509.MarshalPKCS8PrivateKey(otherKey)
	otherRoot, _ := NewSelfSignedRoot("cluster.local", time.Hour, now)
	leafPEM := encodeCert(chain[0])
	for name, in := range map[string][4][]byte{
		"key does not match": {certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherDER}), nil, root.RootPEM()},
		"wrong root":         {certPEM, keyPEM, nil, otherRoot.RootPEM()},
		"not a CA":           {leafPEM, keyPEM, nil, root.RootPEM()},
		"garbage key":        {certPEM, []byte("nope"), nil, root.RootPEM()},
	} {
		if _, err := ParseBundle(in[0], in[1], in[2], in[3]); err == nil {
			t.Errorf("%s: ParseBundle succeeded", name)
		}
	}
}

func TestBundlePEMRoundTrip(t *testing.T) {
	b, err := NewSelfSignedRoot("example.org", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	data, err := b.PEM()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseBundle(data[CACertKey], data[CAKeyKey], data[CertChainKey], data[RootCertKey])
	if err != nil || !again.Root.Equal(b.Root) || !again.SigningCert.Equal(b.SigningCert) {
		t.Fatalf("round trip: %v", err)
	}
	if got := b.Root.Subject.Organization; len(got) != 1 || got[0] != "example.org" {
		t.Errorf("root organization = %v, want the trust domain", got)
	}
}

func TestServingCert(t *testing.T) {
	b, _ := NewSelfSignedRoot("cluster.local", 24*time.Hour, time.Now())
	now := time.Now()
	clock := func() time.Time { return now }
	s, err := NewServingCert(b, []string{"istiod.istio-system.svc", "istiod"}, time.Hour, clock)
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := s.GetCertificate(nil)
	roots := x509.NewCertPool()
	roots.AddCert(b.Root)
	if _, err := c1.Leaf.Verify(x509.VerifyOptions{DNSName: "istiod.istio-system.svc", Roots: roots}); err != nil {
		t.Fatalf("serving cert does not verify for istiod.istio-system.svc: %v", err)
	}
	if c2, _ := s.GetCertificate(nil); c2 != c1 {
		t.Error("re-issued before half-life")
	}
	now = now.Add(31 * time.Minute)
	if c3, _ := s.GetCertificate(nil); c3 == c1 || !c3.Leaf.NotAfter.After(c1.Leaf.NotAfter) {
		t.Error("not re-issued after half-life")
	}
}

func FuzzParseCSR(f *testing.F) {
	f.Add(csrPEM(f, ecKey(f, elliptic.P256()), nil))
	f.Add(csrPEM(f, ecKey(f, elliptic.P256()), func(r *x509.CertificateRequest) { r.DNSNames = []string{"a"} }))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, id, err := ParseCSR(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidCSR) {
				t.Fatalf("error %v does not wrap ErrInvalidCSR", err)
			}
			return
		}
		// Whatever is accepted is a single-identity, correctly self-signed request.
		if csr.CheckSignature() != nil || len(csr.URIs) != 1 || id.IsZero() || len(csr.DNSNames) > 0 {
			t.Fatalf("accepted a CSR that breaks the rules: %+v", csr)
		}
		if _, err := identity.Parse(csr.URIs[0].String()); err != nil {
			t.Fatal(err)
		}
	})
}
