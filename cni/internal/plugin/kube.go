package plugin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// kubeClient GETs single objects from the apiserver. It is the plugin's whole Kubernetes
// client: client-go is deliberately not linked into the plugin binary.
type kubeClient struct {
	server *url.URL
	token  string
	http   *http.Client
	// retryBase is the first pause between attempts; it doubles up to retryMax.
	retryBase, retryMax time.Duration
}

// kubeconfig is the part of a kubeconfig file the plugin reads. Clusters and users are
// decoded as raw maps so that settings the plugin does not implement are rejected by name
// instead of silently ignored.
type kubeconfig struct {
	APIVersion     string          `json:"apiVersion"`
	Kind           string          `json:"kind"`
	CurrentContext string          `json:"current-context"`
	Preferences    json.RawMessage `json:"preferences"`
	Extensions     json.RawMessage `json:"extensions"`
	Clusters       []namedCluster  `json:"clusters"`
	Users          []namedUser     `json:"users"`
	Contexts       []namedContext  `json:"contexts"`
}

type namedCluster struct {
	Name    string                     `json:"name"`
	Cluster map[string]json.RawMessage `json:"cluster"`
}

type namedUser struct {
	Name string                     `json:"name"`
	User map[string]json.RawMessage `json:"user"`
}

type namedContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster    string          `json:"cluster"`
		User       string          `json:"user"`
		Namespace  string          `json:"namespace"`
		Extensions json.RawMessage `json:"extensions"`
	} `json:"context"`
}

type kubeCluster struct {
	Server                   string `json:"server"`
	CertificateAuthority     string `json:"certificate-authority"`
	CertificateAuthorityData []byte `json:"certificate-authority-data"`
	TLSServerName            string `json:"tls-server-name"`
}

type kubeUser struct {
	Token     string `json:"token"`
	TokenFile string `json:"tokenFile"`
}

var (
	clusterKeys = []string{"server", "certificate-authority", "certificate-authority-data", "tls-server-name", "extensions"}
	userKeys    = []string{"token", "tokenFile", "extensions"}
)

// loadKubeconfig reads the kubeconfig at file: its current context's (or only) cluster and
// user. Only an https server, a CA (inline or file; the system roots if neither), and a bearer
// token (inline or file) are supported; anything else is an error naming the setting. Relative
// paths are relative to the kubeconfig's directory, as kubectl resolves them.
func loadKubeconfig(file string) (*kubeClient, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing YAML: %w", err)
	}
	var kc kubeconfig
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kc); err != nil {
		return nil, fmt.Errorf("parsing: %s", strings.TrimPrefix(err.Error(), "json: "))
	}

	clusterName, userName := "", ""
	switch {
	case kc.CurrentContext != "":
		i := slices.IndexFunc(kc.Contexts, func(c namedContext) bool { return c.Name == kc.CurrentContext })
		if i < 0 {
			return nil, fmt.Errorf("current-context %q is not among the contexts", kc.CurrentContext)
		}
		clusterName, userName = kc.Contexts[i].Context.Cluster, kc.Contexts[i].Context.User
	case len(kc.Contexts) == 1:
		clusterName, userName = kc.Contexts[0].Context.Cluster, kc.Contexts[0].Context.User
	case len(kc.Contexts) == 0 && len(kc.Clusters) == 1 && len(kc.Users) == 1:
		clusterName, userName = kc.Clusters[0].Name, kc.Users[0].Name
	default:
		return nil, errors.New("no current-context, and not exactly one context to default to")
	}

	ci := slices.IndexFunc(kc.Clusters, func(c namedCluster) bool { return c.Name == clusterName })
	if ci < 0 {
		return nil, fmt.Errorf("cluster %q is not among the clusters", clusterName)
	}
	var cluster kubeCluster
	if err := decodeKnown(kc.Clusters[ci].Cluster, clusterKeys, &cluster); err != nil {
		return nil, fmt.Errorf("cluster %q: %w", clusterName, err)
	}
	ui := slices.IndexFunc(kc.Users, func(u namedUser) bool { return u.Name == userName })
	if ui < 0 {
		return nil, fmt.Errorf("user %q is not among the users", userName)
	}
	var user kubeUser
	if err := decodeKnown(kc.Users[ui].User, userKeys, &user); err != nil {
		return nil, fmt.Errorf("user %q: %w (the CNI plugin authenticates with a bearer token only: token or tokenFile)", userName, err)
	}

	server, err := url.Parse(cluster.Server)
	switch {
	case cluster.Server == "":
		return nil, fmt.Errorf("cluster %q: server is required", clusterName)
	case err != nil:
		return nil, fmt.Errorf("cluster %q: server: %w", clusterName, err)
	case server.Scheme != "https" || server.Host == "":
		return nil, fmt.Errorf("cluster %q: server %q: want an https:// URL", clusterName, cluster.Server)
	}

	dir := filepath.Dir(file)
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cluster.TLSServerName}
	caPEM := cluster.CertificateAuthorityData
	if len(caPEM) == 0 && cluster.CertificateAuthority != "" {
		if caPEM, err = os.ReadFile(resolve(cluster.CertificateAuthority)); err != nil {
			return nil, fmt.Errorf("cluster %q: certificate-authority: %w", clusterName, err)
		}
	}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("cluster %q: no PEM certificate in the certificate authority", clusterName)
		}
		tlsConf.RootCAs = pool
	}

	token := user.Token
	if token == "" && user.TokenFile != "" {
		b, err := os.ReadFile(resolve(user.TokenFile))
		if err != nil {
			return nil, fmt.Errorf("user %q: tokenFile: %w", userName, err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, fmt.Errorf("user %q: no bearer token (set token or tokenFile)", userName)
	}

	return &kubeClient{
		server: server,
		token:  token,
		// No Proxy: the apiserver is reached directly from the node, whatever the
		// runtime's environment says.
		// HTTP/2: the pod and namespace GETs share one TLS handshake.
		http:      &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}},
		retryBase: 100 * time.Millisecond,
		retryMax:  time.Second,
	}, nil
}

