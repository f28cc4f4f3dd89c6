package authz

import (
	"fmt"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/match"
)

// tri is a three-valued result: without HTTP attributes an HTTP condition is unknown.
type tri uint8

const (
	no tri = iota
	yes
	unknown
)

// pred is a compiled permission or principal.
type pred interface {
	eval(a *Attributes) tri
}

func boolTri(b bool) tri {
	if b {
		return yes
	}
	return no
}

// and: any no is no; unknowns are ignored (Istio drops HTTP-only fields over TCP); all
// unknown is unknown.
func and(vs ...tri) tri {
	r := unknown
	for _, v := range vs {
		switch v {
		case no:
			return no
		case yes:
			r = yes
		}
	}
	return r
}

// or: any yes is yes; otherwise an unknown makes it unknown (over TCP a DENY then matches
// more broadly, never less).
func or(ps []pred, a *Attributes) tri {
	r := no
	for _, p := range ps {
		switch p.eval(a) {
		case yes:
			return yes
		case unknown:
			r = unknown
		}
	}
	return r
}

type (
	anyPred  struct{}
	andPred  []pred
	orPred   []pred
	notPred  struct{ p pred }
	httpPred struct{ f func(*match.Request) bool }
	portPred struct{ lo, hi uint32 } // [lo, hi)
	ipPred   struct {
		prefix netip.Prefix
		dst    bool
	}
	principalPred struct{ m *match.String } // nil: any authenticated peer
	constPred     bool
)

func (anyPred) eval(*Attributes) tri     { return yes }
func (c constPred) eval(*Attributes) tri { return boolTri(bool(c)) }
func (p andPred) eval(a *Attributes) tri {
	vs := make([]tri, len(p))
	for i, q := range p {
		vs[i] = q.eval(a)
	}
	return and(vs...)
}
func (p orPred) eval(a *Attributes) tri { return or(p, a) }
func (p notPred) eval(a *Attributes) tri {
	switch p.p.eval(a) {
	case yes:
		return no
	case no:
		return yes
	}
	return unknown
}
func (p httpPred) eval(a *Attributes) tri {
	if !a.HTTP {
		return unknown
	}
	return boolTri(p.f(&a.Request))
}
func (p portPred) eval(a *Attributes) tri {
	port := uint32(a.DestinationPort)
	return boolTri(port >= p.lo && port < p.hi)
}
func (p ipPred) eval(a *Attributes) tri {
	ip := a.SourceIP
	if p.dst {
		ip = a.DestinationIP
	}
	return boolTri(ip.IsValid() && p.prefix.Contains(ip.Unmap()))
}
func (p principalPred) eval(a *Attributes) tri {
	if a.Principal == "" {
		return no
	}
	return boolTri(p.m == nil || p.m.Match(a.Principal))
}

// needsHTTP reports whether p contains an HTTP-only condition.
func needsHTTP(p pred) bool {
	switch q := p.(type) {
	case httpPred:
		return true
	case andPred:
		for _, x := range q {
			if needsHTTP(x) {
				return true
			}
		}
	case orPred:
		for _, x := range q {
			if needsHTTP(x) {
				return true
			}
		}
	case notPred:
		return needsHTTP(q.p)
	}
	return false
}

