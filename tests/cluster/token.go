package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
)

// SignServiceAccountToken mints a ServiceAccount token for namespace/name with the
// cluster's own signing key, expiring at exp: tests use it for tokens the TokenRequest API
// will not issue (already expired). The ServiceAccount must exist.
func (c *Cluster) SignServiceAccountToken(namespace, name string, audiences []string, exp time.Time) (string, error) {
	sa, err := c.Client.CoreV1().ServiceAccounts(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading ServiceAccount %s/%s: %w", namespace, name, err)
	}
	b, err := os.ReadFile(filepath.Join(c.Dir, "pki", "sa.key"))
	if err != nil {
		return "", fmt.Errorf("reading the ServiceAccount signing key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return "", errors.New("ServiceAccount signing key is not PEM")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return "", err
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return "", fmt.Errorf("ServiceAccount signing key is %T, want ECDSA", parsed)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", err
	}
	kid := sha256.Sum256(pub)
	now := time.Now()
	header := map[string]any{"alg": "ES256", "kid": base64.RawURLEncoding.EncodeToString(kid[:])}
	claims := map[string]any{
		"iss": serviceAccountIssuer, "sub": "system:serviceaccount:" + namespace + ":" + name, "aud": audiences,
		"iat": now.Add(-2 * time.Hour).Unix(), "nbf": now.Add(-2 * time.Hour).Unix(), "exp": exp.Unix(),
		"jti": utilrand.String(16),
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]any{"name": name, "uid": string(sa.UID)},
		},
	}
	enc := func(v any) (string, error) {
		b, err := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b), err
	}
	h, err := enc(header)
	if err != nil {
		return "", err
	}
	p, err := enc(claims)
	if err != nil {
		return "", err
	}
	digest := sha256.Sum256([]byte(h + "." + p))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64) // ES256: r and s as fixed 32-byte big-endian integers
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
