package secrets

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// errInvalidChain marks a chain the CA returned that must not be used.
var errInvalidChain = errors.New("invalid certificate chain")

// verifyChain checks a chain the CA issued for id and the key whose CSR it signed: the
// leaf's only URI SAN is id, the chain verifies at now against roots (the anchors of id's
// trust domain), and the leaf carries key's public key. Errors wrap errInvalidChain.
func verifyChain(id identity.ID, key crypto.Signer, chain []*x509.Certificate, roots []*x509.Certificate, now time.Time) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errInvalidChain, fmt.Sprintf(format, args...))
	}
	if len(chain) == 0 {
		return bad("empty")
	}
	for i, c := range chain {
		if c == nil {
			return bad("certificate %d is nil", i)
		}
	}
	if len(roots) == 0 {
		return bad("no trust anchors to verify it against")
	}
	bundle := x509bundle.FromX509Authorities(id.TrustDomain(), roots)
	got, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err != nil {
		return bad("%v", err)
	}
	if got != id.SPIFFE() {
		return bad("leaf names %s, want %s", got, id)
	}
	pub, ok := chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return bad("leaf public key does not match the key of the CSR")
	}
	return nil
}
