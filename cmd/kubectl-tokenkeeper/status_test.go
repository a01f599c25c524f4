package main

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

const (
	msgValid   = "the token is valid"
	msgExpired = "the token expired"
)

// createFixture creates five ManagedTokens in ns whose status is written as
// of now, covering every EXPIRES / NEXT-REFRESH / READY shape.
func createFixture(t *testing.T, ns string, now time.Time) {
	t.Helper()
	ok := func(reason string) []metav1.Condition {
		return []metav1.Condition{
			cond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, reason, msgValid, now),
			cond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, "Authorized", "no human action needed", now),
		}
	}
	createToken(t, ns, "fb", tokenOpts{
		labels: map[string]string{"team": "a"},
		status: &tokensv1alpha1.ManagedTokenStatus{
			TokenType:           "FacebookUserLongLived",
			ExpirationTimestamp: tm(now, 59*24*time.Hour+12*time.Hour),
			NextRefreshTime:     tm(now, 52*24*time.Hour+12*time.Hour),
			Conditions:          ok("TokenValid"),
		},
	})
	createToken(t, ns, "amo", tokenOpts{
		provider: tokensv1alpha1.ProviderAmoCRM,
		labels:   map[string]string{"team": "b"},
		status: &tokensv1alpha1.ManagedTokenStatus{
			TokenType:           "AmoCRMOAuth",
			ExpirationTimestamp: tm(now, 23*time.Hour+30*time.Minute),
			NextRefreshTime:     tm(now, 21*time.Hour+30*time.Minute),
			LastRefreshTime:     tm(now, -30*time.Minute),
			ConsecutiveFailures: 2,
			Conditions:          ok("TokenValid"),
		},
	})
	createToken(t, ns, "expired", tokenOpts{
		labels: map[string]string{"team": "a"},
		status: &tokensv1alpha1.ManagedTokenStatus{
			TokenType:           "FacebookSystemUserExpiring",
			ExpirationTimestamp: tm(now, -(2*time.Hour + 30*time.Minute)),
			Conditions: []metav1.Condition{
				cond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "TokenExpired", msgExpired, now),
				cond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "TokenExpired", msgExpired+": log in again", now),
			},
		},
	})
	createToken(t, ns, "forever", tokenOpts{
		status: &tokensv1alpha1.ManagedTokenStatus{
			TokenType:  "FacebookSystemUserNonExpiring",
			Conditions: ok("TokenNeverExpires"),
		},
	})
	createToken(t, ns, "fresh", tokenOpts{provider: tokensv1alpha1.ProviderAmoCRM})
}

// wantRows is the table createFixture gives, with times measured from the
// moment the fixture was written (runs take seconds, not the minutes that
// would change these).
var wantRows = map[string]map[string]string{
	"fb":      {"NAME": "fb", "PROVIDER": "Facebook", "TYPE": "FacebookUserLongLived", "READY": "True", "REASON": "TokenValid", "EXPIRES": "59d", "NEXT-REFRESH": "52d", "REAUTH": "False"},
	"amo":     {"NAME": "amo", "PROVIDER": "AmoCRM", "TYPE": "AmoCRMOAuth", "READY": "True", "REASON": "TokenValid", "EXPIRES": "23h", "NEXT-REFRESH": "21h", "REAUTH": "False"},
	"expired": {"NAME": "expired", "PROVIDER": "Facebook", "TYPE": "FacebookSystemUserExpiring", "READY": "False", "REASON": "TokenExpired", "EXPIRES": "expired 2h ago", "NEXT-REFRESH": "-", "REAUTH": "True"},
	"forever": {"NAME": "forever", "PROVIDER": "Facebook", "TYPE": "FacebookSystemUserNonExpiring", "READY": "True", "REASON": "TokenNeverExpires", "EXPIRES": "never", "NEXT-REFRESH": "-", "REAUTH": "False"},
	"fresh":   {"NAME": "fresh", "PROVIDER": "AmoCRM", "TYPE": "-", "READY": "-", "REASON": "-", "EXPIRES": "-", "NEXT-REFRESH": "-", "REAUTH": "-"},
}

var wantHeader = []string{"NAME", "PROVIDER", "TYPE", "READY", "REASON", "EXPIRES", "NEXT-REFRESH", "REAUTH"}

