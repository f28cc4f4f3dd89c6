package install

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// KubeconfigSource is what the plugin's kubeconfig says: where the apiserver is, how to trust
// it, and where the bearer token is. The plugin reads the token file at every ADD, so a rotated
// token is picked up without rewriting the kubeconfig.
type KubeconfigSource struct {
	// Server is the apiserver's https:// URL as reachable from the node (the plugin runs in
	// the host's network namespace), e.g. "https://10.96.0.1:443". Required.
	Server string
	// CAData holds the PEM certificates that sign the apiserver's serving certificate. If
	// empty, the plugin trusts the host's system roots.
	CAData []byte
	// TokenFile is the absolute path of the bearer token file as the plugin sees it on the
	// node (not inside the agent's container). Required.
	TokenFile string
}

func (k KubeconfigSource) validate() error {
	u, err := url.Parse(k.Server)
	switch {
	case k.Server == "":
		return errors.New("kubeconfig: Server is required")
	case err != nil:
		return fmt.Errorf("kubeconfig: Server: %w", err)
	case u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("kubeconfig: Server %q: want an https:// URL (the plugin talks TLS only)", k.Server)
	}
	if len(k.CAData) > 0 {
		rest := k.CAData
		n := 0
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			if _, err := x509.ParseCertificate(b.Bytes); err != nil {
				return fmt.Errorf("kubeconfig: CAData: %w", err)
			}
			n++
		}
		if n == 0 {
			return errors.New("kubeconfig: CAData holds no PEM certificate")
		}
	}
	switch {
	case k.TokenFile == "":
		return errors.New("kubeconfig: TokenFile is required (the plugin authenticates with a bearer token)")
	case !filepath.IsAbs(k.TokenFile):
		return fmt.Errorf("kubeconfig: TokenFile %q is not an absolute path", k.TokenFile)
	}
	return nil
}

// The kubeconfig's schema (clientcmd v1), reduced to what the plugin reads.
type (
	kubeconfigFile struct {
		APIVersion     string         `json:"apiVersion"`
		Kind           string         `json:"kind"`
		Clusters       []namedCluster `json:"clusters"`
		Users          []namedUser    `json:"users"`
		Contexts       []namedContext `json:"contexts"`
		CurrentContext string         `json:"current-context"`
	}
	namedCluster struct {
		Name    string  `json:"name"`
		Cluster cluster `json:"cluster"`
	}
	cluster struct {
		Server                   string `json:"server"`
		CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
	}
	namedUser struct {
		Name string   `json:"name"`
		User authInfo `json:"user"`
	}
	authInfo struct {
		TokenFile string `json:"tokenFile"`
	}
	namedContext struct {
		Name    string      `json:"name"`
		Context kubeContext `json:"context"`
	}
	kubeContext struct {
		Cluster string `json:"cluster"`
		User    string `json:"user"`
	}
)

// renderKubeconfig returns the kubeconfig file for k, in YAML: one cluster, one user, one
// context, which is current. It holds no secret (the token stays in its file).
func renderKubeconfig(k KubeconfigSource) []byte {
	const name = "ambient-lite-cni"
	kc := kubeconfigFile{
		APIVersion:     "v1",
		Kind:           "Config",
		Clusters:       []namedCluster{{Name: name, Cluster: cluster{Server: k.Server, CertificateAuthorityData: k.CAData}}},
		Users:          []namedUser{{Name: name, User: authInfo{TokenFile: k.TokenFile}}},
		Contexts:       []namedContext{{Name: name, Context: kubeContext{Cluster: name, User: name}}},
		CurrentContext: name,
	}
	out, err := yaml.Marshal(kc)
	if err != nil {
		panic(err) // strings and bytes only: cannot fail
	}
	return out
}
