package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

// maxMirrorBody bounds the request body buffered for mirroring; a larger request is not
// mirrored.
const maxMirrorBody = 1 << 20

// mirror sends copies of the request to the route's mirror clusters, fire and forget. The
// body is buffered (up to maxMirrorBody) and replayed to the primary request.
func (p *Proxy) mirror(h *hop, f *l7config.Forward, snap *meshstate.Snapshot, h2 bool) {
	r := h.r
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxMirrorBody+1))
		rest := r.Body
		r.Body = readCloser{io.MultiReader(bytes.NewReader(b), rest), rest}
		if err != nil || len(b) > maxMirrorBody {
			return
		}
		body = b
	}
	header, _ := outgoingHeader(r, true, h.rt, h.vh, h.wc)
	shadowHost := h.host
	if host, port, ok := strings.Cut(h.host, ":"); ok {
		shadowHost = host + "-shadow:" + port
	} else {
		shadowHost += "-shadow"
	}
	timeout := f.Timeout
	if timeout == 0 {
		timeout = l7config.DefaultTimeout
	}
	for _, m := range f.Mirrors {
		if m.Percent < 100 && float64(p.opts.Rand(10000)) >= m.Percent*100 {
			continue
		}
		route, err := resolve(snap, &p.hosts, m.Cluster, h.x.st.plan.Target, p.pick)
		if err != nil {
			p.log.Debug("mirror not sent", "cluster", m.Cluster.Name, "err", err)
			continue
		}
		var send func(context.Context) (*http.Response, error)
		if h2 {
			send = p.mirrorH2(route, r.Method, h.target, shadowHost, header, body)
		} else {
			send = p.mirrorH1(route, r.Method, requestURI(h.target), shadowHost, header, body)
		}
		if send == nil {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.ctx, timeout)
			defer cancel()
			resp, err := send(ctx)
			if err != nil {
				p.log.Debug("mirror failed", "cluster", m.Cluster.Name, "err", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
}

// mirrorH1 returns the sending of a mirrored request to an HTTP/1.1 upstream.
func (p *Proxy) mirrorH1(route meshstate.Route, method, uri, host string, header http.Header, body []byte) func(context.Context) (*http.Response, error) {
	b := appendRequestHead(nil, method, uri, host, header, int64(len(body)))
	rq := &upRequest{msg: append(b, body...), method: method, replayable: true, idempotent: isIdempotent(method, header)}
	return func(ctx context.Context) (*http.Response, error) {
		return p.roundTrip(ctx, keyOf(route, false), route, rq, nil)
	}
}

// mirrorH2 returns the sending of a mirrored request to an HTTP/2 upstream.
func (p *Proxy) mirrorH2(route meshstate.Route, method, target, host string, header http.Header, body []byte) func(context.Context) (*http.Response, error) {
	req, err := http.NewRequest(method, "http://"+route.Target.String(), bytes.NewReader(body))
	if err != nil {
		return nil
	}
	setTarget(req, route.Target.String(), target)
	req.Header, req.Host = header.Clone(), host
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	t := p.ups.transport(route)
	return func(ctx context.Context) (*http.Response, error) { return t.RoundTrip(req.WithContext(ctx)) }
}

type readCloser struct {
	io.Reader
	io.Closer
}