func TestStatusTable(t *testing.T) {
	ns, other := newNamespace(t), newNamespace(t)
	now := time.Now()
	createFixture(t, ns, now)
	createToken(t, other, "elsewhere", tokenOpts{})

	r := mustPlugin(t, "status", "-n", ns)
	t.Logf("kubectl tokenkeeper status:\n%s", r.stdout)
	header, rows := parseTable(t, r.stdout)
	if !reflect.DeepEqual(header, wantHeader) {
		t.Errorf("header = %v, want %v", header, wantHeader)
	}
	if !reflect.DeepEqual(rows, wantRows) {
		t.Errorf("rows:\n%v\nwant:\n%v\noutput:\n%s", rows, wantRows, r.stdout)
	}
	// The API lists by name; the table keeps that order.
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
		names = append(names, strings.Fields(line)[0])
	}
	if !sort.StringsAreSorted(names) {
		t.Errorf("rows not sorted by name: %v", names)
	}

	// Named tokens only.
	r = mustPlugin(t, "status", "-n", ns, "amo", "forever")
	if _, rows = parseTable(t, r.stdout); len(rows) != 2 || rows["amo"] == nil || rows["forever"] == nil {
		t.Errorf("status amo forever printed %v", rows)
	}

	// A missing name is an error, but the others are still shown.
	r = plugin(t, "status", "-n", ns, "amo", "nope")
	if exitCode(r.err) != 1 || !strings.Contains(r.stderr, `"nope" not found`) || !strings.Contains(r.stdout, "amo") {
		t.Errorf("status amo nope: want exit 1, amo printed and a not-found error:\n%s", r)
	}

	// wide adds the output Secret, last refresh, failures and age.
	r = mustPlugin(t, "status", "-n", ns, "-o", "wide", "amo")
	header, rows = parseTable(t, r.stdout)
	if want := append(append([]string{}, wantHeader...), "SECRET", "LAST-REFRESH", "FAILURES", "AGE"); !reflect.DeepEqual(header, want) {
		t.Errorf("wide header = %v, want %v", header, want)
	}
	if got := rows["amo"]; got["SECRET"] != "amo-out" || got["LAST-REFRESH"] != "30m ago" || got["FAILURES"] != "2" {
		t.Errorf("wide row = %v", got)
	}

	// An empty namespace says so on stderr, as kubectl does.
	empty := newNamespace(t)
	r = mustPlugin(t, "status", "-n", empty)
	if r.stdout != "" || !strings.Contains(r.stderr, "No resources found in "+empty+" namespace.") {
		t.Errorf("empty namespace:\n%s", r)
	}
}

func TestStatusAllNamespaces(t *testing.T) {
	ns1, ns2 := newNamespace(t), newNamespace(t)
	createToken(t, ns1, "one", tokenOpts{})
	createToken(t, ns2, "two", tokenOpts{provider: tokensv1alpha1.ProviderAmoCRM})

	r := mustPlugin(t, "status", "-A")
	header, rows := parseTable(t, r.stdout)
	if want := append([]string{"NAMESPACE"}, wantHeader...); !reflect.DeepEqual(header, want) {
		t.Errorf("header = %v, want %v", header, want)
	}
	if rows[ns1+"/one"]["PROVIDER"] != "Facebook" || rows[ns2+"/two"]["PROVIDER"] != "AmoCRM" {
		t.Errorf("-A rows lack %s/one or %s/two:\n%s", ns1, ns2, r.stdout)
	}

	// Without -A there is no NAMESPACE column and only one namespace.
	r = mustPlugin(t, "status", "-n", ns1)
	header, rows = parseTable(t, r.stdout)
	if header[0] != "NAME" || len(rows) != 1 || rows["one"] == nil {
		t.Errorf("status -n %s:\n%s", ns1, r.stdout)
	}

	// -A cannot be combined with names.
	if r := plugin(t, "status", "-A", "one"); r.err == nil || !strings.Contains(r.stderr, "across all namespaces") {
		t.Errorf("status -A one should fail:\n%s", r)
	}
}

func TestStatusSelector(t *testing.T) {
	ns := newNamespace(t)
	createFixture(t, ns, time.Now())

	r := mustPlugin(t, "status", "-n", ns, "-l", "team=a")
	_, rows := parseTable(t, r.stdout)
	if got := keys(rows); !reflect.DeepEqual(got, []string{"expired", "fb"}) {
		t.Errorf("-l team=a selected %v, want [expired fb]", got)
	}
	r = mustPlugin(t, "status", "-n", ns, "-l", "team,team!=a")
	_, rows = parseTable(t, r.stdout)
	if got := keys(rows); !reflect.DeepEqual(got, []string{"amo"}) {
		t.Errorf("-l team,team!=a selected %v, want [amo]", got)
	}
	if r := plugin(t, "status", "-n", ns, "-l", "team in (a"); r.err == nil || !strings.Contains(r.stderr, "invalid label selector") {
		t.Errorf("a bad selector should fail:\n%s", r)
	}
}

