package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
)

// upstreams keeps one HTTP transport per endpoint (target, expected identities, HTTP
// version), so requests to an endpoint reuse its connections; each connection is one
// HBONE stream.
type upstreams struct {
	p  *Proxy
	mu sync.Mutex
	m  map[upstreamKey]http.RoundTripper
}

type upstreamKey struct {
	target string
	ids    string
	h2     bool
}

// transport returns the round tripper for r.
func (u *upstreams) transport(r meshstate.Route, h2 bool) http.RoundTripper {
	k := upstreamKey{target: r.Target.String(), ids: hbone.IdentitySet(r.Identities...), h2: h2}
	u.mu.Lock()
	defer u.mu.Unlock()
	if t, ok := u.m[k]; ok {
		return t
	}
	if u.m == nil {
		u.m = map[upstreamKey]http.RoundTripper{}
	}
	dial := func(ctx context.Context) (net.Conn, error) { return u.p.dialRoute(ctx, r) }
	var t http.RoundTripper
	if h2 {
		t = &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
				return dial(ctx)
			},
			ReadIdleTimeout: hbone.KeepaliveInterval,
			PingTimeout:     hbone.KeepaliveTimeout,
		}
	} else {
		t = &http.Transport{
			DialContext:           func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
			MaxIdleConnsPerHost:   100,
			IdleConnTimeout:       90 * time.Second,
			DisableCompression:    true,
			ResponseHeaderTimeout: 0,
			ExpectContinueTimeout: time.Second,
		}
	}
	u.m[k] = t
	return t
}

// closeIdle closes the idle connections of every transport and forgets them.
func (u *upstreams) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, t := range u.m {
		if ci, ok := t.(interface{ CloseIdleConnections() }); ok {
			ci.CloseIdleConnections()
		}
		delete(u.m, k)
	}
}
