package manifests

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The release the tests build with hack/release.sh (as `make release` does),
// with fixed inputs so that a second build must give the same digest.
const (
	releaseVersion  = "0.1.0-test"
	releaseRevision = "0123456789abcdef0123456789abcdef01234567"
	releaseEpoch    = "1700000000"
	releaseRepo     = "registry.example.com/tokenkeeper"
)

type releaseResult struct {
	dist   string // holds install.yaml, the chart, SHA256SUMS and image/
	digest string // of the image manifest
	took   time.Duration
}

var (
	releaseOnce sync.Once
	releaseRes  releaseResult
	releaseErr  error
	// sharedTmp holds what several tests share; TestMain removes it.
	sharedTmp string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedTmp != "" {
		_ = os.RemoveAll(sharedTmp)
	}
	os.Exit(code)
}

// release builds the release once per test binary, whichever test asks first.
func release(t testing.TB) releaseResult {
	t.Helper()
	releaseOnce.Do(func() { releaseRes, releaseErr = buildRelease() })
	if releaseErr != nil {
		t.Fatalf("hack/release.sh: %v", releaseErr)
	}
	return releaseRes
}

func buildRelease() (releaseResult, error) {
	helm, err := buildTool("helm")
	if err != nil {
		return releaseResult{}, err
	}
	if sharedTmp, err = os.MkdirTemp("", "tokenkeeper-manifests-"); err != nil {
		return releaseResult{}, err
	}
	dist := filepath.Join(sharedTmp, "dist")
	start := time.Now()
	cmd := exec.Command("bash", path("hack", "release.sh"))
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "VERSION="+releaseVersion, "REVISION="+releaseRevision,
		"SOURCE_DATE_EPOCH="+releaseEpoch, "IMAGE_REPO="+releaseRepo, "DIST="+dist, "HELM="+helm)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return releaseResult{}, fmt.Errorf("%w\n%s", err, tail(stderr.String(), 40))
	}
	took := time.Since(start)
	digest, err := os.ReadFile(filepath.Join(dist, "image", "digest"))
	if err != nil {
		return releaseResult{}, err
	}
	fmt.Fprintf(os.Stderr, "hack/release.sh (image, install.yaml, chart) took %.1fs\n", took.Seconds())
	return releaseResult{dist: dist, digest: strings.TrimSpace(string(digest)), took: took}, nil
}

// TestReleaseArtifacts checks what `make release` produces: install.yaml is
// config/default with the image pinned by digest; the packaged chart has
// version and appVersion of the release, references the same image and
// deploys the same operator as install.yaml; SHA256SUMS covers all of it.
func TestReleaseArtifacts(t *testing.T) {
	t.Parallel()
	rel := release(t)
	t.Logf("release built in %.1fs, image digest %s", rel.took.Seconds(), rel.digest)
	wantImage := releaseRepo + ":" + releaseVersion + "@" + rel.digest

	installData, err := os.ReadFile(filepath.Join(rel.dist, "install.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	install := parseObjects(t, installData)
	chartFile := filepath.Join(rel.dist, "tokenkeeper-"+releaseVersion+".tgz")
	chart := helmTemplateChart(t, chartFile)

	t.Run("chart metadata", func(t *testing.T) {
		var meta struct {
			Version    string `json:"version"`
			AppVersion string `json:"appVersion"`
		}
		if err := yaml.Unmarshal(run(t, tool(t, "helm"), "show", "chart", chartFile), &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Version != releaseVersion || meta.AppVersion != releaseVersion {
			t.Errorf("packaged Chart.yaml version %q appVersion %q, want both %q", meta.Version, meta.AppVersion, releaseVersion)
		}
	})

	t.Run("image", func(t *testing.T) {
		for name, objs := range map[string]objects{"install.yaml": install, "chart": chart} {
			if got := managerContainer(t, deploymentOf(t, objs)).Image; got != wantImage {
				t.Errorf("%s: manager image %q, want %q (tag = version = appVersion, pinned to the built digest)", name, got, wantImage)
			}
		}
	})

	t.Run("install.yaml is config/default", func(t *testing.T) {
		// Everything but the image is config/default's, object for object.
		kust := kustomize(t, "config/default")
		d := kust.one(t, "Deployment", "")
		cs := d.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)
		cs[0].(map[string]any)["image"] = wantImage
		if len(install) != len(kust) {
			t.Errorf("install.yaml has %v, config/default %v", install.names(), kust.names())
		}
		for _, u := range kust {
			equalYAML(t, u.GetKind()+"/"+u.GetName(), install.one(t, u.GetKind(), u.GetName()).Object, u.Object)
		}
		ns := install.one(t, "Namespace", managerNamespace)
		if ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Errorf("install.yaml Namespace labels %v: want pod-security.kubernetes.io/enforce=restricted", ns.GetLabels())
		}
	})

	// RBAC, args, probes, security contexts, resources, metrics Service.
	checkSameOperator(t, chart, install, "install.yaml")

	t.Run("SHA256SUMS", func(t *testing.T) {
		f, err := os.Open(filepath.Join(rel.dist, "SHA256SUMS"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		listed := map[string]bool{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			sum, name, ok := strings.Cut(sc.Text(), "  ")
			if !ok {
				t.Fatalf("SHA256SUMS line %q is not in sha256sum's format", sc.Text())
			}
			listed[name] = true
			data, err := os.ReadFile(filepath.Join(rel.dist, name))
			if err != nil {
				t.Fatal(err)
			}
			if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != sum {
				t.Errorf("SHA256SUMS: %s does not match", name)
			}
		}
		for _, want := range []string{"install.yaml", "tokenkeeper-" + releaseVersion + ".tgz", "image/tokenkeeper-" + releaseVersion + ".tar"} {
			if !listed[want] {
				t.Errorf("SHA256SUMS lacks %s (lists %v)", want, listed)
			}
		}
	})
}

// TestReleaseNeedsVersion: a release without a semantic version is refused
// before anything is built.
func TestReleaseNeedsVersion(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"", "v0.1.0", "latest"} {
		cmd := exec.Command("bash", path("hack", "release.sh"))
		cmd.Env = append(os.Environ(), "VERSION="+v, "DIST="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "want a semantic version") {
			t.Errorf("VERSION=%q: want a refusal naming semantic versions, got %v\n%s", v, err, out)
		}
	}
}
