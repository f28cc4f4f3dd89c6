// Package charts tests the Helm charts in charts/: `helm lint --strict` of each chart with
// its default values and with the non-default values file in testdata/, `helm template`
// goldens of both (testdata/<chart>[-custom].golden.yaml; -update rewrites them), and
// `kubectl apply --dry-run=server` of the rendered manifests against the local control plane
// (tests/cluster), so the apiserver's validation, not only YAML, accepts them.
//
// helm and kubectl are the pinned tools in .bin (tools/build.sh); without them the tests
// skip on a developer machine and fail in CI.
package charts

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }

// chart is one chart under test and the release it is rendered as (Istio's release names).
type chart struct{ name, release string }

var charts = []chart{
	{"base", "istio-base"},
	{"istiod-lite", "istiod"},
	{"cni", "istio-cni"},
	{"ztunnel", "ztunnel"},
}

// renderNamespace is the namespace of the goldens (Istio's).
const renderNamespace = "istio-system"

// variants are the values each chart is tested with: its defaults, and testdata/<chart>.values.yaml.
var variants = []struct{ suffix, values string }{
	{"", ""},
	{"-custom", "%s.values.yaml"},
}

func TestLint(t *testing.T) {
	h := tools(t)
	for _, c := range charts {
		for _, v := range variants {
			t.Run(c.name+v.suffix, func(t *testing.T) {
				args := []string{"lint", "--strict", h.chartDir(c.name)}
				if v.values != "" {
					args = append(args, "--values", filepath.Join("testdata", fmt.Sprintf(v.values, c.name)))
				}
				out, err := h.run(nil, "helm", args...)
				if err != nil {
					t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				// --strict fails on warnings; INFO lines (no icon) are fine.
				if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
					t.Errorf("helm lint found problems:\n%s", out)
				}
			})
		}
	}
}

func TestTemplateGolden(t *testing.T) {
	h := tools(t)
	for _, c := range charts {
		for _, v := range variants {
			t.Run(c.name+v.suffix, func(t *testing.T) {
				out := h.template(t, c, v.values, renderNamespace)
				testenv.Golden(t, filepath.Join("testdata", c.name+v.suffix+".golden.yaml"), summarizeCRDs(t, out), *update)
			})
		}
	}
}

// TestDryRunServer renders every chart into a fresh namespace of the local control plane and
// has the apiserver validate each object (`kubectl apply --server-side --dry-run=server`):
// schemas, unknown fields (strict validation), and the Pod security rules the apiserver
// enforces (privileged, capabilities, host paths).
func TestDryRunServer(t *testing.T) {
	h := tools(t)
	c := cluster.Shared(t)
	ns := c.Namespace(t, nil)
	for _, ch := range charts {
		for _, v := range variants {
			t.Run(ch.name+v.suffix, func(t *testing.T) {
				out := h.template(t, ch, v.values, ns)
				// Server-side: the Gateway API CRDs are too large for client-side apply's
				// last-applied annotation.
				args := []string{"--kubeconfig", c.Kubeconfig, "apply", "--server-side", "--force-conflicts",
					"--field-manager=charts-test", "--dry-run=server", "-f", "-"}
				res, err := h.run(out, "kubectl", args...)
				if err != nil {
					t.Fatalf("kubectl apply --dry-run=server of %s: %v\n%s", ch.name, err, res)
				}
				if got, want := strings.Count(res, "(server dry run)"), len(documents(t, out)); got != want {
					t.Errorf("the apiserver accepted %d objects, the chart rendered %d:\n%s", got, want, res)
				}
			})
		}
	}
}

// helmTools runs the pinned helm and kubectl with helm's state kept in a temporary directory.
type helmTools struct {
	bin, root string
	env       []string
}

func tools(t *testing.T) *helmTools {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := os.Getenv(cluster.EnvBinDir)
	if bin == "" {
		bin = filepath.Join(root, ".bin")
	}
	for _, name := range []string{"helm", "kubectl"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			testenv.SkipOrFail(t, fmt.Sprintf("%s is not in %s (run `make tools`)", name, bin))
		}
	}
	state := t.TempDir()
	env := append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(state, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(state, "config"),
		"HELM_DATA_HOME="+filepath.Join(state, "data"))
	return &helmTools{bin: bin, root: root, env: env}
}

func (h *helmTools) chartDir(name string) string { return filepath.Join(h.root, "charts", name) }

// run runs a tool with stdin and returns its stdout, with stderr appended on failure.
func (h *helmTools) run(stdin []byte, tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.bin, tool), args...)
	cmd.Env = h.env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// template renders chart c into namespace ns, with the values file pattern (empty: defaults).
func (h *helmTools) template(t *testing.T, c chart, values, ns string) []byte {
	t.Helper()
	args := []string{"template", c.release, h.chartDir(c.name), "--namespace", ns, "--include-crds"}
	if values != "" {
		args = append(args, "--values", filepath.Join("testdata", fmt.Sprintf(values, c.name)))
	}
	out, err := h.run(nil, "helm", args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return []byte(out)
}

// documents splits a rendered manifest into its non-empty YAML documents.
func documents(t *testing.T, manifest []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("splitting the rendered manifest: %v", err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("rendered document is not YAML: %v\n%s", err, doc)
		}
		if len(obj) > 0 {
			docs = append(docs, doc)
		}
	}
}

// summarizeCRDs replaces each CustomResourceDefinition's spec with a comment: the goldens
// then show what the chart decides (which CRDs, their metadata) and not the 1 MB of schemas
// `go generate ./charts` copies from upstream.
func summarizeCRDs(t *testing.T, manifest []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	for _, doc := range documents(t, manifest) {
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		out.WriteString("---\n")
		if obj["kind"] != "CustomResourceDefinition" {
			out.Write(bytes.TrimLeft(doc, "-\n"))
			continue
		}
		spec, _ := obj["spec"].(map[string]any)
		names, _ := spec["names"].(map[string]any)
		var versions []string
		vs, _ := spec["versions"].([]any)
		for _, v := range vs {
			if m, ok := v.(map[string]any); ok {
				versions = append(versions, fmt.Sprint(m["name"]))
			}
		}
		delete(obj, "spec")
		b, err := yaml.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&out, "# spec elided: group %v, kind %v, versions %s\n", spec["group"], names["kind"], strings.Join(versions, ","))
		out.Write(b)
	}
	return out.Bytes()
}
