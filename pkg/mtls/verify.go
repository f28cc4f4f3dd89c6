package mtls

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// VerifyClient is the server's check of a client chain (leaf first): the leaf names a
// workload identity of trustDomain and chains to roots. It returns that identity. Any
// workload of the trust domain passes; authorization is the caller's job.
func VerifyClient(chain []*x509.Certificate, trustDomain spiffeid.TrustDomain, roots []*x509.Certificate) (identity.ID, error) {
	if len(chain) == 0 {
		return identity.ID{}, errors.New("client presented no certificate")
	}
	claimed, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return identity.ID{}, fmt.Errorf("client certificate: %w", err)
	}
	if claimed.TrustDomain() != trustDomain {
		return identity.ID{}, fmt.Errorf("client presented %s, outside trust domain %s: %w", claimed, trustDomain, ErrIdentity)
	}
	id, err := verifyChain(chain, roots)
	if err != nil {
		return identity.ID{}, fmt.Errorf("verifying client certificate %s: %w", claimed, err)
	}
	return id, nil
}

// VerifyServer is the client's check of a server chain (leaf first): the leaf chains to roots
// and names one of want. It returns that identity.
func VerifyServer(chain []*x509.Certificate, roots []*x509.Certificate, want []identity.ID) (identity.ID, error) {
	if len(chain) == 0 {
		return identity.ID{}, errors.New("server presented no certificate")
	}
	id, err := verifyChain(chain, roots)
	if err != nil {
		return identity.ID{}, fmt.Errorf("verifying server certificate: %w", err)
	}
	for _, w := range want {
		if w == id {
			return id, nil
		}
	}
	return identity.ID{}, fmt.Errorf("server presented %s, want one of [%s]: %w", id, joinIDs(want), ErrIdentity)
}

// verifyChain checks chain against roots with go-spiffe and returns the leaf's workload
// identity. The roots are the mesh's, whatever the trust domain the leaf names; callers
// check the trust domain or the exact identity.
func verifyChain(chain, roots []*x509.Certificate) (identity.ID, error) {
	if len(roots) == 0 {
		return identity.ID{}, ErrNoRoots
	}
	sid, _, err := x509svid.Verify(chain, meshRoots(roots))
	if err != nil {
		return identity.ID{}, err
	}
	id, err := identity.FromSPIFFE(sid)
	if err != nil {
		return identity.ID{}, err
	}
	return id, nil
}

// leafIdentity reads the workload identity a certificate's URI SAN names.
func leafIdentity(leaf *x509.Certificate) (identity.ID, error) {
	sid, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return identity.ID{}, err
	}
	return identity.FromSPIFFE(sid)
}

// meshRoots is an x509bundle.Source that answers every trust domain with the mesh roots.
type meshRoots []*x509.Certificate

func (r meshRoots) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, r), nil
}

func joinIDs(ids []identity.ID) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return strings.Join(s, ", ")
}
