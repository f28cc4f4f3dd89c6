// Package identity is the mesh's workload identity: the SPIFFE ID
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> that every mesh certificate
// carries as its single URI SAN.
//
// It parses and formats IDs only (on top of go-spiffe's spiffeid, which checks the SPIFFE
// rules); it does no I/O and knows nothing of certificates or Kubernetes. Any package may
// import it.
package identity

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain of a mesh that configures none (Istio's default).
const DefaultTrustDomain = "cluster.local"

// ID is a workload identity. The zero ID is invalid; IsZero reports it.
type ID struct {
	spiffe spiffeid.ID
	ns, sa string
}

// Errors returned by Parse and New, wrapped with the offending input.
var (
	ErrNotWorkload = errors.New("not a workload identity: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
	ErrInvalidName = errors.New("namespace and service account must be Kubernetes names (lowercase alphanumerics, '-' and '.', at most 253 characters)")
)

// New builds the identity of a service account in a namespace of a trust domain.
func New(trustDomain, namespace, serviceAccount string) (ID, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return ID{}, fmt.Errorf("trust domain %q: %w", trustDomain, err)
	}
	if !validName(namespace) || !validName(serviceAccount) {
		return ID{}, fmt.Errorf("identity ns %q sa %q: %w", namespace, serviceAccount, ErrInvalidName)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return ID{}, fmt.Errorf("identity ns %q sa %q: %w", namespace, serviceAccount, err)
	}
	return ID{spiffe: id, ns: namespace, sa: serviceAccount}, nil
}

// Parse parses the string form, "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>".
func Parse(s string) (ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return ID{}, fmt.Errorf("parsing identity %q: %w", s, err)
	}
	return FromSPIFFE(id)
}

// FromSPIFFE converts a SPIFFE ID that names a workload (for example the URI SAN of a
// verified certificate) into an ID.
func FromSPIFFE(id spiffeid.ID) (ID, error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return ID{}, fmt.Errorf("identity %q: %w", id, ErrNotWorkload)
	}
	if !validName(parts[1]) || !validName(parts[3]) {
		return ID{}, fmt.Errorf("identity %q: %w", id, ErrInvalidName)
	}
	return ID{spiffe: id, ns: parts[1], sa: parts[3]}, nil
}

// String returns the SPIFFE URI, or "" for the zero ID.
func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	return id.spiffe.String()
}

// IsZero reports whether id is the zero (invalid) ID.
func (id ID) IsZero() bool { return id.spiffe.IsZero() }

// SPIFFE returns the go-spiffe form, for use with go-spiffe's x509svid and tlsconfig.
func (id ID) SPIFFE() spiffeid.ID { return id.spiffe }

// TrustDomain returns the trust domain.
func (id ID) TrustDomain() spiffeid.TrustDomain { return id.spiffe.TrustDomain() }

// Namespace returns the Kubernetes namespace.
func (id ID) Namespace() string { return id.ns }

// ServiceAccount returns the Kubernetes service account name.
func (id ID) ServiceAccount() string { return id.sa }

// Principal returns the form AuthorizationPolicy uses: "<trust-domain>/ns/<ns>/sa/<sa>".
func (id ID) Principal() string { return strings.TrimPrefix(id.String(), "spiffe://") }

// validName accepts Kubernetes DNS-subdomain names (namespaces are DNS labels, service
// accounts DNS subdomains; the subdomain rule covers both).
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '.' {
			return false
		}
		if !alnum && (i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// LogValue logs an ID as its URI.
func (id ID) LogValue() slog.Value { return slog.StringValue(id.String()) }

// MarshalText encodes an ID as its URI (for JSON and YAML).
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }
