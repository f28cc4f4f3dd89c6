package proxy

import (
	"context"
	"net/http"
	"net/http/httputil"
	"net/url"
)

// forwardH2 proxies to an HTTP/2 (h2c) upstream with httputil.ReverseProxy and x/net's
// HTTP/2 transport: the rare path (gRPC and HTTP/2 Service ports).
func (p *Proxy) forwardH2(h *hop) {
	x, r := h.x, h.r
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			setTarget(pr.Out, h.route.Target.String(), h.target)
			pr.Out.Host = h.host
			// Rewrite mode drops these; the waypoint keeps them (prepareHeaders set them).
			for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "Forwarded"} {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
			applyRequestMods(pr.Out.Header, h.rt, h.vh, h.wc)
		},
		Transport: p.ups.transport(h.route),
		// 0: a response with a length goes out in one write (headers and body); a streamed
		// one (unknown length, gRPC, event streams) is still flushed at once by ReverseProxy.
		FlushInterval: 0,
		ModifyResponse: func(resp *http.Response) error {
			if !h.try.responseStarted() {
				return errPerTryTimeout
			}
			applyResponseMods(resp.Header, h.rt, h.vh, h.wc)
			return nil
		},
		ErrorHandler: func(_ http.ResponseWriter, _ *http.Request, err error) { upstreamError(h, err) },
	}
	ctx := h.try.ctx
	if ctx.Value(http.ServerContextKey) == nil {
		// ReverseProxy aborts a response cut short (http.ErrAbortHandler) only under a
		// server; serveHTTP1 is one.
		ctx = context.WithValue(ctx, http.ServerContextKey, p.h1base)
	}
	rp.ServeHTTP(x.w, r.WithContext(ctx))
}

// setTarget points an outgoing request at addr with the request target (path and query).
func setTarget(out *http.Request, addr, target string) {
	u, err := url.ParseRequestURI(target)
	if err != nil {
		u = &url.URL{Path: target}
	}
	out.URL = &url.URL{Scheme: "http", Host: addr, Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}
}
