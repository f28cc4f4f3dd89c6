package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"golang.org/x/net/http/httpguts"

	"github.com/ambient-lite/ambient-lite/pkg/identity"
)

// Seeds beyond these live in testdata/fuzz/<FuzzName>/.

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[fd00::1]:15008", "[::ffff:1.2.3.4]:1", "[fe80::1%eth0]:80", "a:1", "1.2.3.4:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseAuthority(s)
		if err != nil {
			if !errors.Is(err, ErrBadAuthority) {
				t.Fatalf("error %v does not wrap ErrBadAuthority", err)
			}
			return
		}
		if ap.Port() == 0 || ap.Addr().Zone() != "" {
			t.Fatalf("accepted %q as %v", s, ap)
		}
		again, err := ParseAuthority(ap.String())
		if err != nil || again != ap {
			t.Fatalf("%q → %v → %v, %v", s, ap, again, err)
		}
	})
}

func FuzzParseForwarded(f *testing.F) {
	for _, s := range []string{
		`for="10.0.0.1:41234"`, `for="[fd00::7]:41234";host=echo.svc`, `for=unknown, for="1.2.3.4"`,
		`host="a\"b";proto=https`, `for="[2001:db8::1]:_x"`, `for=`, `;;`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fw, err := ParseForwarded(s)
		if err != nil {
			if !errors.Is(err, ErrBadForwarded) {
				t.Fatalf("error %v does not wrap ErrBadForwarded", err)
			}
			return
		}
		if fw == (Forwarded{}) {
			return
		}
		out := fw.String()
		if !httpguts.ValidHeaderFieldValue(out) {
			t.Fatalf("%+v formats as invalid header value %q", fw, out)
		}
		again, err := ParseForwarded(out)
		if err != nil || again != fw {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, fw, out, again, err)
		}
	})
}

// FuzzForwardedRoundTrip builds the header ztunnel sends from arbitrary addresses and hosts.
func FuzzForwardedRoundTrip(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, uint16(41234), "")
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7}, uint16(80), "echo.default.svc.cluster.local")
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4}, uint16(0), `we"ird host\`)
	f.Fuzz(func(t *testing.T, ip []byte, port uint16, host string) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		for i := 0; i < len(host); i++ {
			if !isQdtext(host[i]) && host[i] != '"' && host[i] != '\\' {
				return // not representable in a header
			}
		}
		fw := Forwarded{For: netip.AddrPortFrom(addr, port), Host: host}
		out := fw.String()
		got, err := ParseForwarded(out)
		if err != nil || got != fw {
			t.Fatalf("%+v → %q → %+v, %v", fw, out, got, err)
		}
	})
}

// FuzzHeaders drives the header handling of both sides: the Dialer's header builder with
// arbitrary extra headers, and the Server's decision on a stream with arbitrary methods,
// authorities and header fields. The handler must see exactly what was validated.
func FuzzHeaders(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", "X-Extra", "v", "a=b", "00-x-y-01")
	f.Add("GET", "[fd00::1]:80", "Connection", "close", "", "")
	f.Add("CONNECT", "svc:80", "Forwarded", `for="1.2.3.4:5"`, "k=v,k2=v2", "")
	f.Add("CONNECT", "[::1]:1", "x", "a\r\nb: c", "\x00", " ")
	s, err := NewServer(ServerOptions{
		TLS: &tls.Config{ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{"h2"}},
		Handler: func(ctx context.Context, req *Request) (net.Conn, error) {
			*ctx.Value(seenKey{}).(**Request) = req
			return nil, Reject(http.StatusUnauthorized, nil)
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	peer, _ := identity.Parse("spiffe://cluster.local/ns/a/sa/b")
	f.Fuzz(func(t *testing.T, method, authority, name, value, baggage, traceparent string) {
		h, err := buildHeader(&DialRequest{Header: http.Header{name: {value}}, Baggage: baggage, Traceparent: traceparent})
		if err != nil {
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("error %v does not wrap ErrBadHeader", err)
			}
			h = http.Header{name: {value}} // the server must cope with it anyway
		} else {
			for k, vs := range h {
				if !httpguts.ValidHeaderFieldName(k) || reserved[k] {
					t.Fatalf("built header name %q", k)
				}
				for _, v := range vs {
					if !httpguts.ValidHeaderFieldValue(v) {
						t.Fatalf("built header %s value %q", k, v)
					}
				}
			}
		}
		var seen *Request
		ctx := context.WithValue(context.Background(), seenKey{}, &seen)
		up, st := s.decide(ctx, method, authority, &Request{Header: h, Peer: peer})
		if up != nil {
			t.Fatalf("%s %q: decided on an upstream the handler never returns", method, authority)
		}
		target, status, perr := parseConnect(method, authority)
		switch {
		case perr != nil:
			if st.Status != status || seen != nil {
				t.Fatalf("%s %q answered %d (handler called: %v), want %d", method, authority, st.Status, seen != nil, status)
			}
		default:
			if st.Status != http.StatusUnauthorized || seen == nil || seen.Target != target || seen.Peer != peer {
				t.Fatalf("%s %q answered %d, handler saw %+v", method, authority, st.Status, seen)
			}
			if len(seen.Header) != len(h) {
				t.Fatalf("handler saw header %v, sent %v", seen.Header, h)
			}
		}
	})
}

type seenKey struct{}
