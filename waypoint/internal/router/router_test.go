package router

import (
	"math/rand/v2"
	"regexp"
	"testing"

	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

func TestPickClusterStatistics(t *testing.T) {
	f := &l7config.Forward{TotalWeight: 100, Clusters: []l7config.WeightedCluster{
		{Cluster: l7config.Cluster{Name: "a"}, Weight: 80}, {Cluster: l7config.Cluster{Name: "b"}, Weight: 15}, {Cluster: l7config.Cluster{Name: "c"}, Weight: 5}}}
	// Exhaustive over the range: exactly the weights.
	count := map[string]int{}
	for r := uint32(0); r < f.TotalWeight; r++ {
		count[PickCluster(f, r).Cluster.Name]++
	}
	if count["a"] != 80 || count["b"] != 15 || count["c"] != 5 {
		t.Fatalf("exhaustive: %v", count)
	}
	// Sampled: within 1 point over 100k draws.
	rng := rand.New(rand.NewPCG(1, 2))
	count = map[string]int{}
	const n = 100000
	for i := 0; i < n; i++ {
		count[PickCluster(f, rng.Uint32N(f.TotalWeight)).Cluster.Name]++
	}
	for name, want := range map[string]float64{"a": 80, "b": 15, "c": 5} {
		got := 100 * float64(count[name]) / n
		if got < want-1 || got > want+1 {
			t.Errorf("%s: %.2f%%, want %.0f%% ± 1", name, got, want)
		}
	}
	// A zero weight is never chosen.
	z := &l7config.Forward{TotalWeight: 1, Clusters: []l7config.WeightedCluster{{Cluster: l7config.Cluster{Name: "zero"}}, {Cluster: l7config.Cluster{Name: "one"}, Weight: 1}}}
	if got := PickCluster(z, 0).Cluster.Name; got != "one" {
		t.Errorf("zero weight chosen: %s", got)
	}
}

func TestUpstreamPath(t *testing.T) {
	tests := []struct {
		name   string
		m      l7config.Match
		f      l7config.Forward
		target string
		want   string
	}{
		{"no rewrite", l7config.Match{Path: "/"}, l7config.Forward{}, "/a?b=1", "/a?b=1"},
		{"prefix", l7config.Match{Path: "/old/"}, l7config.Forward{PrefixRewrite: "/new/"}, "/old/x?q=1", "/new/x?q=1"},
		{"prefix to root", l7config.Match{Path: "/api"}, l7config.Forward{PrefixRewrite: "/"}, "/api/v1", "//v1"},
		{"exact", l7config.Match{PathKind: l7config.PathExact, Path: "/a"}, l7config.Forward{PrefixRewrite: "/b"}, "/a", "/b"},
		{"regex", l7config.Match{PathKind: l7config.PathRegex}, l7config.Forward{RegexRewrite: regexp.MustCompile("^/v1/(.*)$"), RegexSubst: "/v2/${1}"}, "/v1/x?y", "/v2/x?y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &l7config.Route{Match: tt.m, Forward: &tt.f}
			if got := UpstreamPath(rt, tt.target); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	rt := &l7config.Route{Forward: &l7config.Forward{HostRewrite: "h2"}}
	if UpstreamHost(rt, "h1") != "h2" || UpstreamHost(&l7config.Route{Forward: &l7config.Forward{}}, "h1") != "h1" {
		t.Error("host rewrite")
	}
}

func TestRedirectLocation(t *testing.T) {
	tests := []struct {
		name         string
		m            l7config.Match
		rd           l7config.Redirect
		host, target string
		want         string
	}{
		{"host", l7config.Match{}, l7config.Redirect{Host: "example.com"}, "svc:9080", "/a?b", "http://example.com/a?b"},
		{"path keeps query", l7config.Match{}, l7config.Redirect{Path: "/moved", HasPath: true}, "svc", "/a?b=1", "http://svc/moved?b=1"},
		{"path with query", l7config.Match{}, l7config.Redirect{Path: "/moved?x=2", HasPath: true}, "svc", "/a?b=1", "http://svc/moved?x=2"},
		{"strip query", l7config.Match{}, l7config.Redirect{StripQuery: true}, "svc", "/a?b=1", "http://svc/a"},
		{"https drops port 80", l7config.Match{}, l7config.Redirect{Scheme: "https"}, "svc:80", "/", "https://svc/"},
		{"https keeps other port", l7config.Match{}, l7config.Redirect{Scheme: "https"}, "svc:8080", "/", "https://svc:8080/"},
		{"port", l7config.Match{}, l7config.Redirect{Port: 8443, Scheme: "https"}, "svc:80", "/x", "https://svc:8443/x"},
		{"port equal default", l7config.Match{}, l7config.Redirect{Port: 443, Scheme: "https"}, "svc", "/x", "https://svc/x"},
		{"prefix", l7config.Match{Path: "/old"}, l7config.Redirect{PrefixRewrite: "/new", HasPrefix: true}, "svc", "/old/x?y", "http://svc/new/x?y"},
		{"regex", l7config.Match{PathKind: l7config.PathRegex}, l7config.Redirect{RegexRewrite: regexp.MustCompile("a"), RegexSubst: "b"}, "svc", "/aa", "http://svc/bb"},
		{"host and port", l7config.Match{}, l7config.Redirect{Host: "h:81"}, "svc:9080", "/", "http://h:81/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &l7config.Route{Match: tt.m, Redirect: &tt.rd}
			if got := RedirectLocation(rt, "http", tt.host, tt.target); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
