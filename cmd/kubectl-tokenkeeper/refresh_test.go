package main

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

const refreshKey = tokensv1alpha1.RefreshRequestedAtAnnotation

// requested returns, per ManagedToken in ns, the refresh annotation's value
// ("" when absent).
func requested(t *testing.T, ns string) map[string]string {
	t.Helper()
	list := &tokensv1alpha1.ManagedTokenList{}
	if err := k8sClient.List(context.Background(), list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, mt := range list.Items {
		out[mt.Name] = mt.Annotations[refreshKey]
	}
	return out
}

// refreshedSet is the names whose annotation is set.
func refreshedSet(t *testing.T, ns string) []string {
	t.Helper()
	var out []string
	stamps := requested(t, ns)
	for _, name := range keys(stamps) {
		if stamps[name] != "" {
			out = append(out, name)
		}
	}
	return out
}

// checkStamp asserts v is an RFC 3339 time within [before, after].
func checkStamp(t *testing.T, name, v string, before, after time.Time) {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		t.Errorf("%s: annotation %q is not RFC 3339: %v", name, v, err)
		return
	}
	if at.Before(before.Add(-time.Second)) || at.After(after.Add(time.Second)) {
		t.Errorf("%s: annotation %s is not between %s and %s", name, v, before, after)
	}
}

func TestRefreshByName(t *testing.T) {
	ns := newNamespace(t)
	createFixture(t, ns, time.Now())
	before := time.Now()
	r := mustPlugin(t, "refresh", "-n", ns, "amo", "forever")
	after := time.Now()
	if want := "managedtoken/amo refresh requested\nmanagedtoken/forever refresh requested\n"; r.stdout != want {
		t.Errorf("stdout = %q, want %q", r.stdout, want)
	}
	if got := refreshedSet(t, ns); !reflect.DeepEqual(got, []string{"amo", "forever"}) {
		t.Errorf("annotated %v, want [amo forever]", got)
	}
	stamps := requested(t, ns)
	checkStamp(t, "amo", stamps["amo"], before, after)
	checkStamp(t, "forever", stamps["forever"], before, after)

	// A missing name fails, and does not stop the others.
	r = plugin(t, "refresh", "-n", ns, "nope", "fb")
	if exitCode(r.err) != 1 || !strings.Contains(r.stderr, `"nope" not found`) || r.stdout != "managedtoken/fb refresh requested\n" {
		t.Errorf("refresh nope fb:\n%s", r)
	}
	if getToken(t, ns, "fb").Annotations[refreshKey] == "" {
		t.Error("fb was not refreshed after the missing name")
	}
	// The merge patch never creates an object.
	if _, ok := requested(t, ns)["nope"]; ok {
		t.Error("refresh created ManagedToken nope")
	}
}

func TestRefreshBySelector(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	createFixture(t, ns, time.Now())
	createToken(t, other, "fb", tokenOpts{labels: map[string]string{"team": "a"}})

	r := mustPlugin(t, "refresh", "-n", ns, "-l", "team=a")
	if got := refreshedSet(t, ns); !reflect.DeepEqual(got, []string{"expired", "fb"}) {
		t.Errorf("-l team=a annotated %v, want [expired fb]", got)
	}
	if !strings.Contains(r.stdout, "managedtoken/expired refresh requested") || !strings.Contains(r.stdout, "managedtoken/fb refresh requested") {
		t.Errorf("stdout = %q", r.stdout)
	}
	if got := refreshedSet(t, other); len(got) != 0 {
		t.Errorf("-n %s -l team=a also annotated %v in %s", ns, got, other)
	}

	// A selector that matches nothing is an error, not a silent no-op.
	if r := plugin(t, "refresh", "-n", ns, "-l", "team=zzz"); r.err == nil || !strings.Contains(r.stderr, `no ManagedTokens match selector "team=zzz"`) {
		t.Errorf("refresh -l team=zzz:\n%s", r)
	}
}