func compilePermission(p *rbacv3.Permission) (pred, error) {
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return anyPred{}, nil
	case *rbacv3.Permission_AndRules:
		var out andPred
		for _, x := range r.AndRules.GetRules() {
			c, err := compilePermission(x)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	case *rbacv3.Permission_OrRules:
		var out orPred
		for _, x := range r.OrRules.GetRules() {
			c, err := compilePermission(x)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	case *rbacv3.Permission_NotRule:
		c, err := compilePermission(r.NotRule)
		if err != nil {
			return nil, err
		}
		return notPred{c}, nil
	case *rbacv3.Permission_Header:
		h, err := match.CompileHeader(r.Header)
		if err != nil {
			return nil, err
		}
		return httpPred{h.Match}, nil
	case *rbacv3.Permission_UrlPath:
		s, err := match.CompileString(r.UrlPath.GetPath())
		if err != nil {
			return nil, fmt.Errorf("url_path: %w", err)
		}
		return httpPred{func(req *match.Request) bool { return s.Match(req.URLPath()) }}, nil
	case *rbacv3.Permission_DestinationPort:
		return portPred{r.DestinationPort, r.DestinationPort + 1}, nil
	case *rbacv3.Permission_DestinationPortRange:
		return portPred{uint32(r.DestinationPortRange.GetStart()), uint32(r.DestinationPortRange.GetEnd())}, nil
	case *rbacv3.Permission_DestinationIp:
		pf, err := cidr(r.DestinationIp)
		if err != nil {
			return nil, err
		}
		return ipPred{prefix: pf, dst: true}, nil
	case *rbacv3.Permission_Metadata:
		// Dynamic metadata (JWT claims from RequestAuthentication) is never set here.
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		return notIf(r.Metadata.GetInvert(), constPred(false)), nil
	case nil:
		return nil, fmt.Errorf("permission has no rule")
	default:
		return nil, fmt.Errorf("unsupported permission %T", r)
	}
}

func compilePrincipal(p *rbacv3.Principal) (pred, error) {
	switch r := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return anyPred{}, nil
	case *rbacv3.Principal_AndIds:
		var out andPred
		for _, x := range r.AndIds.GetIds() {
			c, err := compilePrincipal(x)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	case *rbacv3.Principal_OrIds:
		var out orPred
		for _, x := range r.OrIds.GetIds() {
			c, err := compilePrincipal(x)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	case *rbacv3.Principal_NotId:
		c, err := compilePrincipal(r.NotId)
		if err != nil {
			return nil, err
		}
		return notPred{c}, nil
	case *rbacv3.Principal_Authenticated_:
		if r.Authenticated.GetPrincipalName() == nil {
			return principalPred{}, nil
		}
		s, err := match.CompileString(r.Authenticated.GetPrincipalName())
		if err != nil {
			return nil, fmt.Errorf("authenticated principal: %w", err)
		}
		return principalPred{&s}, nil
	case *rbacv3.Principal_FilterState:
		if r.FilterState.GetKey() != PeerPrincipalKey {
			return nil, fmt.Errorf("filter state key %q is not supported (only %s)", r.FilterState.GetKey(), PeerPrincipalKey)
		}
		s, err := match.CompileString(r.FilterState.GetStringMatch())
		if err != nil {
			return nil, fmt.Errorf("filter state %s: %w", PeerPrincipalKey, err)
		}
		return principalPred{&s}, nil
	case *rbacv3.Principal_SourceIp:
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		return ipCompile(r.SourceIp)
	case *rbacv3.Principal_DirectRemoteIp:
		return ipCompile(r.DirectRemoteIp)
	case *rbacv3.Principal_RemoteIp:
		return ipCompile(r.RemoteIp)
	case *rbacv3.Principal_Header:
		h, err := match.CompileHeader(r.Header)
		if err != nil {
			return nil, err
		}
		return httpPred{h.Match}, nil
	case *rbacv3.Principal_UrlPath:
		s, err := match.CompileString(r.UrlPath.GetPath())
		if err != nil {
			return nil, fmt.Errorf("url_path: %w", err)
		}
		return httpPred{func(req *match.Request) bool { return s.Match(req.URLPath()) }}, nil
	case *rbacv3.Principal_Metadata:
		//lint:ignore SA1019 Envoy still accepts this deprecated form; a config using it is served, not refused
		return notIf(r.Metadata.GetInvert(), constPred(false)), nil
	case nil:
		return nil, fmt.Errorf("principal has no identifier")
	default:
		return nil, fmt.Errorf("unsupported principal %T", r)
	}
}

func notIf(invert bool, p pred) pred {
	if invert {
		return notPred{p}
	}
	return p
}

func ipCompile(c *corev3.CidrRange) (pred, error) {
	pf, err := cidr(c)
	if err != nil {
		return nil, err
	}
	return ipPred{prefix: pf}, nil
}

func cidr(c *corev3.CidrRange) (netip.Prefix, error) {
	ip, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %q: %w", c.GetAddressPrefix(), err)
	}
	bits := ip.BitLen()
	if c.GetPrefixLen() != nil {
		bits = int(c.GetPrefixLen().GetValue())
	}
	pf, err := ip.Unmap().Prefix(min(bits, ip.Unmap().BitLen()))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %s/%d: %w", ip, bits, err)
	}
	return pf, nil
}
