package kube

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ambient-lite/ambient-lite/istiod-lite/internal/ca"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Names of the Secrets that hold CA material (Istio's).
const (
	// SelfSignedSecret holds the root istiod-lite generates when no plug-in CA is given.
	SelfSignedSecret = "istio-ca-secret"
	// PluginSecret holds operator-provided CA material (an intermediate and its root).
	PluginSecret = "cacerts"
	caSecretType = "istio.io/ca-root"
)

// RootStore loads the CA's key material from the namespace's Secrets.
type RootStore struct {
	Client      kubernetes.Interface
	Namespace   string
	TrustDomain string
	RootTTL     time.Duration
	Log         *slog.Logger
}

// Load returns the plug-in CA from the cacerts Secret if it exists; otherwise the
// self-signed root in istio-ca-secret, generating and creating it if absent. It never
// overwrites a stored root, so restarts and replicas keep one root: when two instances
// race, the one whose Create loses reads the winner's.
func (s *RootStore) Load(ctx context.Context) (*ca.Bundle, error) {
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	plugin, err := secrets.Get(ctx, PluginSecret, metav1.GetOptions{})
	switch {
	case err == nil:
		b, err := bundleFromSecret(plugin)
		if err != nil {
			return nil, fmt.Errorf("plug-in CA Secret %s/%s: %w", s.Namespace, PluginSecret, err)
		}
		s.Log.Info("using plug-in CA", "secret", PluginSecret, "root", b.Root.Subject.String(), "notAfter", b.SigningCert.NotAfter)
		return b, nil
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading Secret %s/%s: %w", s.Namespace, PluginSecret, err)
	}

	stored, err := secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{})
	if err == nil {
		b, err := bundleFromSecret(stored)
		if err != nil {
			return nil, fmt.Errorf("CA Secret %s/%s is unusable (fix or delete it to generate a new root): %w", s.Namespace, SelfSignedSecret, err)
		}
		return b, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading Secret %s/%s: %w", s.Namespace, SelfSignedSecret, err)
	}

	b, err := ca.NewSelfSignedRoot(s.TrustDomain, s.RootTTL, time.Now())
	if err != nil {
		return nil, err
	}
	data, err := b.PEM()
	if err != nil {
		return nil, err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecret, Namespace: s.Namespace},
		Type:       caSecretType,
		Data:       data,
	}
	if _, err := secrets.Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("storing the new root in Secret %s/%s: %w", s.Namespace, SelfSignedSecret, err)
		}
		// Another instance stored its root first: use that one.
		stored, err := secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("reading Secret %s/%s after losing the create race: %w", s.Namespace, SelfSignedSecret, err)
		}
		return bundleFromSecret(stored)
	}
	s.Log.Info("generated self-signed root", "secret", SelfSignedSecret, "notAfter", b.Root.NotAfter)
	return b, nil
}

func bundleFromSecret(s *corev1.Secret) (*ca.Bundle, error) {
	for _, k := range []string{ca.CACertKey, ca.CAKeyKey} {
		if len(s.Data[k]) == 0 {
			return nil, fmt.Errorf("missing key %s", k)
		}
	}
	return ca.ParseBundle(s.Data[ca.CACertKey], s.Data[ca.CAKeyKey], s.Data[ca.CertChainKey], s.Data[ca.RootCertKey])
}
