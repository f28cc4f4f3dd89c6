package hbone

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Forwarded is the part of an RFC 7239 "forwarded" header that HBONE uses: ztunnel sends
// `for="<client ip:port>"` (and, through a waypoint, `;host=<service>`) so the far side
// learns the original client.
type Forwarded struct {
	// For is the original client. Its port is 0 when the element named none (or an
	// obfuscated one); it is the zero AddrPort for "unknown" and obfuscated nodes.
	For netip.AddrPort
	// Host is the host parameter, "" if absent.
	Host string
}

// ErrBadForwarded: a forwarded header that does not follow RFC 7239's syntax.
var ErrBadForwarded = errors.New("malformed forwarded header")

// String formats f as one forwarded-element, quoting for= always (as ztunnel does, and as
// IPv6 requires: for="[fd00::1]:80") and host= when it is not a token. The zero Forwarded
// formats as "".
func (f Forwarded) String() string {
	var b strings.Builder
	if f.For.IsValid() {
		b.WriteString(`for="`)
		switch {
		case f.For.Port() != 0:
			b.WriteString(f.For.String())
		case f.For.Addr().Is6():
			b.WriteString("[" + f.For.Addr().String() + "]")
		default:
			b.WriteString(f.For.Addr().String())
		}
		b.WriteByte('"')
	}
	if f.Host != "" {
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		b.WriteString("host=")
		if isToken(f.Host) {
			b.WriteString(f.Host)
		} else {
			b.WriteString(quote(f.Host))
		}
	}
	return b.String()
}

// ParseForwarded parses the first forwarded-element of a forwarded header value (the one
// the first proxy added, which names the original client) and checks the syntax of the
// rest. Parameters other than for and host are ignored; a repeated parameter is an error.
func ParseForwarded(v string) (Forwarded, error) {
	var out Forwarded
	p := fwdParser{s: v}
	seen := map[string]bool{}
	for {
		p.skipSpace()
		name, ok := p.token()
		if !ok || !p.consume('=') {
			return Forwarded{}, p.fail("want parameter=value")
		}
		val, ok := p.value()
		if !ok {
			return Forwarded{}, p.fail("bad value of " + name)
		}
		name = strings.ToLower(name)
		if seen[name] {
			return Forwarded{}, p.fail("repeated parameter " + name)
		}
		seen[name] = true
		if !p.pastFirst {
			switch name {
			case "for":
				node, err := parseNode(val)
				if err != nil {
					return Forwarded{}, fmt.Errorf("forwarded %q: for: %w", v, err)
				}
				out.For = node
			case "host":
				out.Host = val
			}
		}
		p.skipSpace()
		switch {
		case p.done():
			return out, nil
		case p.consume(';'):
		case p.consume(','):
			p.pastFirst = true
			clear(seen)
		default:
			return Forwarded{}, p.fail("want ';' or ','")
		}
	}
}

// parseNode parses an RFC 7239 node: an IPv4 address or bracketed IPv6 address with an
// optional port, "unknown", or an obfuscated identifier ("_…"), which yield no address.
func parseNode(s string) (netip.AddrPort, error) {
	if strings.EqualFold(s, "unknown") || strings.HasPrefix(s, "_") {
		return netip.AddrPort{}, nil
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.AddrPort{}, fmt.Errorf("node %q: unclosed bracket: %w", s, ErrBadForwarded)
		}
		host, port = s[1:end], s[end+1:]
	} else if i := strings.IndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i:]
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || addr.Zone() != "" || (addr.Is6() && !strings.HasPrefix(s, "[")) || (addr.Is4() && strings.HasPrefix(s, "[")) {
		return netip.AddrPort{}, fmt.Errorf("node %q: not an IP address: %w", s, ErrBadForwarded)
	}
	if port == "" {
		return netip.AddrPortFrom(addr, 0), nil
	}
	if port[0] != ':' || len(port) == 1 {
		return netip.AddrPort{}, fmt.Errorf("node %q: bad port: %w", s, ErrBadForwarded)
	}
	if port[1] == '_' { // obfuscated port
		return netip.AddrPortFrom(addr, 0), nil
	}
	n, err := strconv.ParseUint(port[1:], 10, 16)
	if err != nil || len(port) > 6 {
		return netip.AddrPort{}, fmt.Errorf("node %q: bad port: %w", s, ErrBadForwarded)
	}
	return netip.AddrPortFrom(addr, uint16(n)), nil
}

type fwdParser struct {
	s         string
	i         int
	pastFirst bool
}

func (p *fwdParser) done() bool { return p.i >= len(p.s) }

func (p *fwdParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *fwdParser) consume(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *fwdParser) token() (string, bool) {
	start := p.i
	for p.i < len(p.s) && isTchar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i], p.i > start
}

// value reads a token or a quoted-string and returns it unquoted.
func (p *fwdParser) value() (string, bool) {
	if !p.consume('"') {
		return p.token()
	}
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		p.i++
		switch {
		case c == '"':
			return b.String(), true
		case c == '\\':
			if p.i >= len(p.s) || !isQuotable(p.s[p.i]) {
				return "", false
			}
			b.WriteByte(p.s[p.i])
			p.i++
		case isQdtext(c):
			b.WriteByte(c)
		default:
			return "", false
		}
	}
	return "", false
}

func (p *fwdParser) fail(what string) error {
	return fmt.Errorf("forwarded %q at byte %d: %s: %w", p.s, p.i, what, ErrBadForwarded)
}

// isTchar reports whether c is an RFC 9110 token character.
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return s != ""
}

// isQdtext reports whether c may appear unescaped in a quoted-string.
func isQdtext(c byte) bool {
	return c == '\t' || c == ' ' || c == 0x21 || (0x23 <= c && c <= 0x5b) || (0x5d <= c && c <= 0x7e) || c >= 0x80
}

// isQuotable reports whether c may follow a backslash in a quoted-string.
func isQuotable(c byte) bool { return c == '\t' || c == ' ' || (0x21 <= c && c <= 0x7e) || c >= 0x80 }

// quote returns s as a quoted-string, escaping '"' and '\'. Bytes that a quoted-string
// cannot carry (controls) are dropped.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case isQdtext(c):
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
