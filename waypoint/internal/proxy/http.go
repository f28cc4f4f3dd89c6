package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/accesslog"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/router"
)

// Envoy's local replies.
const (
	bodyRBAC        = "RBAC: access denied"
	bodyNoHealthy   = "no healthy upstream"
	bodyConnectFail = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	bodyTimeout     = "upstream request timeout"
)

// maxMirrorBody bounds the request body buffered for mirroring; a larger request is not
// mirrored.
const maxMirrorBody = 1 << 20

// exchange is one request's bookkeeping, for metrics and the access log.
type exchange struct {
	start   time.Time
	st      *stream
	w       *countingWriter
	reqBody *countingBody
	flags   string
	cluster string
	route   meshstate.Route
	details string
	dryRun  []accesslog.DryRun
}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	st, _ := r.Context().Value(streamKey{}).(*stream)
	if st == nil {
		http.Error(w, "no stream", http.StatusInternalServerError)
		return
	}
	x := &exchange{start: time.Now(), st: st, w: &countingWriter{ResponseWriter: w}, flags: "-"}
	if r.Body != nil && r.Body != http.NoBody {
		x.reqBody = &countingBody{ReadCloser: r.Body}
		r.Body = x.reqBody
	}
	defer p.record(x, r)
	prepareHeaders(r, st)
	p.handle(x, r)
}

// prepareHeaders sets what Envoy sets on a request entering a waypoint: x-request-id if
// absent, x-forwarded-proto, and the original client in x-forwarded-for.
func prepareHeaders(r *http.Request, st *stream) {
	if r.Header.Get("X-Request-Id") == "" {
		r.Header.Set("X-Request-Id", newRequestID())
	}
	if r.Header.Get("X-Forwarded-Proto") == "" {
		r.Header.Set("X-Forwarded-Proto", "http")
	}
	if st.source.IsValid() {
		if prior := r.Header.Get("X-Forwarded-For"); prior != "" {
			r.Header.Set("X-Forwarded-For", prior+", "+st.source.Addr().String())
		} else {
			r.Header.Set("X-Forwarded-For", st.source.Addr().String())
		}
	}
}

func (p *Proxy) handle(x *exchange, r *http.Request) {
	st := x.st
	mreq := match.Request{Method: r.Method, Path: r.RequestURI, Host: r.Host, Scheme: "http", Header: r.Header}
	if mreq.Path == "" {
		mreq.Path = r.URL.RequestURI()
	}
	vh := p.virtualHost(st)
	attrs := l4Attributes(st)
	attrs.HTTP, attrs.Request = true, mreq
	d := vh.Authz.Evaluate(attrs)
	x.dryRun = p.shadow(d, attrs, st)
	if len(d.Audit) > 0 {
		p.log.Info("rbac audit", "policies", d.Audit, "principal", attrs.Principal, "path", mreq.Path, "allowed", d.Allowed)
	}
	if !d.Allowed {
		x.flags, x.details = "-", "rbac_access_denied_matched_policy["+orNone(d.Policy)+"]"
		localReply(x.w, http.StatusForbidden, bodyRBAC)
		return
	}
	rt := vh.Route(&mreq)
	if rt == nil {
		x.flags, x.details = "NR", "route_not_found"
		x.w.WriteHeader(http.StatusNotFound)
		return
	}
	switch {
	case rt.Direct != nil:
		applyResponseMods(x.w.Header(), rt, vh, nil)
		x.details = "direct_response"
		localReply(x.w, rt.Direct.Status, rt.Direct.Body)
	case rt.Redirect != nil:
		applyResponseMods(x.w.Header(), rt, vh, nil)
		x.w.Header().Set("Location", router.RedirectLocation(rt, "http", r.Host, mreq.Path))
		x.w.WriteHeader(rt.Redirect.Code)
	default:
		p.forward(x, r, rt, vh)
	}
}