// decodeKnown decodes m into out after checking every key is in known.
func decodeKnown(m map[string]json.RawMessage, known []string, out any) error {
	for k := range m {
		if !slices.Contains(known, k) {
			return fmt.Errorf("%q is not supported", k)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// apiError is a non-2xx answer from the apiserver.
type apiError struct {
	status  int
	message string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("apiserver answered %d: %s", e.status, e.message)
}

func (e *apiError) transient() bool {
	return e.status == http.StatusTooManyRequests || e.status >= 500
}

// getPod fetches a pod, retrying transient failures until ctx ends.
func (k *kubeClient) getPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var pod corev1.Pod
	if err := k.get(ctx, path.Join("/api/v1/namespaces", namespace, "pods", name), &pod); err != nil {
		return nil, fmt.Errorf("getting pod %s/%s: %w", namespace, name, err)
	}
	return &pod, nil
}

// getNamespace fetches a namespace, retrying transient failures until ctx ends.
func (k *kubeClient) getNamespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	var ns corev1.Namespace
	if err := k.get(ctx, path.Join("/api/v1/namespaces", name), &ns); err != nil {
		return nil, fmt.Errorf("getting namespace %s: %w", name, err)
	}
	return &ns, nil
}

// get GETs p into out. Connection failures, 429 and 5xx are retried with backoff until ctx
// ends; the last informative error is returned then. Other answers, and TLS verification
// failures, are final.
func (k *kubeClient) get(ctx context.Context, p string, out any) error {
	wait := k.retryBase
	var last error
	for attempt := 1; ; attempt++ {
		err := k.getOnce(ctx, p, out)
		if err == nil || !transient(err) {
			return err
		}
		if ctx.Err() == nil || last == nil {
			last = err // keep the cause, not the deadline that cut the next attempt short
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up after %d attempts: %v)", last, attempt, context.Cause(ctx))
		case <-t.C:
		}
		wait = min(2*wait, k.retryMax)
	}
}

// transient reports whether a failed GET may succeed if repeated.
func transient(err error) bool {
	var (
		ae      *apiError
		verify  *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &ae):
		return ae.transient()
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid):
		return false
	}
	return true
}

func (k *kubeClient) getOnce(ctx context.Context, p string, out any) error {
	u := *k.server
	u.Path = path.Join(u.Path, p)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.Header.Set("User-Agent", "ambient-lite-cni-plugin")
	resp, err := k.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var st metav1.Status
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			msg = st.Message
		}
		if len(msg) > 512 {
			msg = msg[:512] + "…"
		}
		return &apiError{status: resp.StatusCode, message: msg}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding response: %w", err)
	}
	return nil
}
