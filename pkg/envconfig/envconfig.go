// Package envconfig reads a data-plane process's settings from environment variables, the
// way Istio's proxies are configured: each value is trimmed, an empty one takes its default,
// and every bad value is collected (named, with what was wanted) so one start reports them
// all. It parses values; it knows no setting of any component, which keep their own names,
// defaults and cross-field checks.
package envconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Reader reads settings through getenv and collects their errors.
type Reader struct {
	getenv func(string) string
	errs   []error
}

// New returns a Reader over getenv (os.Getenv, or a map's lookup in tests).
func New(getenv func(string) string) *Reader { return &Reader{getenv: getenv} }

// Fail records an error of the caller's own checks.
func (r *Reader) Fail(err error) { r.errs = append(r.errs, err) }

// Err joins every recorded error, or is nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

// String is the trimmed value of name, or def if it is empty.
func (r *Reader) String(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

// Required is the value of name; empty is an error.
func (r *Reader) Required(name string) string {
	v := r.String(name, "")
	if v == "" {
		r.Fail(fmt.Errorf("%s is required", name))
	}
	return v
}

// AddrPort parses name (or def) as ip:port.
func (r *Reader) AddrPort(name, def string) netip.AddrPort {
	v := r.String(name, def)
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		r.Fail(fmt.Errorf("%s=%q: want ip:port: %w", name, v, err))
	}
	return ap
}

// Addr parses name as an IP address; empty gives the zero Addr (use Required to insist).
func (r *Reader) Addr(name string) netip.Addr {
	v := r.String(name, "")
	if v == "" {
		return netip.Addr{}
	}
	ip, err := netip.ParseAddr(v)
	if err != nil {
		r.Fail(fmt.Errorf("%s=%q: want an IP address", name, v))
	}
	return ip
}

// Duration parses name as a Go duration, or as plain seconds as Istio writes them.
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if secs, serr := strconv.Atoi(v); serr == nil {
			return time.Duration(secs) * time.Second
		}
		r.Fail(fmt.Errorf("%s=%q: %w", name, v, err))
	}
	return d
}

// Bool parses name as true or false.
func (r *Reader) Bool(name string, def bool) bool {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.Fail(fmt.Errorf("%s=%q: want true or false", name, v))
	}
	return b
}

// LogLevel is name (or def) if it is debug, info, warn or error.
func (r *Reader) LogLevel(name, def string) string {
	v := r.String(name, def)
	switch v {
	case "debug", "info", "warn", "error":
	default:
		r.Fail(fmt.Errorf("%s=%q: want debug, info, warn or error", name, v))
	}
	return v
}

// Count parses name as a positive integer; unset is def.
func (r *Reader) Count(name string, def int) int {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		r.Fail(fmt.Errorf("%s=%q: want a positive integer", name, v))
		return def
	}
	return n
}
