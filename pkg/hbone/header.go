package hbone

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Header names HBONE gives a meaning to (canonical form; HTTP/2 sends them lowercase).
const (
	HeaderForwarded   = "Forwarded"
	HeaderBaggage     = "Baggage"
	HeaderTraceparent = "Traceparent"
)

// ErrBadHeader: a request header that HTTP/2 cannot carry or that HBONE reserves.
var ErrBadHeader = errors.New("invalid hbone request header")

// reserved are the header names a caller may not set: connection-specific fields, which
// HTTP/2 forbids, and Host, which is the :authority.
var reserved = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Upgrade": true, "Te": true, "Host": true, "Content-Length": true,
}

// buildHeader returns the CONNECT request's header fields: the caller's extra headers, then
// forwarded, baggage and traceparent from the request's fields (which win over extras of
// the same name). It refuses names and values HTTP/2 cannot carry, rather than letting the
// transport fail later with a less precise error.
func buildHeader(req *DialRequest) (http.Header, error) {
	h := make(http.Header, len(req.Header)+3)
	for k, vs := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, fmt.Errorf("header name %q: %w", k, ErrBadHeader)
		}
		ck := http.CanonicalHeaderKey(k)
		if reserved[ck] {
			return nil, fmt.Errorf("header %q is connection-specific or reserved: %w", k, ErrBadHeader)
		}
		for _, v := range vs {
			if !validValue(v) {
				return nil, fmt.Errorf("header %s value %q: %w", ck, v, ErrBadHeader)
			}
		}
		h[ck] = append(h[ck], vs...)
	}
	if req.Source.IsValid() {
		h.Set(HeaderForwarded, Forwarded{For: req.Source}.String())
	}
	for _, f := range []struct{ name, value string }{{HeaderBaggage, req.Baggage}, {HeaderTraceparent, req.Traceparent}} {
		if f.value == "" {
			continue
		}
		if !validValue(f.value) {
			return nil, fmt.Errorf("header %s value %q: %w", f.name, f.value, ErrBadHeader)
		}
		h.Set(f.name, f.value)
	}
	return h, nil
}

// validValue reports whether v can be sent as an HTTP/2 field value: no control bytes and no
// leading or trailing whitespace (RFC 9113 §8.2.1).
func validValue(v string) bool {
	return httpguts.ValidHeaderFieldValue(v) && strings.TrimSpace(v) == v && !strings.ContainsAny(v, "\x00\r\n")
}

// parseConnect decides whether a request is an HBONE CONNECT the server can serve, and
// returns its target. On failure it also returns the status to answer (400).
func parseConnect(method, authority string) (netip.AddrPort, int, error) {
	if method != http.MethodConnect {
		return netip.AddrPort{}, http.StatusBadRequest, fmt.Errorf("method %q: hbone serves only CONNECT", method)
	}
	target, err := ParseAuthority(authority)
	if err != nil {
		return netip.AddrPort{}, http.StatusBadRequest, err
	}
	return target, http.StatusOK, nil
}
