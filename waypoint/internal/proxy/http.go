package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
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

// exchange is one request's bookkeeping, for metrics and the access log.
type exchange struct {
	ctx     context.Context
	start   time.Time
	reqID   string // x-request-id, as the request came or as prepareHeaders set it
	st      *stream
	w       *countingWriter
	h1      *h1writer // the HTTP/1.x response writer; nil for h2c
	reqBody *countingBody
	flags   string
	cluster string
	route   meshstate.Route
	details string
	dryRun  []accesslog.DryRun
}

// serveHTTP is the handler of h2c streams: the stream comes in the request's context.
func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	st, _ := r.Context().Value(streamKey{}).(*stream)
	if st == nil {
		http.Error(w, "no stream", http.StatusInternalServerError)
		return
	}
	p.serve(r.Context(), w, r, st)
}

// serve handles one request that came on st; ctx ends when the stream does.
func (p *Proxy) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, st *stream) {
	x := &exchange{ctx: ctx, start: time.Now(), st: st, w: &countingWriter{ResponseWriter: w}, flags: "-"}
	x.h1, _ = w.(*h1writer)
	if r.Body != nil && r.Body != http.NoBody {
		x.reqBody = &countingBody{ReadCloser: r.Body}
		r.Body = x.reqBody
	}
	defer p.record(x, r)
	x.reqID = prepareHeaders(r, st)
	p.handle(x, r)
}

// prepareHeaders sets what Envoy sets on a request entering a waypoint: x-request-id if
// absent, x-forwarded-proto, and the original client in x-forwarded-for. It returns the
// request id.
func prepareHeaders(r *http.Request, st *stream) string {
	id := r.Header.Get("X-Request-Id")
	if id == "" {
		id = newRequestID()
		r.Header.Set("X-Request-Id", id)
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
	return id
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
		reqBytes = x.reqBody.n.Load()
	}
	p.opts.Metrics.Request(&l, d, reqBytes, x.w.n)
	e := &accesslog.Entry{
		Method: r.Method, Path: r.RequestURI, Authority: r.Host, Status: code, Flags: x.flags, Duration: d,
		Cluster: x.cluster, SourcePrincipal: principal(x.st), RequestID: x.reqID,
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

// countingBody counts the request body bytes read (maybe by an upstream body writer while
// the response is copied).
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
