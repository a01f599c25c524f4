package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestKubectlDiscoversPlugin runs the plugin the way users do: kubectl finds
// kubectl-tokenkeeper on PATH and passes the arguments through.
func TestKubectlDiscoversPlugin(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is not on PATH (%v): it is needed to prove plugin discovery", err)
	}
	ns := newNamespace(t)
	createFixture(t, ns, time.Now())
	path := "PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH")

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
}