func TestStatusJSONAndYAML(t *testing.T) {
	ns := newNamespace(t)
	createFixture(t, ns, time.Now())

	r := mustPlugin(t, "status", "-n", ns, "-o", "json", "-l", "team=a")
	var list tokensv1alpha1.ManagedTokenList
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("-o json is not a ManagedTokenList: %v\n%s", err, r.stdout)
	}
	if list.Kind != "ManagedTokenList" || list.APIVersion != "tokens.tokenkeeper.dev/v1alpha1" {
		t.Errorf("list kind/apiVersion = %q/%q", list.Kind, list.APIVersion)
	}
	var names []string
	for _, mt := range list.Items {
		names = append(names, mt.Name)
		if mt.Kind != "ManagedToken" || mt.Namespace != ns {
			t.Errorf("item %s: kind %q namespace %q", mt.Name, mt.Kind, mt.Namespace)
		}
		if len(mt.ManagedFields) != 0 {
			t.Errorf("item %s has managedFields", mt.Name)
		}
	}
	if !reflect.DeepEqual(names, []string{"expired", "fb"}) {
		t.Errorf("json items = %v, want [expired fb]", names)
	}
	if fb := list.Items[1]; fb.Status.TokenType != "FacebookUserLongLived" || fb.Status.ExpirationTimestamp == nil || len(fb.Status.Conditions) != 2 {
		t.Errorf("fb status did not round-trip: %+v", fb.Status)
	}

	// A single name still prints a list.
	r = mustPlugin(t, "status", "-n", ns, "-o", "yaml", "amo")
	list = tokensv1alpha1.ManagedTokenList{}
	if err := yaml.UnmarshalStrict([]byte(r.stdout), &list); err != nil {
		t.Fatalf("-o yaml is not a ManagedTokenList: %v\n%s", err, r.stdout)
	}
	if list.Kind != "ManagedTokenList" || len(list.Items) != 1 || list.Items[0].Spec.AmoCRM == nil || list.Items[0].Spec.AmoCRM.Domain != "x.amocrm.ru" {
		t.Errorf("yaml list = %+v", list)
	}

	if r := plugin(t, "status", "-n", ns, "-o", "xml"); r.err == nil || !strings.Contains(r.stderr, `unknown output format "xml"`) {
		t.Errorf("-o xml should fail:\n%s", r)
	}
}

// TestStatusExactTimes runs the command in-process with a fixed clock, so
// every humanized time is exact, including the edge cases.
func TestStatusExactTimes(t *testing.T) {
	ns := newNamespace(t)
	now := time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC)
	createFixture(t, ns, now)
	createToken(t, ns, "late", tokenOpts{status: &tokensv1alpha1.ManagedTokenStatus{
		TokenType:           "FacebookUserLongLived",
		ExpirationTimestamp: tm(now, 90*time.Second),
		NextRefreshTime:     tm(now, -(5*time.Minute + 30*time.Second)),
	}})
	createToken(t, ns, "stuck", tokenOpts{status: &tokensv1alpha1.ManagedTokenStatus{
		TokenType:           "FacebookUserLongLived",
		ExpirationTimestamp: tm(now, -3*24*time.Hour),
		NextRefreshTime:     tm(now, -4*24*time.Hour),
		HaltedInputs:        "gen=1",
	}})

	r := inProcess(t, now, "status", "-n", ns)
	if r.err != nil {
		t.Fatal(r)
	}
	_, rows := parseTable(t, r.stdout)
	want := map[string][2]string{ // EXPIRES, NEXT-REFRESH
		"fb":      {"59d", "52d"},
		"amo":     {"23h", "21h"},
		"expired": {"expired 2h ago", "-"},
		"forever": {"never", "-"},
		"fresh":   {"-", "-"},
		"late":    {"1m", "overdue 5m"},
		"stuck":   {"expired 3d ago", "halted"},
	}
	for name, w := range want {
		if got := [2]string{rows[name]["EXPIRES"], rows[name]["NEXT-REFRESH"]}; got != w {
			t.Errorf("%s: EXPIRES, NEXT-REFRESH = %q, want %q", name, got, w)
		}
	}
	if len(rows) != len(want) {
		t.Errorf("got %d rows, want %d:\n%s", len(rows), len(want), r.stdout)
	}

	// A day later the same objects read differently: the clock is used.
	r = inProcess(t, now.Add(24*time.Hour), "status", "-n", ns, "amo")
	if _, rows = parseTable(t, r.stdout); rows["amo"]["EXPIRES"] != "expired 30m ago" || rows["amo"]["NEXT-REFRESH"] != "overdue 2h" {
		t.Errorf("a day later amo = %v", rows["amo"])
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
