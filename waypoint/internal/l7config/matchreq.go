package l7config

import (
	"net/url"
	"strings"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

// Matches reports whether r matches the route: path, then every header, then every
// query parameter.
func (rt *Route) Matches(r *match.Request) bool {
	m := &rt.Match
	p := r.URLPath()
	switch m.PathKind {
	case PathPrefix:
		if !hasPrefix(p, m.Path, m.CaseInsensitive) {
			return false
		}
	case PathExact:
		if !(p == m.Path || m.CaseInsensitive && strings.EqualFold(p, m.Path)) {
			return false
		}
	case PathRegex:
		if !m.Regex.MatchString(p) {
			return false
		}
	case PathSeparatedPrefix:
		if !hasPrefix(p, m.Path, m.CaseInsensitive) || len(p) > len(m.Path) && p[len(m.Path)] != '/' {
			return false
		}
	}
	for _, h := range m.Headers {
		if !h.Match(r) {
			return false
		}
	}
	if len(m.Query) > 0 {
		q := query(r.Path)
		for _, qm := range m.Query {
			vs, ok := q[qm.Name]
			if !ok {
				return false
			}
			if qm.Value != nil && !qm.Value.Match(vs[0]) {
				return false
			}
		}
	}
	return true
}

func hasPrefix(s, prefix string, fold bool) bool {
	if fold {
		return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
	}
	return strings.HasPrefix(s, prefix)
}

func query(path string) url.Values {
	_, q, ok := strings.Cut(path, "?")
	if !ok {
		return url.Values{}
	}
	if i := strings.IndexByte(q, '#'); i >= 0 {
		q = q[:i]
	}
	v, _ := url.ParseQuery(q)
	return v
}
