package proxy

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

// upRequest is a request for an HTTP/1.1 upstream, its head already encoded.
type upRequest struct {
	// msg is the request line and header, followed by the whole body when the body was
	// read ahead (replayable then).
	msg        []byte
	buf        *[]byte // msg's pooled buffer
	method     string
	replayable bool
	idempotent bool
	// body is the body to stream after msg, of length bytes (-1: unknown, sent chunked);
	// nil if none or read ahead.
	body   interface{ Read([]byte) (int, error) }
	length int64
	// held, if set, is true while a goroutine writes body upstream.
	held *atomic.Bool
}

// hopHeaders are removed from requests and responses passing through, as
// httputil.ReverseProxy removes them (with those the Connection header names).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopByHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		delete(h, f)
	}
}

// upgradeType is the protocol a request or response upgrades to, or "".
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// outgoingHeader is the header of the request sent upstream, as the ReverseProxy the
// waypoint used made it: hop-by-hop fields removed (Upgrade kept for an upgrade, TE:
// trailers kept if asked), X-Forwarded-Host dropped, X-Forwarded-For, X-Forwarded-Proto
// and Forwarded as prepareHeaders set them, then the route's request header mods. It
// returns the upgrade the client asked for. Unless clone is set it modifies r.Header
// itself (the request's matching is done, and record keeps what it needs of it).
func outgoingHeader(r *http.Request, clone bool, rt *l7config.Route, vh *l7config.VirtualHost, wc *l7config.WeightedCluster) (http.Header, string) {
	h := r.Header
	if clone || h == nil {
		h = r.Header.Clone()
		if h == nil {
			h = http.Header{}
		}
	}
	te := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	upType := upgradeType(h)
	removeHopByHopHeaders(h)
	if te {
		h["Te"] = []string{"trailers"}
	}
	if upType != "" {
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = []string{upType}
	}
	delete(h, "X-Forwarded-Host")
	applyRequestMods(h, rt, vh, wc)
	return h, upType
}

// requestURI is the request target sent upstream for target, the rewritten path and
// query (setTarget's URL, written as net/http writes it).
func requestURI(target string) string {
	if isPlainURI(target) {
		return target
	}
	return requestURISlow(target)
}

func requestURISlow(target string) string {
	u, err := url.ParseRequestURI(target)
	if err != nil {
		u = &url.URL{Path: target}
	}
	return (&url.URL{Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}).RequestURI()
}

// isPlainURI: an origin-form target that parsing and writing back leaves unchanged (no
// escapes, fragments or characters net/url would escape).
func isPlainURI(s string) bool {
	if s == "" || s[0] != '/' || s[len(s)-1] == '?' { // an empty query is dropped
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("/-._~!$&'()*+,;=:@?", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// appendRequestHead encodes a request line and header for an HTTP/1.1 upstream, as
// net/http's Transport writes them: Host first, User-Agent only if set and not empty,
// Content-Length (also 0 for methods other than GET and HEAD) or chunked framing.
func appendRequestHead(b []byte, method, uri, host string, h http.Header, length int64) []byte {
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, uri...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = appendFieldValue(b, host)
	b = append(b, "\r\n"...)
	for k, vv := range h {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		case "User-Agent":
			if len(vv) > 0 && vv[0] != "" {
				b = appendField(b, k, vv[0])
			}
			continue
		}
		for _, v := range vv {
			b = appendField(b, k, v)
		}
	}
	switch {
	case length < 0:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case length > 0 || method != http.MethodGet && method != http.MethodHead:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, length, 10)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	b = appendFieldValue(b, v)
	return append(b, "\r\n"...)
}

func appendFieldValue(b []byte, v string) []byte {
	v = textproto.TrimString(v)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// isIdempotent is net/http's rule for retrying a request on another connection.
func isIdempotent(method string, h http.Header) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := h["Idempotency-Key"]
	_, b := h["X-Idempotency-Key"]
	return a || b
}
