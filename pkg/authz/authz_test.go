package authz_test

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/authz"
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"istio.io/istio/pkg/workloadapi/security"
)

const (
	root  = authz.DefaultRootNamespace
	allow = security.Action_ALLOW
	deny  = security.Action_DENY
	sleep = "cluster.local/ns/default/sa/sleep"
)

// Policy builders. Istio's names: an Authorization has rules (security.Group, ORed), a rule
// has clauses (security.Rules, ANDed), a clause has matches (security.Match, ORed).

func pol(ns, name string, scope security.Scope, a security.Action, rules ...*security.Group) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: ns, Scope: scope, Action: a, Groups: rules}
}

func global(name string, a security.Action, rules ...*security.Group) *security.Authorization {
	return pol(root, name, security.Scope_GLOBAL, a, rules...)
}

func nsPol(ns, name string, a security.Action, rules ...*security.Group) *security.Authorization {
	return pol(ns, name, security.Scope_NAMESPACE, a, rules...)
}

func selPol(ns, name string, a security.Action, rules ...*security.Group) *security.Authorization {
	return pol(ns, name, security.Scope_WORKLOAD_SELECTOR, a, rules...)
}

func dry(a *security.Authorization) *security.Authorization { a.DryRun = true; return a }

func rule(clauses ...*security.Rules) *security.Group { return &security.Group{Rules: clauses} }

func clause(ms ...*security.Match) *security.Rules { return &security.Rules{Matches: ms} }

// when is a policy body of one rule with one clause holding m.
func when(m *security.Match) *security.Group { return rule(clause(m)) }

func sm(s ...*security.StringMatch) []*security.StringMatch { return s }

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

func prefix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: s}}
}

func suffix(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: s}}
}

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{}}
}

func sa(ns, name string) []*security.ServiceAccountMatch {
	return []*security.ServiceAccountMatch{{Namespace: ns, ServiceAccount: name}}
}

// cidr builds an Address the way istiod does (stringToIP): address bytes and prefix length.
func cidr(s string) []*security.Address {
	p := netip.MustParsePrefix(s)
	return []*security.Address{{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}}
}

// strictPortPermissive is PeerAuthentication STRICT with port 9090 PERMISSIVE as istiod
// compiles it (convertPeerAuthentication): one DENY rule whose clauses, ANDed, are
// notPrincipals [presence] and notDestinationPorts [9090].
func strictPortPermissive() *security.Authorization {
	return selPol("default", "converted_peer_authentication_strict", deny, rule(
		clause(&security.Match{NotPrincipals: sm(presence())}),
		clause(&security.Match{NotDestinationPorts: []uint32{9090}}),
	))
}

// Connection builders: sleep in default calling 10.0.1.1:8080 in namespace default.

type conn struct{ authz.Connection }

func fromTD(td, ns, name string) conn {
	id, err := identity.New(td, ns, name)
	if err != nil {
		panic(err)
	}
	c := plain()
	c.SourceIdentity = id
	return c
}

func from(ns, name string) conn { return fromTD(identity.DefaultTrustDomain, ns, name) }

func plain() conn {
	return conn{authz.Connection{
		SourceIP:             netip.MustParseAddr("10.0.0.1"),
		DestinationIP:        netip.MustParseAddr("10.0.1.1"),
		DestinationPort:      8080,
		DestinationNamespace: "default",
	}}
}

func (c conn) port(p uint16) conn                                 { c.DestinationPort = p; return c }
func (c conn) src(ip string) conn                                 { c.SourceIP = netip.MustParseAddr(ip); return c }
func (c conn) dst(ip string) conn                                 { c.DestinationIP = netip.MustParseAddr(ip); return c }
func (c conn) ns(ns string) conn                                  { c.DestinationNamespace = ns; return c }
func (c conn) listed(k ...string) conn                            { c.DestinationPolicies = k; return c }
func pols(p ...*security.Authorization) []*security.Authorization { return p }

