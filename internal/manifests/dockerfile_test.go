package manifests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// TestDockerfileStampsTheVersion: the Dockerfile (which CI cannot run, for
// want of a container engine) builds the manager with the ldflags it
// declares. This runs its go build line with VERSION and REVISION set, and
// checks that both values are in the binary: a -X naming a variable that does
// not exist is ignored by the linker without a word. It also checks that
// make docker-build passes both build arguments.
func TestDockerfileStampsTheVersion(t *testing.T) {
	df, err := os.ReadFile(path("Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`-ldflags="([^"]*)"`).FindSubmatch(df)
	if m == nil {
		t.Fatal("the Dockerfile's go build has no -ldflags")
	}
	const version, revision = "9.8.7-dockerfile-test", "dockerfile-test-revision-5e1f"
	ldflags := strings.NewReplacer("${VERSION}", version, "${REVISION}", revision).Replace(string(m[1]))
	out := filepath.Join(t.TempDir(), "manager")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, "./cmd")
	cmd.Dir = path()
	// The environment of hack/image's build (TestImage), so that both share
	// the build cache and only the link is new.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build with the Dockerfile's ldflags: %v\n%s", err, b)
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{version, revision} {
		if !bytes.Contains(bin, []byte(v)) {
			t.Errorf("the binary does not hold %q: the Dockerfile's -X flags miss internal/version", v)
		}
	}
	mk, err := os.ReadFile(path("Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{"--build-arg VERSION=$(VERSION)", "--build-arg REVISION=$(REVISION)"} {
		if !bytes.Contains(mk, []byte(arg)) {
			t.Errorf("make docker-build does not pass %s", arg)
		}
	}
}
