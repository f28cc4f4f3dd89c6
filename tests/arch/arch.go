// Package arch holds the repository's import rules (ARCHITECTURE.md, "Import rules") as data
// and a pure checker over `go list` output; its test applies them to the whole module.
// It is not a linter framework: one table, one function.
package arch

import (
	"fmt"
	"sort"
	"strings"
)

// Package is the part of `go list -json` output the rules read.
type Package struct {
	ImportPath   string
	Name         string
	Doc          string
	Imports      []string // direct imports of the package's non-test files
	TestImports  []string // direct imports of its in-package _test.go files
	XTestImports []string // direct imports of its external (_test package) test files
	Deps         []string // transitive non-test dependencies
}

// Violation is one broken rule.
type Violation struct {
	Package string
	Rule    string
	Detail  string
}

func (v Violation) String() string { return fmt.Sprintf("%s: %s: %s", v.Package, v.Rule, v.Detail) }

// Components are the top-level folders that build binaries; they talk to each other only
// over wire protocols, never through Go imports.
var Components = []string{"ztunnel", "waypoint", "cni", "istiod-lite"}

// Rules that name third-party modules.
const (
	clientGo  = "k8s.io/client-go"
	ciliumBPF = "github.com/cilium/ebpf"
)

// NoClientGoBinaries are the binaries that must not link client-go: they learn everything
// over xDS and ZDS, or run once per pod (the CNI plugin), and stay small.
var NoClientGoBinaries = []string{"ztunnel/", "waypoint/", "cni/cmd/cni-plugin"}

// Check applies the import rules to pkgs, whose import paths start with module+"/".
func Check(module string, pkgs []Package) []Violation {
	var out []Violation
	rel := func(p string) (string, bool) { return strings.CutPrefix(p, module+"/") }
	add := func(p Package, rule, format string, args ...any) {
		r, _ := rel(p.ImportPath)
		out = append(out, Violation{Package: r, Rule: rule, Detail: fmt.Sprintf(format, args...)})
	}
	for _, p := range pkgs {
		self, ok := rel(p.ImportPath)
		if !ok {
			continue
		}
		if p.Doc == "" {
			add(p, "package doc", "no package comment saying what the package is and is not")
		}
		direct := unique(p.Imports, p.TestImports, p.XTestImports)
		for _, imp := range direct {
			dep, internal := rel(imp)
			if !internal {
				if strings.HasPrefix(imp, ciliumBPF) && !ebpfAllowed(self) {
					add(p, "ebpf only in cni and pkg/capture", "imports %s; only the CNI's redirection code loads eBPF, and only pkg/capture registers a proxy's sockets with it", imp)
				}
				continue
			}
			switch {
			case under(dep, "tests/") && !under(self, "tests/"):
				add(p, "nothing imports tests/", "imports %s", dep)
			case under(self, "pkg/") && componentOf(dep) != "":
				add(p, "pkg/ imports no component", "imports %s", dep)
			case componentOf(self) != "" && componentOf(dep) != "" && componentOf(self) != componentOf(dep):
				add(p, "components never import each other", "%s imports %s", componentOf(self), dep)
			}
		}
		if !under(self, "tests/") {
			for _, imp := range p.Imports { // test files may use test helpers; binaries and libraries may not
				if dep, ok := rel(imp); ok && isTestHelper(dep) {
					add(p, "test helpers only in tests", "non-test code imports %s", dep)
				}
			}
		}
		if p.Name == "main" {
			for _, prefix := range NoClientGoBinaries {
				if !under(self, prefix) {
					continue
				}
				for _, d := range p.Deps {
					if d == clientGo || strings.HasPrefix(d, clientGo+"/") {
						add(p, "no client-go in "+strings.TrimSuffix(prefix, "/"), "binary depends on %s", d)
						break
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// ebpfAllowed reports whether a package may import cilium/ebpf: the CNI (which loads and
// attaches the redirection), pkg/capture (the proxy's side of that contract: registering its
// in-pod sockets) and tests.
func ebpfAllowed(path string) bool {
	return under(path, "cni/") || under(path, "pkg/capture/") || under(path, "tests/")
}

// under reports whether path is prefix itself or below it; prefix ends in "/" for folders.
func under(path, prefix string) bool {
	return strings.HasPrefix(path+"/", prefix) || path == strings.TrimSuffix(prefix, "/")
}

func componentOf(path string) string {
	for _, c := range Components {
		if under(path, c+"/") {
			return c
		}
	}
	return ""
}

// isTestHelper reports whether a module package exists only for tests: pkg/testenv and
// packages named *test (identitytest, xdstest).
func isTestHelper(path string) bool {
	last := path[strings.LastIndexByte(path, '/')+1:]
	return path == "pkg/testenv" || (strings.HasSuffix(last, "test") && last != "test")
}

func unique(lists ...[]string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lists {
		for _, s := range l {
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	return out
}