var (
	allowAll = rule()
	denyAll  = rule()
)

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name    string
		pols    []*security.Authorization
		conn    conn
		allowed bool
		policy  string
		dryRun  []string
	}{
		// Precedence (Istio: DENY first, then ALLOW; default allow).
		{"no policies allows", nil, from("default", "sleep"), true, "", nil},
		{"no policies allows plaintext", nil, plain(), true, "", nil},
		{"DENY wins over ALLOW", pols(global("allow-all", allow, allowAll), nsPol("default", "deny-sleep", deny, when(&security.Match{Principals: sm(exact(sleep))}))), from("default", "sleep"), false, "default/deny-sleep", nil},
		{"ALLOW present but none matches denies", pols(nsPol("default", "allow-other", allow, when(&security.Match{Principals: sm(exact("cluster.local/ns/default/sa/other"))}))), from("default", "sleep"), false, "", nil},
		{"matching ALLOW allows and is reported", pols(nsPol("default", "allow-sleep", allow, when(&security.Match{Principals: sm(exact(sleep))}))), from("default", "sleep"), true, "default/allow-sleep", nil},
		{"any one ALLOW policy suffices", pols(nsPol("default", "a", allow, when(&security.Match{DestinationPorts: []uint32{80}})), nsPol("default", "b", allow, when(&security.Match{DestinationPorts: []uint32{8080}}))), from("default", "sleep"), true, "default/b", nil},
		{"non-matching DENY alone keeps default allow", pols(nsPol("default", "deny-ssh", deny, when(&security.Match{DestinationPorts: []uint32{22}}))), from("default", "sleep"), true, "", nil},
		{"non-matching DENY then ALLOW must still match", pols(nsPol("default", "deny-ssh", deny, when(&security.Match{DestinationPorts: []uint32{22}})), nsPol("default", "allow-80", allow, when(&security.Match{DestinationPorts: []uint32{80}}))), from("default", "sleep"), false, "", nil},

		// Policy structure (ztunnel Authorization::matches).
		{"ALLOW with no rules denies all when it is the only ALLOW", pols(nsPol("default", "allow-nothing", allow)), from("default", "sleep"), false, "", nil},
		{"DENY with no rules matches nothing", pols(nsPol("default", "deny-nothing", deny)), from("default", "sleep"), true, "", nil},
		{"ALLOW with no rules does not block another matching ALLOW", pols(nsPol("default", "allow-nothing", allow), nsPol("default", "allow-all", allow, allowAll)), plain(), true, "default/allow-all", nil},
		{"empty rule matches all (ALLOW rules: [{}])", pols(nsPol("default", "allow-all", allow, allowAll)), plain(), true, "default/allow-all", nil},
		{"empty rule matches all (DENY rules: [{}])", pols(nsPol("default", "deny-all", deny, denyAll)), from("default", "sleep"), false, "default/deny-all", nil},
		{"clause with no matches matches all", pols(nsPol("default", "a", allow, rule(clause()))), plain(), true, "default/a", nil},
		{"match with no fields never matches", pols(nsPol("default", "a", allow, when(&security.Match{}))), from("default", "sleep"), false, "", nil},
		{"rules are ORed: the second rule matches", pols(nsPol("default", "a", allow, when(&security.Match{DestinationPorts: []uint32{80}}), when(&security.Match{DestinationPorts: []uint32{8080}}))), from("default", "sleep"), true, "default/a", nil},
		{"clauses are ANDed: one failing clause fails the rule", pols(nsPol("default", "a", allow, rule(clause(&security.Match{Principals: sm(exact(sleep))}), clause(&security.Match{DestinationPorts: []uint32{80}})))), from("default", "sleep"), false, "", nil},
		{"clauses are ANDed: all clauses match (from + to)", pols(nsPol("default", "a", allow, rule(clause(&security.Match{Principals: sm(exact(sleep))}), clause(&security.Match{DestinationPorts: []uint32{8080}})))), from("default", "sleep"), true, "default/a", nil},
		{"matches within a clause are ORed", pols(nsPol("default", "a", allow, rule(clause(&security.Match{Namespaces: sm(exact("a"))}, &security.Match{Namespaces: sm(exact("default"))})))), from("default", "sleep"), true, "default/a", nil},
		{"fields within a match are ANDed", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(exact(sleep)), DestinationPorts: []uint32{80}}))), from("default", "sleep"), false, "", nil},
		{"entries within a field are ORed", pols(nsPol("default", "a", allow, when(&security.Match{DestinationPorts: []uint32{80, 8080}}))), from("default", "sleep"), true, "default/a", nil},

		// Scope.
		{"namespace-scoped applies only to its namespace", pols(nsPol("other", "deny-all", deny, denyAll)), from("default", "sleep"), true, "", nil},
		{"namespace-scoped applies in its namespace", pols(nsPol("default", "deny-all", deny, denyAll)), from("other", "client"), false, "default/deny-all", nil},
		{"namespace-scoped ALLOW elsewhere does not default-deny", pols(nsPol("other", "allow-x", allow, when(&security.Match{DestinationPorts: []uint32{1}}))), from("default", "sleep"), true, "", nil},
		{"selector policy applies only when listed", pols(selPol("default", "deny-all", deny, denyAll)), from("default", "sleep"), true, "", nil},
		{"selector policy applies when listed", pols(selPol("default", "deny-all", deny, denyAll)), from("default", "sleep").listed("default/deny-all"), false, "default/deny-all", nil},
		{"selector ALLOW not listed does not default-deny", pols(selPol("default", "allow-x", allow, when(&security.Match{DestinationPorts: []uint32{1}}))), from("default", "sleep"), true, "", nil},
		{"listed key of an unknown policy is skipped", pols(selPol("default", "deny-all", deny, denyAll)), from("default", "sleep").listed("default/missing"), true, "", nil},
		{"global policy in root namespace applies everywhere", pols(global("deny-all", deny, denyAll)), from("default", "sleep").ns("faraway"), false, root + "/deny-all", nil},
		{"global ALLOW applies everywhere", pols(global("allow-80", allow, when(&security.Match{DestinationPorts: []uint32{80}}))), from("default", "sleep").ns("faraway"), false, "", nil},
		{"root-namespace selector policy applies across namespaces when listed", pols(selPol(root, "deny-all", deny, denyAll)), from("default", "sleep").ns("faraway").listed(root + "/deny-all"), false, root + "/deny-all", nil},
		{"listed namespace policy is evaluated once", pols(dry(nsPol("default", "deny-all", deny, denyAll))), from("default", "sleep").listed("default/deny-all"), true, "", []string{"default/deny-all"}},

		// Principals: compared without "spiffe://".
		{"principals exact matches identity without spiffe://", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(exact(sleep))}))), from("default", "sleep"), true, "default/a", nil},
		{"principals exact with spiffe:// does not match", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(exact("spiffe://" + sleep))}))), from("default", "sleep"), false, "", nil},
		{"principals prefix (ns/default/*)", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(prefix("cluster.local/ns/default/"))}))), from("default", "sleep"), true, "default/a", nil},
		{"principals prefix mismatch", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(prefix("cluster.local/ns/prod/"))}))), from("default", "sleep"), false, "", nil},
		{"principals suffix (*/sa/sleep)", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(suffix("/sa/sleep"))}))), from("default", "sleep"), true, "default/a", nil},
		{"principals suffix mismatch", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(suffix("/sa/other"))}))), from("default", "sleep"), false, "", nil},
		{"principals presence matches any mTLS peer", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(presence())}))), from("other", "client"), true, "default/a", nil},
		{"principals presence does not match plaintext", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(presence())}))), plain(), false, "", nil},
		{"principals empty prefix does not match plaintext", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(prefix(""))}))), plain(), false, "", nil},
		{"principals include the trust domain", pols(nsPol("default", "a", allow, when(&security.Match{Principals: sm(exact(sleep))}))), fromTD("example.org", "default", "sleep"), false, "", nil},
		{"notPrincipals excludes the principal", pols(nsPol("default", "a", allow, when(&security.Match{NotPrincipals: sm(exact(sleep))}))), from("default", "sleep"), false, "", nil},
		{"notPrincipals matches other principals", pols(nsPol("default", "a", allow, when(&security.Match{NotPrincipals: sm(exact(sleep))}))), from("default", "other"), true, "default/a", nil},
		{"notPrincipals exact matches plaintext", pols(nsPol("default", "a", allow, when(&security.Match{NotPrincipals: sm(exact(sleep))}))), plain(), true, "default/a", nil},

		// PeerAuthentication compiled forms.
		{"notPrincipals presence denies plaintext (PeerAuthentication STRICT compiled form)", pols(selPol(root, "istio_converted_static_strict", deny, when(&security.Match{NotPrincipals: sm(presence())}))), plain().listed(root + "/istio_converted_static_strict"), false, root + "/istio_converted_static_strict", nil},
		{"notPrincipals presence allows mTLS (PeerAuthentication STRICT compiled form)", pols(selPol(root, "istio_converted_static_strict", deny, when(&security.Match{NotPrincipals: sm(presence())}))), from("default", "sleep").listed(root + "/istio_converted_static_strict"), true, "", nil},
		{"port-level PERMISSIVE exception allows plaintext on 9090", pols(strictPortPermissive()), plain().port(9090).listed("default/converted_peer_authentication_strict"), true, "", nil},
		{"port-level PERMISSIVE exception still denies plaintext on other ports", pols(strictPortPermissive()), plain().listed("default/converted_peer_authentication_strict"), false, "default/converted_peer_authentication_strict", nil},
		{"port-level PERMISSIVE exception allows mTLS on any port", pols(strictPortPermissive()), from("default", "sleep").listed("default/converted_peer_authentication_strict"), true, "", nil},
		{"port-level PERMISSIVE exception in one match allows plaintext on 9090", pols(selPol("default", "pa", deny, when(&security.Match{NotPrincipals: sm(presence()), NotDestinationPorts: []uint32{9090}}))), plain().port(9090).listed("default/pa"), true, "", nil},
		{"port-level PERMISSIVE exception in one match denies plaintext on 8080", pols(selPol("default", "pa", deny, when(&security.Match{NotPrincipals: sm(presence()), NotDestinationPorts: []uint32{9090}}))), plain().listed("default/pa"), false, "default/pa", nil},
		{"port-level STRICT under PERMISSIVE denies plaintext on that port", pols(selPol("default", "pa", deny, when(&security.Match{NotPrincipals: sm(presence()), DestinationPorts: []uint32{8443}}))), plain().port(8443).listed("default/pa"), false, "default/pa", nil},
		{"port-level STRICT under PERMISSIVE allows plaintext elsewhere", pols(selPol("default", "pa", deny, when(&security.Match{NotPrincipals: sm(presence()), DestinationPorts: []uint32{8443}}))), plain().listed("default/pa"), true, "", nil},

		// Namespaces: the source identity's namespace.
		{"namespaces exact matches source namespace", pols(nsPol("default", "a", allow, when(&security.Match{Namespaces: sm(exact("default"))}))), from("default", "sleep"), true, "default/a", nil},
		{"namespaces mismatch denies", pols(nsPol("default", "a", allow, when(&security.Match{Namespaces: sm(exact("prod"))}))), from("default", "sleep"), false, "", nil},
		{"namespaces prefix", pols(nsPol("default", "a", allow, when(&security.Match{Namespaces: sm(prefix("def"))}))), from("default", "sleep"), true, "default/a", nil},
		{"namespaces suffix", pols(nsPol("default", "a", allow, when(&security.Match{Namespaces: sm(suffix("ult"))}))), from("default", "sleep"), true, "default/a", nil},
		{"namespaces exact does not match plaintext", pols(nsPol("default", "a", allow, when(&security.Match{Namespaces: sm(exact("default"))}))), plain(), false, "", nil},
		{"namespaces presence does not match plaintext", pols(nsPol("default", "a", allow, when(&security.Match{Namespaces: sm(presence())}))), plain(), false, "", nil},
		{"namespaces exact empty matches plaintext (ztunnel matches \"\")", pols(nsPol("default", "a", allow, when(&security.Match{Namespaces: sm(exact(""))}))), plain(), true, "default/a", nil},
		{"notNamespaces DENY denies plaintext", pols(nsPol("default", "d", deny, when(&security.Match{NotNamespaces: sm(exact("default"))}))), plain(), false, "default/d", nil},
		{"notNamespaces DENY spares the listed namespace", pols(nsPol("default", "d", deny, when(&security.Match{NotNamespaces: sm(exact("default"))}))), from("default", "sleep"), true, "", nil},
		{"notNamespaces DENY denies other namespaces", pols(nsPol("default", "d", deny, when(&security.Match{NotNamespaces: sm(exact("default"))}))), from("other", "client"), false, "default/d", nil},

		// Service accounts: {namespace, service_account} of the source identity.
		{"serviceAccounts matches namespace and name", pols(nsPol("default", "a", allow, when(&security.Match{ServiceAccounts: sa("default", "sleep")}))), from("default", "sleep"), true, "default/a", nil},
		{"serviceAccounts requires the namespace too", pols(nsPol("default", "a", allow, when(&security.Match{ServiceAccounts: sa("other", "sleep")}))), from("default", "sleep"), false, "", nil},
		{"serviceAccounts empty namespace is not a wildcard", pols(nsPol("default", "a", allow, when(&security.Match{ServiceAccounts: sa("", "sleep")}))), from("default", "sleep"), false, "", nil},
		{"serviceAccounts ignore the trust domain", pols(nsPol("default", "a", allow, when(&security.Match{ServiceAccounts: sa("default", "sleep")}))), fromTD("example.org", "default", "sleep"), true, "default/a", nil},
		{"serviceAccounts do not match plaintext", pols(nsPol("default", "a", allow, when(&security.Match{ServiceAccounts: sa("default", "sleep")}))), plain(), false, "", nil},
		{"notServiceAccounts excludes the account", pols(nsPol("default", "a", allow, when(&security.Match{NotServiceAccounts: sa("default", "sleep")}))), from("default", "sleep"), false, "", nil},
		{"notServiceAccounts DENY denies plaintext", pols(nsPol("default", "d", deny, when(&security.Match{NotServiceAccounts: sa("default", "sleep")}))), plain(), false, "default/d", nil},

		// Source and destination IPs: CIDR containment.
		{"sourceIps CIDR v4 contains", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("10.0.0.0/24")}))), from("default", "sleep"), true, "default/a", nil},
		{"sourceIps CIDR v4 outside", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("10.0.9.0/24")}))), from("default", "sleep"), false, "", nil},
		{"sourceIps single v4 address (/32)", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("10.0.0.1/32")}))), plain(), true, "default/a", nil},
		{"sourceIps CIDR v4 host bits are masked", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("10.0.0.77/24")}))), plain(), true, "default/a", nil},
		{"sourceIps 0.0.0.0/0 matches any v4", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("0.0.0.0/0")}))), plain().src("203.0.113.9"), true, "default/a", nil},
		{"sourceIps CIDR v6 contains", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("fd00:1::/64")}))), plain().src("fd00:1::5"), true, "default/a", nil},
		{"sourceIps CIDR v6 outside", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("fd00:1::/64")}))), plain().src("fd00:2::5"), false, "", nil},
		{"sourceIps v6 ::/0 does not match a v4 source", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("::/0")}))), plain(), false, "", nil},
		{"sourceIps v4 CIDR matches IPv4-mapped source", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("10.0.0.0/8")}))), plain().src("::ffff:10.0.0.1"), true, "default/a", nil},
		{"sourceIps IPv4-mapped CIDR matches v4 source", pols(nsPol("default", "a", allow, when(&security.Match{SourceIps: cidr("::ffff:10.0.0.0/104")}))), plain(), true, "default/a", nil},
		{"notSourceIps DENY denies outside the CIDR", pols(nsPol("default", "d", deny, when(&security.Match{NotSourceIps: cidr("10.0.0.0/8")}))), plain().src("192.168.1.1"), false, "default/d", nil},
		{"notSourceIps DENY spares the CIDR", pols(nsPol("default", "d", deny, when(&security.Match{NotSourceIps: cidr("10.0.0.0/8")}))), plain(), true, "", nil},
		{"destinationIps CIDR v4 contains", pols(nsPol("default", "a", allow, when(&security.Match{DestinationIps: cidr("10.0.1.0/24")}))), plain(), true, "default/a", nil},
		{"destinationIps CIDR v6 contains", pols(nsPol("default", "a", allow, when(&security.Match{DestinationIps: cidr("fd00::/8")}))), plain().dst("fd12::1"), true, "default/a", nil},
		{"notDestinationIps excludes the address", pols(nsPol("default", "a", allow, when(&security.Match{NotDestinationIps: cidr("10.0.1.1/32")}))), plain(), false, "", nil},

		// Ports.
		{"destinationPorts mismatch denies", pols(nsPol("default", "a", allow, when(&security.Match{DestinationPorts: []uint32{80}}))), plain(), false, "", nil},
		{"notDestinationPorts excludes the port", pols(nsPol("default", "a", allow, when(&security.Match{NotDestinationPorts: []uint32{8080}}))), plain(), false, "", nil},
		{"notDestinationPorts matches other ports", pols(nsPol("default", "a", allow, when(&security.Match{NotDestinationPorts: []uint32{8080}}))), plain().port(81), true, "default/a", nil},

		// Dry run: evaluated, never enforced, reported when it would have changed the result.
		{"dry-run DENY does not deny", pols(dry(nsPol("default", "d", deny, denyAll))), from("default", "sleep"), true, "", []string{"default/d"}},
		{"dry-run DENY that does not match is not reported", pols(dry(nsPol("default", "d", deny, when(&security.Match{DestinationPorts: []uint32{22}})))), from("default", "sleep"), true, "", nil},
		{"dry-run DENY is not reported when already denied", pols(nsPol("default", "d", deny, denyAll), dry(nsPol("default", "dd", deny, denyAll))), from("default", "sleep"), false, "default/d", nil},
		{"dry-run ALLOW does not create default deny", pols(dry(nsPol("default", "a", allow, when(&security.Match{DestinationPorts: []uint32{80}})))), from("default", "sleep"), true, "", []string{"default/a"}},
		{"dry-run ALLOW that matches changes nothing under default allow", pols(dry(nsPol("default", "a", allow, allowAll))), from("default", "sleep"), true, "", nil},
		{"dry-run ALLOW that matches is reported when enforced ALLOWs miss", pols(nsPol("default", "a", allow, when(&security.Match{DestinationPorts: []uint32{80}})), dry(nsPol("default", "b", allow, allowAll))), from("default", "sleep"), false, "", []string{"default/b"}},
		{"dry-run ALLOW cannot override a DENY", pols(nsPol("default", "d", deny, denyAll), dry(nsPol("default", "a", allow, allowAll))), from("default", "sleep"), false, "default/d", nil},
		{"dry-run ALLOW does not count as an applicable ALLOW", pols(dry(nsPol("default", "a", allow, when(&security.Match{DestinationPorts: []uint32{80}}))), nsPol("default", "d", deny, when(&security.Match{DestinationPorts: []uint32{22}}))), plain(), true, "", []string{"default/a"}},
	}
	if len(tests) < 50 {
		t.Fatalf("only %d cases", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := authz.New(tt.pols, authz.Options{})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			d := p.Evaluate(tt.conn.Connection)
			if d.Allowed != tt.allowed || d.Policy != tt.policy || !slices.Equal(d.DryRun, tt.dryRun) {
				t.Errorf("Evaluate = %+v, want allowed %v policy %q dry-run %q", d, tt.allowed, tt.policy, tt.dryRun)
			}
			if d.Reason == "" {
				t.Errorf("Evaluate gave no reason: %+v", d)
			}
		})
	}
}

