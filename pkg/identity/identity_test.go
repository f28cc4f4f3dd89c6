package identity

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		wantErr error // nil means valid
		ns, sa  string
	}{
		{"spiffe://cluster.local/ns/default/sa/bookinfo-productpage", nil, "default", "bookinfo-productpage"},
		{"spiffe://example.org/ns/istio-system/sa/ztunnel", nil, "istio-system", "ztunnel"},
		{"spiffe://td/ns/a/sa/my.account", nil, "a", "my.account"},
		{"spiffe://cluster.local/ns/default", ErrNotWorkload, "", ""},
		{"spiffe://cluster.local/ns/default/sa/x/extra", ErrNotWorkload, "", ""},
		{"spiffe://cluster.local/sa/x/ns/default", ErrNotWorkload, "", ""},
		{"spiffe://cluster.local/ns/Default/sa/x", ErrInvalidName, "", ""},
		{"spiffe://cluster.local/ns/-a/sa/x", ErrInvalidName, "", ""},
		{"spiffe://cluster.local/ns/a/sa/x_y", ErrInvalidName, "", ""},
		{"spiffe://cluster.local", ErrNotWorkload, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			id, err := Parse(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Parse(%q) err = %v, want %v", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if id.Namespace() != tt.ns || id.ServiceAccount() != tt.sa || id.String() != tt.in {
				t.Errorf("Parse(%q) = ns %q sa %q string %q", tt.in, id.Namespace(), id.ServiceAccount(), id)
			}
		})
	}
	for _, bad := range []string{"", "http://cluster.local/ns/a/sa/b", "spiffe://UPPER/ns/a/sa/b", "spiffe://td/ns/a/sa/b?q=1", "spiffe://td/ns//sa/b"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", bad)
		}
	}
}

func TestNew(t *testing.T) {
	id, err := New("cluster.local", "ns1", "sa1")
	if err != nil || id.String() != "spiffe://cluster.local/ns/ns1/sa/sa1" || id.Principal() != "cluster.local/ns/ns1/sa/sa1" {
		t.Fatalf("New = %v, %v", id, err)
	}
	if id.TrustDomain().Name() != "cluster.local" || id.SPIFFE().String() != id.String() {
		t.Errorf("TrustDomain/SPIFFE mismatch: %v %v", id.TrustDomain(), id.SPIFFE())
	}
	for _, in := range [][3]string{{"Bad TD", "a", "b"}, {"td", "", "b"}, {"td", "a", "B"}, {"td", strings.Repeat("a", 254), "b"}} {
		if _, err := New(in[0], in[1], in[2]); err == nil {
			t.Errorf("New%q succeeded, want an error", in)
		}
	}
	if !(ID{}).IsZero() || (ID{}).String() != "" {
		t.Error("zero ID is not zero")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/default/sa/default", "spiffe://td/ns/a/sa/b", "spiffe://x/ns/a", "", "spiffe://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		// A parsed identity round-trips and rebuilds from its parts.
		again, err := New(id.TrustDomain().Name(), id.Namespace(), id.ServiceAccount())
		if err != nil || again != id || again.String() != s {
			t.Fatalf("Parse(%q) = %v, but New from its parts = %v, %v", s, id, again, err)
		}
	})
}
