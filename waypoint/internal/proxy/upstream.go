package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"golang.org/x/net/http2"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
)

// upstreams keeps one HTTP/2 transport per endpoint (target, expected identities), so
// requests to an endpoint reuse its connections; each connection is one HBONE stream.
// HTTP/1.1 upstreams use the waypoint's own client (h1client.go) and its pool.
type upstreams struct {
	p  *Proxy
	mu sync.Mutex
	m  map[upstreamKey]*http2.Transport
}

// upstreamKey names an upstream endpoint's connections.
type upstreamKey struct {
	target netip.AddrPort
	ids    string // the identities expected (hbone.IdentitySet)
	h2     bool
}

// transport returns the HTTP/2 round tripper for r.
func (u *upstreams) transport(r meshstate.Route) http.RoundTripper {
	k := keyOf(r, true)
	u.mu.Lock()
	defer u.mu.Unlock()
	if t, ok := u.m[k]; ok {
		return t
	}
	if u.m == nil {
		u.m = map[upstreamKey]*http2.Transport{}
	}
	t := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return u.p.dialRoute(ctx, r)
		},
		ReadIdleTimeout: hbone.KeepaliveInterval,
		PingTimeout:     hbone.KeepaliveTimeout,
	}
	u.m[k] = t
	return t
}

// closeIdle closes the idle connections of every transport and forgets them.
func (u *upstreams) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, t := range u.m {
		t.CloseIdleConnections()
		delete(u.m, k)
	}
}
