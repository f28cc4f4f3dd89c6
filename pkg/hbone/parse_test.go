package hbone

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/mtls/mtlstest"
)

func TestParseAuthority(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means invalid
	}{
		{"10.0.0.1:8080", "10.0.0.1:8080"},
		{"[fd00::1]:80", "[fd00::1]:80"},
		{"[FD00:0::1]:80", "[fd00::1]:80"},
		{"[::ffff:10.0.0.1]:80", "[::ffff:10.0.0.1]:80"},
		{"10.0.0.1:65535", "10.0.0.1:65535"},
		{"10.0.0.1", ""},
		{"10.0.0.1:0", ""},
		{"10.0.0.1:65536", ""},
		{"10.0.0.1:-1", ""},
		{"010.0.0.1:80", ""},
		{"fd00::1:80", ""},
		{"[10.0.0.1]:80", ""},
		{"[fe80::1%eth0]:80", ""},
		{"example.com:80", ""},
		{"", ""},
		{":80", ""},
		{"10.0.0.1:80 ", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAuthority(tt.in)
			if tt.want == "" {
				if err == nil || !errors.Is(err, ErrBadAuthority) {
					t.Fatalf("ParseAuthority(%q) = %v, %v; want ErrBadAuthority", tt.in, got, err)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("ParseAuthority(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestForwardedString(t *testing.T) {
	tests := []struct {
		f    Forwarded
		want string
	}{
		{Forwarded{For: netip.MustParseAddrPort("10.0.0.1:41234")}, `for="10.0.0.1:41234"`},
		{Forwarded{For: netip.MustParseAddrPort("[fd00::7]:41234")}, `for="[fd00::7]:41234"`},
		{Forwarded{For: netip.MustParseAddrPort("10.0.0.1:0")}, `for="10.0.0.1"`},
		{Forwarded{For: netip.MustParseAddrPort("[fd00::7]:0")}, `for="[fd00::7]"`},
		{Forwarded{For: netip.MustParseAddrPort("10.0.0.1:1"), Host: "echo.default.svc.cluster.local"}, `for="10.0.0.1:1";host=echo.default.svc.cluster.local`},
		{Forwarded{Host: "a b\"c"}, `host="a b\"c"`},
		{Forwarded{}, ""},
	}
	for _, tt := range tests {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("%+v.String() = %s, want %s", tt.f, got, tt.want)
		}
	}
}

func TestParseForwarded(t *testing.T) {
	tests := []struct {
		in      string
		forAddr string // "" for no address
		host    string
		bad     bool
	}{
		{in: `for="10.0.0.1:41234"`, forAddr: "10.0.0.1:41234"},
		{in: `for="[fd00::7]:41234"`, forAddr: "[fd00::7]:41234"},
		{in: `for=10.0.0.1`, forAddr: "10.0.0.1:0"},
		{in: `For="[2001:db8:cafe::17]"`, forAddr: "[2001:db8:cafe::17]:0"},
		{in: `for="10.0.0.1:41234";host=echo.svc`, forAddr: "10.0.0.1:41234", host: "echo.svc"},
		{in: `host="a\"b"; for="10.0.0.1:1" ; proto=https`, forAddr: "10.0.0.1:1", host: `a"b`},
		{in: `for="10.0.0.1:1", for="10.0.0.2:2"`, forAddr: "10.0.0.1:1"},
		{in: `for=unknown`},
		{in: `for=_hidden`},
		{in: `for="10.0.0.1:_port"`, forAddr: "10.0.0.1:0"},
		{in: `by=10.0.0.9`},
		{in: ``, bad: true},
		{in: `for=`, bad: true},
		{in: `for="10.0.0.1:1`, bad: true},
		{in: `for=[fd00::1]:80`, bad: true}, // IPv6 must be quoted
		{in: `for="fd00::1"`, bad: true},    // and bracketed
		{in: `for="[10.0.0.1]"`, bad: true},
		{in: `for="[fe80::1%eth0]:80"`, bad: true},
		{in: `for="10.0.0.1:99999"`, bad: true},
		{in: `for="10.0.0.1:"`, bad: true},
		{in: `for="example.com"`, bad: true},
		{in: `for="10.0.0.1";for="10.0.0.2"`, bad: true},
		{in: `for="10.0.0.1" junk`, bad: true},
		{in: `for="10.0.0.1", garbage`, bad: true},
		{in: "host=\"a\x01\"", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			f, err := ParseForwarded(tt.in)
			if tt.bad {
				if !errors.Is(err, ErrBadForwarded) {
					t.Fatalf("ParseForwarded = %+v, %v; want ErrBadForwarded", f, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want netip.AddrPort
			if tt.forAddr != "" {
				want = netip.MustParseAddrPort(tt.forAddr)
			}
			if f.For != want || f.Host != tt.host {
				t.Fatalf("ParseForwarded = %+v, want for %v host %q", f, want, tt.host)
			}
		})
	}
}

func TestBuildHeader(t *testing.T) {
	tests := []struct {
		name string
		req  DialRequest
		want http.Header // nil means an error
	}{
		{"nothing", DialRequest{}, http.Header{}},
		{
			"all fields",
			DialRequest{Source: netip.MustParseAddrPort("[fd00::1]:9"), Baggage: "a=b", Traceparent: "00-x-y-01", Header: http.Header{"x-custom": {"v1", "v2"}}},
			http.Header{"Forwarded": {`for="[fd00::1]:9"`}, "Baggage": {"a=b"}, "Traceparent": {"00-x-y-01"}, "X-Custom": {"v1", "v2"}},
		},
		{"fields win over extras", DialRequest{Baggage: "mine", Header: http.Header{"Baggage": {"theirs"}}}, http.Header{"Baggage": {"mine"}}},
		{"extra forwarded kept without source", DialRequest{Header: http.Header{"Forwarded": {"for=1.2.3.4"}}}, http.Header{"Forwarded": {"for=1.2.3.4"}}},
		{"bad name", DialRequest{Header: http.Header{"a b": {"v"}}}, nil},
		{"pseudo header", DialRequest{Header: http.Header{":path": {"/"}}}, nil},
		{"connection header", DialRequest{Header: http.Header{"connection": {"close"}}}, nil},
		{"transfer-encoding", DialRequest{Header: http.Header{"Transfer-Encoding": {"chunked"}}}, nil},
		{"host", DialRequest{Header: http.Header{"Host": {"x"}}}, nil},
		{"newline in value", DialRequest{Header: http.Header{"X": {"a\nb"}}}, nil},
		{"NUL in baggage", DialRequest{Baggage: "a\x00"}, nil},
		{"leading space in traceparent", DialRequest{Traceparent: " 00"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := buildHeader(&tt.req)
			if tt.want == nil {
				if !errors.Is(err, ErrBadHeader) {
					t.Fatalf("buildHeader = %v, %v; want ErrBadHeader", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("buildHeader = %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if g := got[k]; len(g) != len(v) || (len(v) > 0 && g[0] != v[0]) {
					t.Errorf("header %s = %q, want %q", k, g, v)
				}
			}
		})
	}
}

func TestParseConnect(t *testing.T) {
	tests := []struct {
		method, authority string
		status            int
	}{
		{"CONNECT", "10.0.0.1:80", 200},
		{"CONNECT", "[fd00::1]:80", 200},
		{"GET", "10.0.0.1:80", 400},
		{"connect", "10.0.0.1:80", 400},
		{"CONNECT", "svc.ns.svc.cluster.local:80", 400},
		{"CONNECT", "", 400},
	}
	for _, tt := range tests {
		target, status, err := parseConnect(tt.method, tt.authority)
		if status != tt.status || (status == 200) != (err == nil) {
			t.Errorf("parseConnect(%q, %q) = %v, %d, %v; want %d", tt.method, tt.authority, target, status, err, tt.status)
		}
	}
}

func TestIdentitySet(t *testing.T) {
	a, b := mtlstest.ID(t, serverID), mtlstest.ID(t, otherID)
	if IdentitySet(a, b) != IdentitySet(b, a, b) {
		t.Errorf("IdentitySet depends on order or duplicates: %q vs %q", IdentitySet(a, b), IdentitySet(b, a, b))
	}
	if IdentitySet(a) == IdentitySet(b) || IdentitySet() != "" {
		t.Error("IdentitySet does not tell sets apart")
	}
}

func TestStatusError(t *testing.T) {
	err := Reject(401, errors.New("policy x denies"))
	if err.Error() != "hbone CONNECT answered 401 Unauthorized: policy x denies" {
		t.Errorf("message %q", err)
	}
	if (&StatusError{Code: 503}).Error() != "hbone CONNECT answered 503 Service Unavailable" {
		t.Errorf("client-side message %q", &StatusError{Code: 503})
	}
}
