package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/authz"
)

// TestKubectlDiscoversPlugin runs the plugin the way users do: kubectl finds
// kubectl-tokenkeeper on PATH and passes the arguments through.
func TestKubectlDiscoversPlugin(t *testing.T) {
	kubectl, path := kubectlWithPlugin(t)
	ns := newNamespace(t)
	createFixture(t, ns, time.Now())

	r := run(t, []string{path}, kubectl, "plugin", "list")
	if !strings.Contains(r.stdout, filepath.Join(binDir, "kubectl-tokenkeeper")) {
		t.Errorf("kubectl plugin list does not list %s:\n%s", binDir, r)
	}

	r = run(t, []string{path}, kubectl, "tokenkeeper", "status", "--kubeconfig", kubeconfig, "-n", ns)
	if r.err != nil {
		t.Fatalf("kubectl tokenkeeper status:\n%s", r)
	}
	header, rows := parseTable(t, r.stdout)
	if !reflect.DeepEqual(header, wantHeader) || !reflect.DeepEqual(rows, wantRows) {
		t.Errorf("kubectl tokenkeeper status:\n%s", r.stdout)
	}

	r = run(t, []string{path}, kubectl, "tokenkeeper", "refresh", "--kubeconfig", kubeconfig, "-n", ns, "fb")
	if r.err != nil || r.stdout != "managedtoken/fb refresh requested\n" {
		t.Errorf("kubectl tokenkeeper refresh fb:\n%s", r)
	}
	if got := refreshedSet(t, ns); !reflect.DeepEqual(got, []string{"fb"}) {
		t.Errorf("kubectl tokenkeeper refresh fb annotated %v", got)
	}

	// Help names the command as users type it.
	r = run(t, []string{path}, kubectl, "tokenkeeper", "--help")
	if !strings.Contains(r.stdout, "kubectl tokenkeeper [command]") {
		t.Errorf("help does not say `kubectl tokenkeeper`:\n%s", r)
	}
	if !strings.Contains(r.stdout, "  authorize ") {
		t.Errorf("help does not list authorize:\n%s", r)
	}
}

// kubectlWithPlugin returns kubectl's path and the PATH entry that lets it
// discover the built plugin.
func kubectlWithPlugin(t *testing.T) (kubectl, path string) {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is not on PATH (%v): it is needed to prove plugin discovery", err)
	}
	return kubectl, "PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH")
}

// TestKubectlAuthorizeTimeout: with no operator to answer, `kubectl
// tokenkeeper authorize --timeout 3s` gives up in about 3s, exits 1 and says
// what the operator needs.
func TestKubectlAuthorizeTimeout(t *testing.T) {
	kubectl, path := kubectlWithPlugin(t)
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())

	start := time.Now()
	r := run(t, []string{path}, kubectl, "tokenkeeper", "authorize", "fb", "--timeout", "3s", "--kubeconfig", kubeconfig, "-n", ns)
	elapsed := time.Since(start)
	id := authz.RequestID(getToken(t, ns, "fb").Annotations[authorizeKey])
	want := "error: timed out after 3s: the operator never picked up request " + id + " (status.authorization of managedtoken/fb never showed it). The operator must run with --authorization-bind-address, and spec.facebook.redirectURI"
	if exitCode(r.err) != 1 || id == "" || !strings.Contains(r.stderr, want) || r.stdout != "" {
		t.Errorf("want exit 1 and %q:\n%s", want, r)
	}
	if elapsed < 3*time.Second || elapsed > 20*time.Second {
		t.Errorf("took %s, want about 3s", elapsed)
	}
	if strings.Contains(r.stderr, "hint:") {
		t.Errorf("the 30s hint came within a 3s timeout:\n%s", r)
	}
}

// TestKubectlAuthorizeSuccess: the whole flow through kubectl's plugin
// discovery, with a goroutine playing the operator.
func TestKubectlAuthorizeSuccess(t *testing.T) {
	kubectl, path := kubectlWithPlugin(t)
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	op := fakeOperator{ns: ns, name: "fb"}
	consented := make(chan struct{})
	expires := tm(time.Now(), 60*24*time.Hour)

	r := startProcess(t, []string{path}, kubectl, "tokenkeeper", "authorize", "fb", "--kubeconfig", kubeconfig, "-n", ns)
	waitOp := goOperator(t, func() error {
		hash, err := op.awaitRequest("")
		if err != nil {
			return err
		}
		if err := op.pending(hash); err != nil {
			return err
		}
		<-consented
		return op.complete(hash, 1, expires)
	})
	state, _ := consent(t, r, ns, "fb")
	close(consented)
	err := r.wait(t, 30*time.Second)
	waitOp()
	want := "managedtoken/fb authorized: Ready, token expires " + expires.UTC().Format(time.RFC3339) + " (in 5"
	if err != nil || !strings.HasPrefix(lastLine(r.stdout.String()), want) {
		t.Errorf("want exit 0 and %q:\n%s", want, r)
	}
	assertStateOnlyInURL(t, r, ns, "fb", state)
}
