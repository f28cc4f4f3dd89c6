package arch

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
)

const mod = "example.com/m"

func TestCheck(t *testing.T) {
	doc := "Package x is x."
	tests := []struct {
		name string
		pkg  Package
		want []string // rules broken, in sorted order of their violation strings
	}{
		{"clean pkg", Package{ImportPath: mod + "/pkg/hbone", Doc: doc, Imports: []string{"net/http", mod + "/pkg/identity"}}, nil},
		{"missing doc", Package{ImportPath: mod + "/pkg/hbone"}, []string{"package doc"}},
		{"pkg imports component", Package{ImportPath: mod + "/pkg/hbone", Doc: doc, Imports: []string{mod + "/ztunnel/internal/proxy"}},
			[]string{"pkg/ imports no component"}},
		{"component imports component", Package{ImportPath: mod + "/waypoint/internal/app", Doc: doc, Imports: []string{mod + "/ztunnel/internal/config"}},
			[]string{"components never import each other"}},
		{"component test imports component", Package{ImportPath: mod + "/cni/internal/plugin", Doc: doc, XTestImports: []string{mod + "/istiod-lite/internal/ca"}},
			[]string{"components never import each other"}},
		{"component imports own and pkg", Package{ImportPath: mod + "/ztunnel/internal/app", Doc: doc, Imports: []string{mod + "/ztunnel/internal/proxy", mod + "/pkg/hbone"}}, nil},
		{"component imports tests", Package{ImportPath: mod + "/ztunnel/internal/app", Doc: doc, TestImports: []string{mod + "/tests/cluster"}},
			[]string{"nothing imports tests/"}},
		{"tests import anything", Package{ImportPath: mod + "/tests/integration", Doc: doc, Imports: []string{mod + "/ztunnel/internal/app", mod + "/pkg/testenv", mod + "/tests/cluster"}}, nil},
		{"library imports test helper", Package{ImportPath: mod + "/pkg/secrets", Doc: doc, Imports: []string{mod + "/pkg/identity/identitytest"}},
			[]string{"test helpers only in tests"}},
		{"library imports testenv", Package{ImportPath: mod + "/cni/internal/plugin", Doc: doc, Imports: []string{mod + "/pkg/testenv"}},
			[]string{"test helpers only in tests"}},
		{"test file imports test helper", Package{ImportPath: mod + "/pkg/secrets", Doc: doc, XTestImports: []string{mod + "/pkg/identity/identitytest"}}, nil},
		{"ztunnel binary links client-go", Package{ImportPath: mod + "/ztunnel/cmd/ztunnel", Name: "main", Doc: doc, Deps: []string{"k8s.io/client-go/rest"}},
			[]string{"no client-go in ztunnel"}},
		{"cni plugin links client-go", Package{ImportPath: mod + "/cni/cmd/cni-plugin", Name: "main", Doc: doc, Deps: []string{"k8s.io/client-go"}},
			[]string{"no client-go in cni/cmd/cni-plugin"}},
		{"node agent may link client-go", Package{ImportPath: mod + "/cni/cmd/node-agent", Name: "main", Doc: doc, Deps: []string{"k8s.io/client-go/rest"}}, nil},
		{"istiod-lite may link client-go", Package{ImportPath: mod + "/istiod-lite/cmd/istiod-lite", Name: "main", Doc: doc, Deps: []string{"k8s.io/client-go/rest"}}, nil},
		{"ebpf outside cni", Package{ImportPath: mod + "/ztunnel/internal/inpod", Doc: doc, Imports: []string{"github.com/cilium/ebpf/link"}},
			[]string{"ebpf only in cni and pkg/capture"}},
		{"ebpf in pkg/capture", Package{ImportPath: mod + "/pkg/capture", Doc: doc, Imports: []string{"github.com/cilium/ebpf/link"}}, nil},
		{"ebpf in other pkg", Package{ImportPath: mod + "/pkg/hbone", Doc: doc, Imports: []string{"github.com/cilium/ebpf"}},
			[]string{"ebpf only in cni and pkg/capture"}},
		{"ebpf in cni", Package{ImportPath: mod + "/cni/internal/redirect/ebpfredir", Doc: doc, Imports: []string{"github.com/cilium/ebpf"}}, nil},
		{"several at once", Package{ImportPath: mod + "/pkg/xds", Imports: []string{mod + "/tests/cluster", mod + "/istiod-lite/internal/kube"}},
			[]string{"nothing imports tests/", "package doc", "pkg/ imports no component"}},
		{"outside module ignored", Package{ImportPath: "other.org/x", Imports: []string{mod + "/tests/cluster"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, v := range Check(mod, []Package{tt.pkg}) {
				got = append(got, v.Rule)
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("rules broken = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRepository applies the rules to every package of the module.
func TestRepository(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Name,Doc,Imports,TestImports,XTestImports,Deps,Error", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []Package
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			Package
			Error *struct{ Err string }
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		if p.Error != nil {
			t.Errorf("go list %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p.Package)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages; is the working directory the repository?", len(pkgs))
	}
	for _, v := range Check(testenv.Module, pkgs) {
		t.Error(v)
	}
}
