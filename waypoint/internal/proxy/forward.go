package proxy

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/ambient-lite/ambient-lite/pkg/hbone"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/router"
)

// hop is what forwarding one request needs to know of its route.
type hop struct {
	x      *exchange
	r      *http.Request
	try    *try
	route  meshstate.Route
	target string // path and query, rewritten
	host   string // rewritten
	rt     *l7config.Route
	vh     *l7config.VirtualHost
	wc     *l7config.WeightedCluster
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
	h := &hop{x: x, r: r, route: route, target: router.UpstreamPath(rt, r.RequestURI), host: router.UpstreamHost(rt, r.Host),
		rt: rt, vh: vh, wc: wc}
	h2 := x.st.plan.H2Upstream || x.st.plan.SameUpstream && r.ProtoMajor == 2
	if len(f.Mirrors) > 0 {
		p.mirror(h, f, snap, h2)
	}
	h.try = newTry(x.ctx, f)
	defer h.try.cancel()
	defer func() {
		if details, ok := h.try.timedOut(); ok && x.flags == "-" { // cut after the response started
			x.flags, x.details = "UT", details
		}
	}()
	if h2 {
		p.forwardH2(h)
		return
	}
	p.forwardH1(h)
}

// upstreamError answers a request whose upstream exchange failed before the response
// started, as Envoy does: 504 if a timeout ended it, else 503.
func upstreamError(h *hop, err error) {
	if details, ok := h.try.timedOut(); ok {
		h.x.flags, h.x.details = "UT", details
		localReply(h.x.w, http.StatusGatewayTimeout, bodyTimeout)
		return
	}
	h.x.flags, h.x.details = "UF", err.Error()
	localReply(h.x.w, http.StatusServiceUnavailable, bodyConnectFail)
}

func keyOf(r meshstate.Route, h2 bool) upstreamKey {
	k := upstreamKey{target: r.Target, h2: h2}
	if len(r.Identities) == 1 { // the usual case, without IdentitySet's allocations
		k.ids = r.Identities[0].String()
	} else {
		k.ids = hbone.IdentitySet(r.Identities...)
	}
	return k
}

// forwardH1 proxies to an HTTP/1.1 upstream with the waypoint's own client.
func (p *Proxy) forwardH1(h *hop) {
	x, r := h.x, h.r
	header, upType := outgoingHeader(r, false, h.rt, h.vh, h.wc)
	rq, err := p.newUpRequest(r, r.Method, requestURI(h.target), h.host, header, x)
	if err != nil {
		upstreamError(h, err)
		return
	}
	defer putBuf(rq.buf)
	on1xx := func(resp *http.Response) {
		wh := x.w.Header()
		copyHeader(wh, resp.Header)
		x.w.WriteHeader(resp.StatusCode)
		clear(wh)
	}
	resp, err := p.roundTrip(h.try.ctx, keyOf(h.route, false), h.route, rq, on1xx)
	if err != nil {
		upstreamError(h, err)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		p.upgrade(h, resp, upType)
		return
	}
	removeHopByHopHeaders(resp.Header)
	if !h.try.responseStarted() {
		resp.Body.Close()
		upstreamError(h, errPerTryTimeout)
		return
	}
	applyResponseMods(resp.Header, h.rt, h.vh, h.wc)
	p.copyResponse(x, resp)
	if rq.held != nil && rq.held.Load() {
		x.h1.closeAfter = true // the request body is still being read for an upstream that answered early
	}
}

// newUpRequest encodes a request for an HTTP/1.1 upstream. A body of known length up to
// maxBufferedBody is read ahead and sent with the head; another is streamed.
func (p *Proxy) newUpRequest(r *http.Request, method, uri, host string, header http.Header, x *exchange) (*upRequest, error) {
	rq := &upRequest{method: method, buf: getBuf(), idempotent: isIdempotent(method, header)}
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	switch {
	case !hasBody:
		rq.msg = appendRequestHead((*rq.buf)[:0], method, uri, host, header, 0)
		rq.replayable = true
	case r.ContentLength > 0 && r.ContentLength <= maxBufferedBody:
		b := appendRequestHead((*rq.buf)[:0], method, uri, host, header, r.ContentLength)
		n := len(b)
		b = slices.Grow(b, int(r.ContentLength))[:n+int(r.ContentLength)]
		if _, err := io.ReadFull(r.Body, b[n:]); err != nil {
			*rq.buf = b
			return rq, fmt.Errorf("reading the request body: %w", err)
		}
		rq.msg, rq.replayable = b, true
	default:
		rq.msg = appendRequestHead((*rq.buf)[:0], method, uri, host, header, r.ContentLength)
		rq.body, rq.length = r.Body, r.ContentLength
		if x != nil && x.h1 != nil && x.h1.body != nil {
			rq.held = &x.h1.body.held
		}
	}
	*rq.buf = rq.msg
	return rq, nil
}

// copyResponse sends an upstream response downstream, as httputil.ReverseProxy does:
// trailers announced and forwarded, a body of unknown length (or an event stream) flushed
// as it comes. A body cut short aborts the downstream response (http.ErrAbortHandler).
func (p *Proxy) copyResponse(x *exchange, resp *http.Response) {
	if x.h1 != nil && len(x.h1.header) == 0 {
		x.h1.header = resp.Header // no copy: the response header is ours
	} else {
		copyHeader(x.w.Header(), resp.Header)
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		x.w.Header().Add("Trailer", strings.Join(keys, ", "))
	}
	x.w.WriteHeader(resp.StatusCode)
	if err := copyBody(x.w, resp.Body, resp.ContentLength == -1 || isEventStream(resp.Header)); err != nil {
		resp.Body.Close()
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close()
	if len(resp.Trailer) > 0 {
		http.NewResponseController(x.w).Flush() // chunked, so the trailers can follow
	}
	if len(resp.Trailer) == announced {
		copyHeader(x.w.Header(), resp.Trailer)
		return
	}
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			x.w.Header().Add(http.TrailerPrefix+k, v)
		}
	}
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody copies an upstream body downstream, flushing after each write if flush is set.
// It returns the error of either side.
func copyBody(w http.ResponseWriter, body io.Reader, flush bool) error {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if flush {
				if err := http.NewResponseController(w).Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	const es = "text/event-stream"
	if len(ct) < len(es) || !strings.EqualFold(ct[:len(es)], es) { // no parsing for the usual case
		return false
	}
	base, _, _ := mime.ParseMediaType(ct)
	return base == es
}

func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}
