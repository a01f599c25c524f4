package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// repoRoot is the root of the repository (go test runs in the package folder).
var repoRoot = func() string {
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	return dir
}()

// path joins parts to the repository root.
func path(parts ...string) string {
	return filepath.Join(append([]string{repoRoot}, parts...)...)
}

// Names the chart is rendered with; they mirror config/default.
const (
	releaseName      = "tokenkeeper"
	managerNamespace = "tokenkeeper-system"
)

type toolResult struct {
	once sync.Once
	path string
	err  error
}

var (
	toolsMu sync.Mutex
	tools   = map[string]*toolResult{}
)

// tool returns the path of a binary built by a hack/ script, building it on
// first use (once per test binary, whichever test asks first); every test
// that needs a tool that cannot be had fails.
func tool(t testing.TB, name string) string {
	t.Helper()
	toolsMu.Lock()
	r, ok := tools[name]
	if !ok {
		r = &toolResult{}
		tools[name] = r
	}
	toolsMu.Unlock()
	r.once.Do(func() { r.path, r.err = buildTool(name) })
	if r.err != nil {
		t.Fatalf("cannot get %s: %v", name, r.err)
	}
	return r.path
}

func buildTool(name string) (string, error) {
	var script []string
	switch name {
	case "kubectl":
		p, err := exec.LookPath("kubectl")
		if err != nil {
			return "", fmt.Errorf("kubectl is not on PATH (it renders config/ with `kubectl kustomize`): %w", err)
		}
		return p, nil
	case "envtest":
		if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
			return dir, nil
		}
		script = []string{path("hack", "envtest-assets.sh")}
	default:
		script = []string{path("hack", "tools.sh"), name}
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", script...)
	cmd.Dir = repoRoot
	cmd.Stdout = &stdout
	cmd.Stderr = io.MultiWriter(&stderr, os.Stderr) // a cold build shows its progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w\n%s", strings.Join(script, " "), err, tail(stderr.String(), 40))
	}
	p := strings.TrimSpace(stdout.String())
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s printed %q: %w", strings.Join(script, " "), p, err)
	}
	return p, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run runs a command in the repository root and returns its standard output;
// the test fails with its standard error if it fails.
func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", filepath.Base(name), strings.Join(args, " "), err)
	}
	return out
}

func runErr(name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%w\nstdout:\n%s\nstderr:\n%s", err, tail(stdout.String(), 60), stderr.String())
	}
	return stdout.Bytes(), nil
}

// kustomize renders a kustomization folder (relative to the repository root).
func kustomize(t testing.TB, dir string) objects {
	t.Helper()
	return parseObjects(t, run(t, tool(t, "kubectl"), "kustomize", path(dir)))
}

// helmTemplate renders charts/tokenkeeper with the given extra arguments.
func helmTemplate(t testing.TB, args ...string) objects {
	t.Helper()
	return helmTemplateChart(t, path("charts", "tokenkeeper"), args...)
}

// helmTemplateChart renders a chart folder or packaged chart (.tgz).
func helmTemplateChart(t testing.TB, chart string, args ...string) objects {
	t.Helper()
	base := []string{"template", releaseName, chart, "--namespace", managerNamespace}
	return parseObjects(t, run(t, tool(t, "helm"), append(base, args...)...))
}

// objects is a rendered multi-document manifest.
type objects []*unstructured.Unstructured

func parseObjects(t testing.TB, data []byte) objects {
	t.Helper()
	var objs objects
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading YAML: %v", err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("parsing YAML document: %v\n%s", err, doc)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// all returns the objects of a kind.
func (o objects) all(kind string) objects {
	var r objects
	for _, u := range o {
		if u.GetKind() == kind {
			r = append(r, u)
		}
	}
	return r
}

// one returns the only object of a kind whose name ends with suffix.
func (o objects) one(t testing.TB, kind, suffix string) *unstructured.Unstructured {
	t.Helper()
	var found objects
	for _, u := range o.all(kind) {
		if strings.HasSuffix(u.GetName(), suffix) {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one %s named *%s, found %d among %v", kind, suffix, len(found), o.names())
	}
	return found[0]
}

func (o objects) names() []string {
	var r []string
	for _, u := range o {
		r = append(r, u.GetKind()+"/"+u.GetName())
	}
	return r
}

// into converts an object (or any YAML-able value) to a typed one.
func into[T any](t testing.TB, v any) *T {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := yaml.UnmarshalStrict(data, out); err != nil {
		t.Fatalf("converting to %T: %v\n%s", out, err, data)
	}
	return out
}

// intoLoose is into for partial types: unknown fields are ignored.
func intoLoose[T any](t testing.TB, v any) *T {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := yaml.Unmarshal(data, out); err != nil {
		t.Fatalf("converting to %T: %v\n%s", out, err, data)
	}
	return out
}

// readYAML reads a one-document YAML file of the repository.
func readYAML(t testing.TB, rel string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path(rel))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return m
}

// equalYAML fails the test when got and want differ, showing both as YAML.
func equalYAML(t testing.TB, what string, got, want any) {
	t.Helper()
	g, err := yaml.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	// Compare through one normal form, so []any vs []string and the like
	// do not count.
	var gn, wn any
	_ = yaml.Unmarshal(g, &gn)
	_ = yaml.Unmarshal(w, &wn)
	if !reflect.DeepEqual(gn, wn) {
		t.Errorf("%s differ:\n--- got:\n%s--- want:\n%s", what, g, w)
	}
}
