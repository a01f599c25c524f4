package main

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

// The version and revision the test binary is stamped with (-ldflags -X, as
// the Makefile's LDFLAGS do).
const (
	stampVersion  = "0.0.0-test"
	stampRevision = "0123456789abcdef0123456789abcdef01234567"
	versionPkg    = "github.com/tokenkeeper/tokenkeeper/internal/version"
	stampFlags    = "-X " + versionPkg + ".version=" + stampVersion + " -X " + versionPkg + ".revision=" + stampRevision
)

func TestVersion(t *testing.T) {
	// No --kubeconfig: run() points KUBECONFIG at a missing file, so this also
	// shows that version needs no cluster.
	r := run(t, nil, pluginBin, "version")
	want := "kubectl-tokenkeeper version " + stampVersion + ", revision " + stampRevision + ", " + runtime.Version() + "\n"
	if r.err != nil || r.stdout != want {
		t.Errorf("version: want %q\n%s", want, r)
	}

	r = run(t, nil, pluginBin, "version", "-o", "json")
	var got map[string]string
	if r.err != nil || json.Unmarshal([]byte(r.stdout), &got) != nil {
		t.Fatalf("version -o json:\n%s", r)
	}
	if got["version"] != stampVersion || got["revision"] != stampRevision || got["goVersion"] != runtime.Version() {
		t.Errorf("version -o json = %v", got)
	}

	r = run(t, nil, pluginBin, "version", "-o", "yaml")
	if r.err == nil || !strings.Contains(r.stderr, `unknown output format "yaml"`) {
		t.Errorf("version -o yaml: want an error naming the format\n%s", r)
	}
}
