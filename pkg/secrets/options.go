package secrets

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// Signer obtains a certificate chain for a CSR from a certificate authority.
type Signer interface {
	// Sign asks the CA to sign csrPEM (a PEM "CERTIFICATE REQUEST") for ttl and returns the
	// chain, leaf first and root last. If impersonate is not zero, the request is made on
	// behalf of that identity (node proxy mode); otherwise the caller asks for its own
	// identity. Sign must return when ctx ends. The Manager verifies the chain, so Sign
	// need not. It may be called concurrently.
	Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, impersonate identity.ID) ([]*x509.Certificate, error)
}

// Defaults for the zero values of Options.
const (
	DefaultTTL        = 24 * time.Hour
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = time.Minute
	DefaultMaxFetches = 8
)

// Options configures a Manager.
type Options struct {
	// Signer is the CA. Required.
	Signer Signer
	// Roots returns the trust anchors (the mesh root certificates) that every issued chain
	// must verify against. Required. It is called at each verification, so the roots may
	// change over time; it must be safe for concurrent use.
	Roots func() []*x509.Certificate
	// TTL is the validity requested for each certificate. If zero, DefaultTTL. The CA may
	// issue a shorter one; rotation follows what was issued.
	TTL time.Duration
	// Impersonate selects node proxy mode (ztunnel): every request names the identity it is
	// for through Signer.Sign's impersonate argument. If false (a waypoint asking for its
	// own identity), impersonate is the zero ID.
	Impersonate bool
	// MinBackoff and MaxBackoff bound the exponential backoff (with jitter) between attempts
	// after the CA fails or issues a chain that does not verify. If zero, DefaultMinBackoff
	// and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// MaxFetches bounds the Sign calls in flight. At most half of them (and at least one)
	// serve background work (Prefetch, rotation, retries), so a Get always finds room
	// sooner. If zero, DefaultMaxFetches.
	MaxFetches int
	// Log receives one line per issued certificate and per failed attempt; nothing is
	// logged per TLS handshake. If nil, slog.Default().
	Log *slog.Logger
}

// withDefaults validates o and fills in its defaults.
func (o Options) withDefaults() (Options, error) {
	switch {
	case o.Signer == nil:
		return o, errors.New("secrets: Options.Signer is required")
	case o.Roots == nil:
		return o, errors.New("secrets: Options.Roots is required (the mesh trust anchors)")
	case o.TTL < 0:
		return o, fmt.Errorf("secrets: negative TTL %s", o.TTL)
	case o.MinBackoff < 0 || o.MaxBackoff < 0:
		return o, fmt.Errorf("secrets: negative backoff (min %s, max %s)", o.MinBackoff, o.MaxBackoff)
	case o.MaxFetches < 0:
		return o, fmt.Errorf("secrets: negative MaxFetches %d", o.MaxFetches)
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.MinBackoff > o.MaxBackoff {
		return o, fmt.Errorf("secrets: MinBackoff %s exceeds MaxBackoff %s", o.MinBackoff, o.MaxBackoff)
	}
	if o.MaxFetches == 0 {
		o.MaxFetches = DefaultMaxFetches
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o, nil
}

// maxBackground is how many fetches may serve background work at once.
func (o Options) maxBackground() int { return max(1, o.MaxFetches/2) }
