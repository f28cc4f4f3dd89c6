package testenv

import (
	"strings"
	"testing"
)

func TestPrivilegeGap(t *testing.T) {
	const all = ^uint64(0)
	netAdmin := uint64(1) << CapNetAdmin
	tests := []struct {
		name string
		euid int
		eff  uint64
		caps []Capability
		want string // substring of the reason; "" means nothing missing
	}{
		{"root with all caps", 0, all, []Capability{CapNetAdmin, CapBPF}, ""},
		{"root, no caps asked", 0, 0, nil, ""},
		{"not root", 1000, all, nil, "root (euid 1000)"},
		{"root without CAP_BPF", 0, netAdmin, []Capability{CapNetAdmin, CapBPF}, "needs CAP_BPF"},
		{"nothing", 1000, 0, []Capability{CapNetAdmin}, "root (euid 1000), CAP_NET_ADMIN"},
		{"capability beyond the mask", 0, all, []Capability{64}, "CAP_64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := privilegeGap(tt.euid, tt.eff, tt.caps)
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("privilegeGap = %q, want it to contain %q", got, tt.want)
			}
		})
	}
}

func TestParseCapEff(t *testing.T) {
	status := "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n"
	got, err := parseCapEff(strings.NewReader(status))
	if err != nil || got != 0x1ffffffffff {
		t.Fatalf("parseCapEff = %#x, %v; want 0x1ffffffffff", got, err)
	}
	if _, err := parseCapEff(strings.NewReader("Name:\tcat\n")); err == nil {
		t.Error("parseCapEff without a CapEff line: want an error")
	}
	if _, err := parseCapEff(strings.NewReader("CapEff:\tzz\n")); err == nil {
		t.Error("parseCapEff with a malformed mask: want an error")
	}
}

func TestInCI(t *testing.T) {
	for v, want := range map[string]bool{"true": true, "1": true, "TRUE": true, "false": false, "": false, "yes-please": false} {
		t.Setenv("CI", v)
		if got := InCI(); got != want {
			t.Errorf("CI=%q: InCI() = %v, want %v", v, got, want)
		}
	}
}

// TestSkipOrFail runs SkipOrFail against a recording TB, in and out of CI.
func TestSkipOrFail(t *testing.T) {
	for _, ci := range []string{"true", ""} {
		t.Setenv("CI", ci)
		rec := &recorder{TB: t}
		func() {
			defer func() { _ = recover() }() // Skip and Fatal end the goroutine in real TBs; ours panics
			SkipOrFail(rec, "no widget")
		}()
		if ci == "true" && (!rec.failed || rec.skipped) {
			t.Errorf("CI=true: failed=%v skipped=%v, want a failure", rec.failed, rec.skipped)
		}
		if ci == "" && (rec.failed || !rec.skipped) {
			t.Errorf("outside CI: failed=%v skipped=%v, want a skip", rec.failed, rec.skipped)
		}
	}
}

// TestRequirePrivilegedHere checks the real capability read: as root (CI) it must pass.
func TestRequirePrivilegedHere(t *testing.T) {
	RequirePrivileged(t, CapNetAdmin, CapBPF)
	eff, err := effectiveCaps()
	if err != nil || eff&(1<<CapNetAdmin) == 0 {
		t.Fatalf("RequirePrivileged let the test run, but CapEff = %#x, %v", eff, err)
	}
}

type recorder struct {
	testing.TB
	failed, skipped bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Fatalf(string, ...any) { r.failed = true; panic("fatal") }
func (r *recorder) Skip(...any)           { r.skipped = true; panic("skip") }
