package envconfig

import (
	"net/netip"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestReader(t *testing.T) {
	env := map[string]string{
		"S": "  value ", "ADDR": "10.0.0.1:80", "BADADDR": "10.0.0.1", "IP": "fd00::1", "BADIP": "nope",
		"D": "250ms", "SECS": "30", "BADD": "soon", "B": "true", "BADB": "yes", "LVL": "debug", "BADLVL": "loud",
	}
	r := New(func(k string) string { return env[k] })
	if got := r.String("S", "d"); got != "value" {
		t.Errorf("String = %q, want the trimmed value", got)
	}
	if got := r.String("MISSING", "d"); got != "d" {
		t.Errorf("String of an unset name = %q, want the default", got)
	}
	if got := r.AddrPort("ADDR", ""); got != netip.MustParseAddrPort("10.0.0.1:80") {
		t.Errorf("AddrPort = %v", got)
	}
	if got := r.AddrPort("MISSING", "0.0.0.0:15008"); got.Port() != 15008 {
		t.Errorf("AddrPort default = %v", got)
	}
	if got := r.Addr("IP"); got != netip.MustParseAddr("fd00::1") {
		t.Errorf("Addr = %v", got)
	}
	if got := r.Duration("D", 0); got != 250*time.Millisecond {
		t.Errorf("Duration = %v", got)
	}
	if got := r.Duration("SECS", 0); got != 30*time.Second {
		t.Errorf("Duration of plain seconds = %v, want 30s", got)
	}
	if got := r.Duration("MISSING", time.Minute); got != time.Minute {
		t.Errorf("Duration default = %v", got)
	}
	if !r.Bool("B", false) || r.Bool("MISSING", false) {
		t.Error("Bool: want true for B and the default for an unset name")
	}
	if got := r.LogLevel("LVL", "info"); got != "debug" {
		t.Errorf("LogLevel = %q", got)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("good values gave errors: %v", err)
	}

	r.Required("REQ")
	r.AddrPort("BADADDR", "")
	r.Addr("BADIP")
	r.Duration("BADD", 0)
	r.Bool("BADB", false)
	r.LogLevel("BADLVL", "info")
	err := r.Err()
	if err == nil {
		t.Fatal("bad values gave no error")
	}
	for _, want := range []string{"REQ is required", `BADADDR="10.0.0.1": want ip:port`, `BADIP="nope": want an IP address`,
		`BADD="soon"`, `BADB="yes": want true or false`, `BADLVL="loud": want debug, info, warn or error`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %q", err, want)
		}
	}
}

func TestWorkers(t *testing.T) {
	for _, tt := range []struct{ configured, available, want int }{
		{0, 1, 1}, {0, 2, 1}, {0, 3, 1}, {0, 4, 2}, {0, 64, 2}, // half, at least 1, at most 2
		{3, 2, 3}, {1, 64, 1}, // configured rules
	} {
		if got := Workers(tt.configured, tt.available); got != tt.want {
			t.Errorf("Workers(%d, %d) = %d, want %d", tt.configured, tt.available, got, tt.want)
		}
	}
}

func TestCount(t *testing.T) {
	vals := map[string]string{"N": "4", "ZERO": "0", "WORD": "four"}
	r := New(func(k string) string { return vals[k] })
	if got := r.Count("N", 1); got != 4 {
		t.Errorf("Count(N) = %d, want 4", got)
	}
	if got := r.Count("UNSET", 7); got != 7 {
		t.Errorf("Count(UNSET) = %d, want the default 7", got)
	}
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	r.Count("ZERO", 1)
	r.Count("WORD", 1)
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "ZERO") || !strings.Contains(err.Error(), "WORD") {
		t.Errorf("errors %v, want both ZERO and WORD named", err)
	}
}

func TestApplyGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOGC" {
				return v
			}
			return ""
		}
	}
	if got := ApplyGCPercent(env(""), 50); got != 50 || debug.SetGCPercent(50) != 50 {
		t.Errorf("GOGC unset: in effect %d, want 50", got)
	}
	// GOGC set: the runtime read it at start; what is in effect stays.
	debug.SetGCPercent(80)
	if got := ApplyGCPercent(env("80"), 50); got != 80 || debug.SetGCPercent(80) != 80 {
		t.Errorf("GOGC=80: in effect %d, want 80 kept", got)
	}
}