func TestEvaluateReasons(t *testing.T) {
	p, err := authz.New(pols(
		nsPol("default", "deny-22", deny, when(&security.Match{DestinationPorts: []uint32{22}})),
		nsPol("default", "allow-80", allow, when(&security.Match{DestinationPorts: []uint32{80}})),
	), authz.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		conn   conn
		reason string
	}{
		{"DENY match", plain().port(22), authz.ReasonDenyMatched},
		{"ALLOW match", plain().port(80), authz.ReasonAllowMatched},
		{"no ALLOW matched", plain().port(81), authz.ReasonNoAllowMatched},
		{"no ALLOW applies in another namespace", plain().ns("other"), authz.ReasonNoAllowPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Evaluate(tt.conn.Connection).Reason; got != tt.reason {
				t.Errorf("Reason = %q, want %q", got, tt.reason)
			}
		})
	}
}

func TestNilPoliciesAllow(t *testing.T) {
	var p *authz.Policies
	if d := p.Evaluate(plain().Connection); !d.Allowed || d.Reason != authz.ReasonNoAllowPolicy {
		t.Errorf("nil Policies: %+v", d)
	}
	if p.Len() != 0 || p.Has("a/b") {
		t.Error("nil Policies is not empty")
	}
}

func TestNew(t *testing.T) {
	badMatch := func(m *security.Match) []*security.Authorization {
		return pols(nsPol("default", "bad", allow, when(m)))
	}
	tests := []struct {
		name    string
		pols    []*security.Authorization
		opts    authz.Options
		wantErr string // "" = valid; otherwise a substring of the error
	}{
		{"valid set", pols(global("g", deny, denyAll), nsPol("default", "n", allow, allowAll), selPol("default", "s", allow)), authz.Options{}, ""},
		{"nil resource", pols(nil), authz.Options{}, "authorization 0: nil"},
		{"empty name", pols(nsPol("default", "", allow)), authz.Options{}, `"default/": empty name`},
		{"unknown scope", pols(pol("default", "p", security.Scope(7), allow)), authz.Options{}, `"default/p": unknown scope 7`},
		{"unknown action", pols(pol("default", "p", security.Scope_NAMESPACE, security.Action(5))), authz.Options{}, `"default/p": unknown action 5`},
		{"duplicate key", pols(nsPol("default", "p", allow), selPol("default", "p", deny)), authz.Options{}, `"default/p": duplicate key`},
		{"GLOBAL outside the root namespace", pols(pol("default", "g", security.Scope_GLOBAL, deny)), authz.Options{}, `"default/g": scope GLOBAL outside the root namespace "istio-system"`},
		{"GLOBAL in a configured root namespace", pols(pol("mesh-root", "g", security.Scope_GLOBAL, deny)), authz.Options{RootNamespace: "mesh-root"}, ""},
		{"nil rule", pols(nsPol("default", "p", allow, nil)), authz.Options{}, `"default/p": rule 0: nil`},
		{"nil clause", pols(nsPol("default", "p", allow, rule(nil))), authz.Options{}, `"default/p": rule 0 clause 0: nil`},
		{"nil match", pols(nsPol("default", "p", allow, rule(clause(nil)))), authz.Options{}, `"default/p": rule 0 clause 0 match 0: nil`},
		{"string match without type", badMatch(&security.Match{Principals: sm(&security.StringMatch{})}), authz.Options{}, `"default/bad": rule 0 clause 0 match 0: principals: entry 0: no match type`},
		{"nil service account match", badMatch(&security.Match{NotServiceAccounts: []*security.ServiceAccountMatch{nil}}), authz.Options{}, "not_service_accounts: entry 0: nil"},
		{"address of 5 bytes", badMatch(&security.Match{SourceIps: []*security.Address{{Address: []byte{1, 2, 3, 4, 5}, Length: 8}}}), authz.Options{}, "source_ips: entry 0: address of 5 bytes"},
		{"empty address", badMatch(&security.Match{DestinationIps: []*security.Address{{}}}), authz.Options{}, "destination_ips: entry 0: address of 0 bytes"},
		{"IPv4 prefix length 33", badMatch(&security.Match{NotSourceIps: []*security.Address{{Address: []byte{10, 0, 0, 0}, Length: 33}}}), authz.Options{}, "not_source_ips: entry 0: prefix length 33 exceeds 32 bits"},
		{"IPv6 prefix length 129", badMatch(&security.Match{NotDestinationIps: []*security.Address{{Address: make([]byte, 16), Length: 129}}}), authz.Options{}, "not_destination_ips: entry 0: prefix length 129 exceeds 128 bits"},
		{"port above 65535", badMatch(&security.Match{DestinationPorts: []uint32{65536}}), authz.Options{}, "destination_ports: entry 0: port 65536 out of range"},
		{"not port above 65535", badMatch(&security.Match{NotDestinationPorts: []uint32{80, 1 << 20}}), authz.Options{}, "not_destination_ports: entry 1: port 1048576 out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := authz.New(tt.pols, tt.opts)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr == "" && p.Len() != len(tt.pols):
				t.Fatalf("Len = %d, want %d", p.Len(), len(tt.pols))
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("New error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestHas(t *testing.T) {
	p, err := authz.New(pols(selPol("default", "s", allow)), authz.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Has("default/s") || p.Has("default/t") {
		t.Error("Has does not report the key set")
	}
}

// benchPolicies returns 100 policies that all apply to benchConn and none of which matches
// until the last ALLOW: 30 global DENY, 40 namespace ALLOW, 30 listed selector ALLOW.
func benchPolicies(tb testing.TB) (*authz.Policies, authz.Connection) {
	tb.Helper()
	var all []*security.Authorization
	var listed []string
	for i := range 30 {
		all = append(all, global("deny-"+strconv.Itoa(i), deny, when(&security.Match{DestinationPorts: []uint32{uint32(1000 + i)}, NotPrincipals: sm(presence())})))
	}
	for i := range 40 {
		all = append(all, nsPol("default", "allow-"+strconv.Itoa(i), allow, rule(
			clause(&security.Match{Principals: sm(exact("cluster.local/ns/default/sa/sa-" + strconv.Itoa(i)))}),
			clause(&security.Match{DestinationPorts: []uint32{8080}}))))
	}
	for i := range 30 {
		m := &security.Match{Namespaces: sm(prefix("team-" + strconv.Itoa(i))), SourceIps: cidr("192.168.0.0/16")}
		if i == 29 {
			m = &security.Match{Principals: sm(suffix("/sa/sleep")), SourceIps: cidr("10.0.0.0/8")}
		}
		all = append(all, selPol("default", "sel-"+strconv.Itoa(i), allow, when(m)))
		listed = append(listed, "default/sel-"+strconv.Itoa(i))
	}
	p, err := authz.New(all, authz.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return p, from("default", "sleep").listed(listed...).Connection
}

func TestEvaluateDoesNotAllocate(t *testing.T) {
	p, c := benchPolicies(t)
	if d := p.Evaluate(c); !d.Allowed || d.Policy != "default/sel-29" {
		t.Fatalf("benchmark setup: %+v", d)
	}
	if n := testing.AllocsPerRun(100, func() { p.Evaluate(c) }); n != 0 {
		t.Errorf("Evaluate allocates %v times per call, want 0", n)
	}
}

func BenchmarkEvaluate100Policies(b *testing.B) {
	p, c := benchPolicies(b)
	b.ReportAllocs()
	for b.Loop() {
		p.Evaluate(c)
	}
}

// FuzzEvaluate drives Evaluate with arbitrary connections against a fixed policy set and
// checks it against an oracle written from the policies by hand.
func FuzzEvaluate(f *testing.F) {
	p, err := authz.New(pols(
		global("deny-lan", deny, when(&security.Match{SourceIps: cidr("192.168.0.0/16")})),
		dry(global("dry-deny-all", deny, denyAll)),
		nsPol("default", "deny-6666", deny, when(&security.Match{DestinationPorts: []uint32{6666}})),
		nsPol("default", "allow-mesh", allow, when(&security.Match{Principals: sm(prefix("cluster.local/"))})),
		strictPortPermissive(),
		selPol("default", "allow-fuzz", allow, rule(clause(&security.Match{Namespaces: sm(exact("fuzz"))}, &security.Match{ServiceAccounts: sa("x", "y")}), clause(&security.Match{NotSourceIps: cidr("fd00::/8")}))),
	), authz.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("cluster.local", "default", "sleep", []byte{10, 0, 0, 1}, []byte{10, 0, 1, 1}, uint16(8080), "default", "default/converted_peer_authentication_strict")
	f.Add("", "", "", []byte{192, 168, 1, 1}, []byte{}, uint16(9090), "default", "default/allow-fuzz,default/missing")
	f.Add("example.org", "fuzz", "y", make([]byte, 16), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 0, 1}, uint16(6666), "other", "")
	f.Fuzz(func(t *testing.T, td, ns, name string, src, dst []byte, port uint16, dstNS, listed string) {
		id, err := identity.New(td, ns, name)
		if err != nil {
			id = identity.ID{}
		}
		srcIP, _ := netip.AddrFromSlice(src)
		dstIP, _ := netip.AddrFromSlice(dst)
		c := authz.Connection{SourceIdentity: id, SourceIP: srcIP, DestinationIP: dstIP, DestinationPort: port, DestinationNamespace: dstNS}
		if listed != "" {
			c.DestinationPolicies = strings.Split(listed, ",")
		}
		d := p.Evaluate(c)
		if d2 := p.Evaluate(c); d.Allowed != d2.Allowed || d.Policy != d2.Policy || !slices.Equal(d.DryRun, d2.DryRun) {
			t.Fatalf("not deterministic: %+v then %+v", d, d2)
		}

		strict := slices.Contains(c.DestinationPolicies, "default/converted_peer_authentication_strict")
		denyMatch := netip.MustParsePrefix("192.168.0.0/16").Contains(srcIP.Unmap()) ||
			(dstNS == "default" && port == 6666) ||
			(strict && id.IsZero() && port != 9090)
		if denyMatch && d.Allowed {
			t.Fatalf("a DENY policy matches %+v but Evaluate allowed: %+v", c, d)
		}
		if d.Allowed != (d.Reason == authz.ReasonAllowMatched || d.Reason == authz.ReasonNoAllowPolicy) {
			t.Fatalf("reason %q contradicts allowed=%v", d.Reason, d.Allowed)
		}
		if (d.Reason == authz.ReasonDenyMatched || d.Reason == authz.ReasonAllowMatched) != (d.Policy != "") {
			t.Fatalf("reason %q with policy %q", d.Reason, d.Policy)
		}
		// The dry-run DENY matches everything: it is reported exactly when the result allows.
		if wantDry := d.Allowed; wantDry != slices.Contains(d.DryRun, root+"/dry-deny-all") {
			t.Fatalf("dry-run report %q for allowed=%v", d.DryRun, d.Allowed)
		}
	})
}