// virtualHost is the virtual host for a request on st, from the current route tables, as
// Envoy takes the route configuration per request: a stream kept alive across an update
// gets the new routes and policies. If the stream's configuration is gone, the one it was
// accepted with serves.
func (p *Proxy) virtualHost(st *stream) *l7config.VirtualHost {
	if t, ok := p.opts.Routes()[st.plan.Key]; ok {
		if vh := t.VirtualHost(st.plan.Target.Port()); vh != nil {
			return vh
		}
	}
	return st.plan.VHost
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func localReply(w http.ResponseWriter, code int, body string) {
	if body != "" {
		w.Header().Set("Content-Type", "text/plain")
	}
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}

func applyResponseMods(h http.Header, rt *l7config.Route, vh *l7config.VirtualHost, wc *l7config.WeightedCluster) {
	if wc != nil {
		wc.ResponseHeaders.Apply(h)
	}
	rt.ResponseHeaders.Apply(h)
	vh.ResponseHeaders.Apply(h)
}

func applyRequestMods(h http.Header, rt *l7config.Route, vh *l7config.VirtualHost, wc *l7config.WeightedCluster) {
	if wc != nil {
		wc.RequestHeaders.Apply(h)
	}
	rt.RequestHeaders.Apply(h)
	vh.RequestHeaders.Apply(h)
}

// forward proxies the request to the cluster the route chooses.
func (p *Proxy) forward(x *exchange, r *http.Request, rt *l7config.Route, vh *l7config.VirtualHost) {
	f := rt.Forward
	wc := router.PickCluster(f, p.opts.Rand(f.TotalWeight))
	x.cluster = wc.Cluster.Name
	snap := p.opts.State()
	route, err := resolve(snap, &p.hosts, wc.Cluster, x.st.plan.Target, p.pick)
	if errors.Is(err, errNoService) {
		x.flags, x.details = "NC", "cluster_not_found"
		x.w.WriteHeader(f.ClusterNotFound)
		return
	}
	if err != nil {
		x.flags, x.details = "UH", err.Error()
		localReply(x.w, http.StatusServiceUnavailable, bodyNoHealthy)
		return
	}
	x.route = route
	target := router.UpstreamPath(rt, r.RequestURI)
	host := router.UpstreamHost(rt, r.Host)
	if len(f.Mirrors) > 0 {
		p.mirror(x, r, rt, vh, wc, f, target, host, snap)
	}
	try := newTry(r.Context(), f)
	defer try.cancel()
	defer func() {
		if details, ok := try.timedOut(); ok && x.flags == "-" { // cut after the response started
			x.flags, x.details = "UT", details
		}
	}()
	h2 := x.st.plan.H2Upstream || x.st.plan.SameUpstream && r.ProtoMajor == 2
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			setTarget(pr.Out, route.Target.String(), target)
			pr.Out.Host = host
			// Rewrite mode drops these; the waypoint keeps them (prepareHeaders set them).
			for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "Forwarded"} {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
			applyRequestMods(pr.Out.Header, rt, vh, wc)
		},
		Transport: p.ups.transport(route, h2),
		// 0: a response with a length goes out in one write (headers and body); a streamed
		// one (unknown length, gRPC, event streams) is still flushed at once by ReverseProxy.
		FlushInterval: 0,
		ModifyResponse: func(resp *http.Response) error {
			if !try.responseStarted() {
				return errPerTryTimeout
			}
			applyResponseMods(resp.Header, rt, vh, wc)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			if details, ok := try.timedOut(); ok {
				x.flags, x.details = "UT", details
				localReply(w, http.StatusGatewayTimeout, bodyTimeout)
				return
			}
			x.flags, x.details = "UF", err.Error()
			localReply(w, http.StatusServiceUnavailable, bodyConnectFail)
		},
		ErrorLog: nil,
	}
	rp.ServeHTTP(x.w, r.WithContext(try.ctx))
}

// setTarget points an outgoing request at addr with the request target (path and query).
func setTarget(out *http.Request, addr, target string) {
	u, err := url.ParseRequestURI(target)
	if err != nil {
		u = &url.URL{Path: target}
	}
	out.URL = &url.URL{Scheme: "http", Host: addr, Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}
}

// mirror sends copies of the request to the route's mirror clusters, fire and forget. The
// body is buffered (up to maxMirrorBody) and replayed to the primary request.
func (p *Proxy) mirror(x *exchange, r *http.Request, rt *l7config.Route, vh *l7config.VirtualHost, wc *l7config.WeightedCluster,
	f *l7config.Forward, target, host string, snap *meshstate.Snapshot) {
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
	header := r.Header.Clone()
	applyRequestMods(header, rt, vh, wc)
	shadowHost := host
	if h, port, ok := strings.Cut(host, ":"); ok {
		shadowHost = h + "-shadow:" + port
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
		route, err := resolve(snap, &p.hosts, m.Cluster, x.st.plan.Target, p.pick)
		if err != nil {
			p.log.Debug("mirror not sent", "cluster", m.Cluster.Name, "err", err)
			continue
		}
		req, err := http.NewRequestWithContext(p.ctx, r.Method, "http://"+route.Target.String(), bytes.NewReader(body))
		if err != nil {
			continue
		}
		setTarget(req, route.Target.String(), target)
		req.Header, req.Host = header.Clone(), shadowHost
		if body == nil {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		t := p.ups.transport(route, x.st.plan.H2Upstream || x.st.plan.SameUpstream && r.ProtoMajor == 2)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.ctx, timeout)
			defer cancel()
			resp, err := t.RoundTrip(req.WithContext(ctx))
			if err != nil {
				p.log.Debug("mirror failed", "cluster", m.Cluster.Name, "err", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
}

type readCloser struct {
	io.Reader
	io.Closer
}

// record writes the request's metrics and access log line.
func (p *Proxy) record(x *exchange, r *http.Request) {
	d := time.Since(x.start)
	code := x.w.status
	if code == 0 {
		code = http.StatusOK
	}
	proto := "http"
	if r.ProtoMajor == 2 {
		proto = "http"
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			proto = "grpc"
		}
	}
	l := p.labels(x.st, x.route, proto)
	l.ResponseCode, l.ResponseFlags = code, x.flags
	var reqBytes int64
	if x.reqBody != nil {
		reqBytes = x.reqBody.n
	}
	p.opts.Metrics.Request(&l, d, reqBytes, x.w.n)
	e := &accesslog.Entry{
		Method: r.Method, Path: r.RequestURI, Authority: r.Host, Status: code, Flags: x.flags, Duration: d,
		Cluster: x.cluster, SourcePrincipal: principal(x.st), RequestID: r.Header.Get("X-Request-Id"),
		BytesReceived: reqBytes, BytesSent: x.w.n, DryRun: x.dryRun,
	}
	if x.route.Target.IsValid() {
		e.Upstream = x.route.Target.String()
	}
	p.opts.AccessLog.Log(e)
}

// countingWriter records the status and counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
