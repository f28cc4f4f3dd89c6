package secrets

import (
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/secrets/secretstest"
)

func TestNewValidatesOptions(t *testing.T) {
	ca := secretstest.New(t)
	base := func(edit func(*Options)) Options {
		o := Options{Signer: ca, Roots: ca.Roots}
		if edit != nil {
			edit(&o)
		}
		return o
	}
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		check   func(t *testing.T, o Options)
	}{
		{name: "defaults", opts: base(nil), check: func(t *testing.T, o Options) {
			if o.TTL != DefaultTTL || o.MinBackoff != DefaultMinBackoff || o.MaxBackoff != DefaultMaxBackoff ||
				o.MaxFetches != DefaultMaxFetches || o.Log == nil {
				t.Errorf("defaults not applied: %+v", o)
			}
			if o.maxBackground() != DefaultMaxFetches/2 {
				t.Errorf("maxBackground = %d", o.maxBackground())
			}
		}},
		{name: "one fetch still serves the background", opts: base(func(o *Options) { o.MaxFetches = 1 }), check: func(t *testing.T, o Options) {
			if o.maxBackground() != 1 {
				t.Errorf("maxBackground = %d, want 1", o.maxBackground())
			}
		}},
		{name: "large MinBackoff raises default MaxBackoff", opts: base(func(o *Options) { o.MinBackoff = 5 * time.Minute }), check: func(t *testing.T, o Options) {
			if o.MaxBackoff != 5*time.Minute {
				t.Errorf("MaxBackoff = %s", o.MaxBackoff)
			}
		}},
		{name: "no signer", opts: base(func(o *Options) { o.Signer = nil }), wantErr: "Signer is required"},
		{name: "no roots", opts: base(func(o *Options) { o.Roots = nil }), wantErr: "Roots is required"},
		{name: "negative TTL", opts: base(func(o *Options) { o.TTL = -time.Second }), wantErr: "negative TTL"},
		{name: "negative backoff", opts: base(func(o *Options) { o.MaxBackoff = -time.Second }), wantErr: "negative backoff"},
		{name: "min above max", opts: base(func(o *Options) { o.MinBackoff, o.MaxBackoff = time.Minute, time.Second }), wantErr: "exceeds MaxBackoff"},
		{name: "negative MaxFetches", opts: base(func(o *Options) { o.MaxFetches = -1 }), wantErr: "negative MaxFetches"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New: %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if tt.check != nil {
				tt.check(t, m.opts)
			}
		})
	}
}