func TestRefreshAll(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	createFixture(t, ns, time.Now())
	createToken(t, other, "elsewhere", tokenOpts{})

	r := mustPlugin(t, "refresh", "-n", ns, "--all")
	if got := refreshedSet(t, ns); !reflect.DeepEqual(got, []string{"amo", "expired", "fb", "forever", "fresh"}) {
		t.Errorf("--all annotated %v", got)
	}
	if n := strings.Count(r.stdout, " refresh requested\n"); n != 5 {
		t.Errorf("--all printed %d lines:\n%s", n, r.stdout)
	}
	if got := refreshedSet(t, other); len(got) != 0 {
		t.Errorf("--all in %s also annotated %v in %s", ns, got, other)
	}

	// -A --all reaches the other namespace too.
	mustPlugin(t, "refresh", "-A", "--all")
	if got := refreshedSet(t, other); !reflect.DeepEqual(got, []string{"elsewhere"}) {
		t.Errorf("-A --all annotated %v in %s", got, other)
	}
}

func TestRefreshRequiresATarget(t *testing.T) {
	ns := newNamespace(t)
	createFixture(t, ns, time.Now())
	for _, args := range [][]string{
		{"refresh", "-n", ns},
		{"refresh", "-n", ns, "-A"},
	} {
		r := plugin(t, args...)
		if exitCode(r.err) != 1 || !strings.Contains(r.stderr, "error: no ManagedToken selected: name one or more ManagedTokens, or pass --all or -l") {
			t.Errorf("%v: want exit 1 and a clear error:\n%s", args, r)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"refresh", "-n", ns, "fb", "--all"}, "cannot be combined with --all or -l"},
		{[]string{"refresh", "-n", ns, "fb", "-l", "team=a"}, "cannot be combined with --all or -l"},
		{[]string{"refresh", "-n", ns, "--all", "-l", "team=a"}, "--all and -l cannot be combined"},
		{[]string{"refresh", "-A", "fb"}, "-A works only with --all or -l"},
	} {
		if r := plugin(t, tc.args...); r.err == nil || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: want error %q:\n%s", tc.args, tc.want, r)
		}
	}
	if got := refreshedSet(t, ns); len(got) != 0 {
		t.Errorf("refused commands still annotated %v", got)
	}
}

// TestRefreshPatchesOnlyTheAnnotation checks, with a fixed clock, the exact
// value written and that labels, other annotations, spec and status survive.
func TestRefreshPatchesOnlyTheAnnotation(t *testing.T) {
	ns := newNamespace(t)
	now := time.Date(2026, 7, 1, 12, 0, 0, 123456789, time.UTC)
	createToken(t, ns, "amo", tokenOpts{
		provider:    tokensv1alpha1.ProviderAmoCRM,
		labels:      map[string]string{"team": "b"},
		annotations: map[string]string{"keep": "me", refreshKey: "old"},
		status:      &tokensv1alpha1.ManagedTokenStatus{TokenType: "AmoCRMOAuth", LastHandledRefreshRequest: "old"},
	})
	before := getToken(t, ns, "amo")

	r := inProcess(t, now, "refresh", "-n", ns, "amo")
	if r.err != nil || r.stdout != "managedtoken/amo refresh requested\n" {
		t.Fatalf("refresh:\n%s", r)
	}
	after := getToken(t, ns, "amo")
	if got, want := after.Annotations[refreshKey], "2026-07-01T12:00:00.123456789Z"; got != want {
		t.Errorf("annotation = %q, want %q", got, want)
	}
	if after.Annotations["keep"] != "me" || after.Labels["team"] != "b" {
		t.Errorf("other metadata lost: labels %v annotations %v", after.Labels, after.Annotations)
	}
	if !reflect.DeepEqual(after.Spec, before.Spec) || !reflect.DeepEqual(after.Status, before.Status) {
		t.Errorf("spec or status changed:\nbefore %+v %+v\nafter  %+v %+v", before.Spec, before.Status, after.Spec, after.Status)
	}
	// Spec is unchanged, so the generation is too: the controller sees only
	// the annotation.
	if after.Generation != before.Generation {
		t.Errorf("generation %d -> %d", before.Generation, after.Generation)
	}
}

func TestRefreshPatch(t *testing.T) {
	got, err := refreshPatch(time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"metadata":{"annotations":{"tokens.tokenkeeper.dev/refresh-requested-at":"2026-01-02T02:04:05.000000006Z"}}}`
	if string(got) != want {
		t.Errorf("patch = %s, want %s", got, want)
	}
}
