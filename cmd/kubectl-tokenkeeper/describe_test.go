package main

import (
	"context"
	"encoding/base64"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// Recognizable fake secret values: none may ever appear in any output.
const (
	fakeAccessToken  = "FAKE-ACCESS-TOKEN-never-print-me-7f3a9c2e" // 41 bytes
	fakeExpiresAt    = "2026-09-01T10:00:00Z"                      // 20 bytes
	fakeClientSecret = "FAKE-CLIENT-SECRET-never-print-me-91bd"
	fakeRefreshToken = "FAKE-REFRESH-TOKEN-never-print-me-c0ffee"
)

var fakeValues = []string{fakeAccessToken, fakeClientSecret, fakeRefreshToken}

// assertNoSecretValues fails if any fake value, or its base64, is in out.
func assertNoSecretValues(t *testing.T, out string) {
	t.Helper()
	for _, v := range fakeValues {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte(v)), v[:20]} {
			if strings.Contains(out, form) {
				t.Errorf("output leaks a secret value (%q):\n%s", form, out)
			}
		}
	}
}

func createSecret(t *testing.T, ns, name string, data map[string]string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	if err := k8sClient.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// createEvent records an events.k8s.io/v1 Event about a ManagedToken, as the
// controller's recorder does.
func createEvent(t *testing.T, mt *tokensv1alpha1.ManagedToken, name, typ, reason, note string, at time.Time) {
	t.Helper()
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Namespace: mt.Namespace, Name: name},
		EventTime:           metav1.NewMicroTime(at),
		ReportingController: "tokenkeeper",
		ReportingInstance:   "tokenkeeper-0",
		Action:              "Refresh",
		Reason:              reason,
		Type:                typ,
		Note:                note,
		Regarding: corev1.ObjectReference{
			APIVersion: tokensv1alpha1.GroupVersion.String(), Kind: "ManagedToken",
			Namespace: mt.Namespace, Name: mt.Name, UID: mt.UID,
		},
	}
	if err := k8sClient.Create(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
}

// describeFixture creates the "amo" ManagedToken with status, its
// credentials and output Secrets (fake values), and events about it and
// about a neighbour.
func describeFixture(t *testing.T, ns string, now time.Time) *tokensv1alpha1.ManagedToken {
	t.Helper()
	createSecret(t, ns, "creds", map[string]string{
		"client_id": "id-123", "client_secret": fakeClientSecret, "refresh_token": fakeRefreshToken,
	})
	createSecret(t, ns, "amo-out", map[string]string{
		tokensv1alpha1.OutputAccessTokenKey: fakeAccessToken,
		tokensv1alpha1.OutputExpiresAtKey:   fakeExpiresAt,
	})
	mt := createToken(t, ns, "amo", tokenOpts{
		provider:    tokensv1alpha1.ProviderAmoCRM,
		annotations: map[string]string{refreshKey: "2026-07-01T11:00:00Z"},
		status: &tokensv1alpha1.ManagedTokenStatus{
			ObservedGeneration:              1,
			TokenType:                       "AmoCRMOAuth",
			Scopes:                          []string{"crm", "notifications"},
			ExpirationTimestamp:             tm(now, 23*time.Hour+30*time.Minute),
			RefreshTokenExpirationTimestamp: tm(now, 89*24*time.Hour+12*time.Hour),
			LastRefreshTime:                 tm(now, -30*time.Minute),
			NextRefreshTime:                 tm(now, 21*time.Hour+30*time.Minute),
			LastCheckTime:                   tm(now, -10*time.Minute),
			ConsecutiveFailures:             1,
			LastFailureTime:                 tm(now, -20*time.Minute),
			LastHandledRefreshRequest:       "2026-07-01T11:00:00Z",
			Authorization: &tokensv1alpha1.AuthorizationStatus{RequestID: "0123456789ab", Phase: tokensv1alpha1.AuthorizationCompleted,
				ExpirationTimestamp: tm(now, -time.Hour), Message: "authorized at 2026-07-01T10:00:00Z: obtained a AmoCRMOAuth token"},
			Conditions: []metav1.Condition{
				cond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, "Authorized", "no human action needed", now.Add(-2*time.Hour)),
				cond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, "RefreshFailing", "the published token is still valid, but refresh: HTTP 503", now.Add(-3*time.Hour)),
			},
		},
	})
	neighbour := createToken(t, ns, "amo-two", tokenOpts{provider: tokensv1alpha1.ProviderAmoCRM})
	createEvent(t, mt, "amo.1", corev1.EventTypeNormal, "TokenRefreshed", "obtained a new AmoCRMOAuth token", now.Add(-30*time.Minute))
	createEvent(t, mt, "amo.2", corev1.EventTypeWarning, "RefreshFailing", "refresh: HTTP 503 from the provider", now.Add(-20*time.Minute))
	createEvent(t, neighbour, "amo-two.1", corev1.EventTypeWarning, "NeighbourEvent", "not about amo", now.Add(-time.Minute))
	return mt
}

// section returns the lines of out from the line starting with title up to
// the next unindented line.
func section(out, title string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, title):
			in = true
		case in && line != "" && !strings.HasPrefix(line, " "):
			return b.String()
		}
		if in {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func TestDescribe(t *testing.T) {
	ns := newNamespace(t)
	describeFixture(t, ns, time.Now())

	r := mustPlugin(t, "describe", "-n", ns, "amo")
	out := r.stdout
	t.Logf("kubectl tokenkeeper describe amo:\n%s", out)
	assertNoSecretValues(t, out+r.stderr)

	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^Name:\s+amo$`),
		regexp.MustCompile(`(?m)^Namespace:\s+` + ns + `$`),
		regexp.MustCompile(`(?m)^  Provider:\s+AmoCRM$`),
		regexp.MustCompile(`(?m)^  AmoCRM Domain:\s+x\.amocrm\.ru$`),
		regexp.MustCompile(`(?m)^  Credentials Secret:\s+creds$`),
		regexp.MustCompile(`(?m)^  Output Secret:\s+amo-out$`),
		regexp.MustCompile(`(?m)^  Refresh Before:\s+2h \(default\)$`),
		regexp.MustCompile(`(?m)^  Check Interval:\s+2h0m0s$`), // the CRD default
		regexp.MustCompile(`(?m)^  Token Type:\s+AmoCRMOAuth$`),
		regexp.MustCompile(`(?m)^  Scopes:\s+crm, notifications$`),
		regexp.MustCompile(`(?m)^  Expires:\s+\S+Z \(in 23h\)$`),
		regexp.MustCompile(`(?m)^  Refresh Token Expires:\s+\S+Z \(in 89d\)$`),
		regexp.MustCompile(`(?m)^  Last Refresh:\s+\S+Z \(30m ago\)$`),
		regexp.MustCompile(`(?m)^  Next Refresh:\s+\S+Z \(in 21h\)$`),
		regexp.MustCompile(`(?m)^  Last Check:\s+\S+Z \(10m ago\)$`),
		regexp.MustCompile(`(?m)^  Consecutive Failures:\s+1$`),
		regexp.MustCompile(`(?m)^  Last Failure:\s+\S+Z \(20m ago\)$`),
		regexp.MustCompile(`(?m)^  Halted:\s+No$`),
		regexp.MustCompile(`(?m)^  Refresh Requested At:\s+2026-07-01T11:00:00Z$`),
		regexp.MustCompile(`(?m)^  Authorization:\s+Completed \(request 0123456789ab, expires \S+Z \(1h ago\)\): authorized at 2026-07-01T10:00:00Z: obtained a AmoCRMOAuth token$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("describe lacks %s:\n%s", want, out)
		}
	}

	conds := section(out, "Conditions:")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^  TYPE\s+STATUS\s+REASON\s+LAST TRANSITION\s+MESSAGE$`),
		regexp.MustCompile(`(?m)^  Ready\s+True\s+RefreshFailing\s+\S+Z \(3h ago\)\s+the published token is still valid, but refresh: HTTP 503$`),
		regexp.MustCompile(`(?m)^  ReauthorizationRequired\s+False\s+Authorized\s+\S+Z \(2h ago\)\s+no human action needed$`),
	} {
		if !want.MatchString(conds) {
			t.Errorf("conditions lack %s:\n%s", want, conds)
		}
	}
	if strings.Index(conds, "  Ready") > strings.Index(conds, "  ReauthorizationRequired") {
		t.Errorf("Ready is not listed first:\n%s", conds)
	}

	secret := section(out, "Output Secret amo-out:")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^  access_token:\s+41 bytes$`),
		regexp.MustCompile(`(?m)^  expires_at:\s+20 bytes$`),
	} {
		if !want.MatchString(secret) {
			t.Errorf("output Secret section lacks %s:\n%s", want, secret)
		}
	}
	if strings.Contains(out, fakeExpiresAt) {
		t.Errorf("describe prints the expires_at value of the Secret:\n%s", out)
	}

	events := section(out, "Events:")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^  TYPE\s+REASON\s+AGE\s+FROM\s+MESSAGE$`),
		regexp.MustCompile(`(?m)^  Normal\s+TokenRefreshed\s+30m\s+tokenkeeper\s+obtained a new AmoCRMOAuth token$`),
		regexp.MustCompile(`(?m)^  Warning\s+RefreshFailing\s+20m\s+tokenkeeper\s+refresh: HTTP 503 from the provider$`),
	} {
		if !want.MatchString(events) {
			t.Errorf("events lack %s:\n%s", want, events)
		}
	}
	if strings.Contains(out, "NeighbourEvent") {
		t.Errorf("describe amo shows an event about amo-two:\n%s", events)
	}
	if strings.Index(events, "TokenRefreshed") > strings.Index(events, "RefreshFailing") {
		t.Errorf("events are not oldest first:\n%s", events)
	}

	// A ManagedToken without status or Secret says so (and shows its own
	// event); a missing name fails.
	r = plugin(t, "describe", "-n", ns, "amo-two", "missing")
	if exitCode(r.err) != 1 || !strings.Contains(r.stderr, `"missing" not found`) {
		t.Errorf("describe amo-two missing:\n%s", r)
	}
	for _, want := range []string{"Output Secret amo-two-out:\n  <not found", "Conditions:  <none>", "Expires:  <none>", "NeighbourEvent"} {
		if !strings.Contains(squeeze(r.stdout), want) {
			t.Errorf("describe amo-two lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "TokenRefreshed") {
		t.Errorf("describe amo-two shows an event about amo:\n%s", r.stdout)
	}
}

// squeeze collapses runs of spaces to two, so tabwriter padding does not
// matter.
func squeeze(s string) string {
	return regexp.MustCompile(`  +`).ReplaceAllString(s, "  ")
}

// TestDescribeCoreEventsFallback runs describe as a user who may list
// core/v1 Events but not events.k8s.io/v1 Events, nor read Secrets: the
// events still show, and the Secret section says it is forbidden.
func TestDescribeCoreEventsFallback(t *testing.T) {
	ns := newNamespace(t)
	describeFixture(t, ns, time.Now())
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tokens-viewer"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{tokensv1alpha1.GroupVersion.Group}, Resources: []string{"managedtokens"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"list"}},
		},
	}
	user := "viewer-" + ns
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tokens-viewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}
	if err := k8sClient.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
	viewer, err := writeKubeconfig(t.TempDir(), user, nil)
	if err != nil {
		t.Fatal(err)
	}

	// RBAC reaches the authorizer through an informer: wait for it.
	var r result
	deadline := time.Now().Add(20 * time.Second)
	for {
		r = run(t, nil, pluginBin, "--kubeconfig", viewer, "describe", "-n", ns, "amo")
		if r.err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.err != nil {
		t.Fatalf("describe as %s:\n%s", user, r)
	}
	assertNoSecretValues(t, r.stdout+r.stderr)
	events := section(r.stdout, "Events:")
	if !regexp.MustCompile(`(?m)^  Warning\s+RefreshFailing\s+20m\s+tokenkeeper\s+refresh: HTTP 503`).MatchString(events) ||
		!strings.Contains(events, "TokenRefreshed") || strings.Contains(events, "NeighbourEvent") {
		t.Errorf("core/v1 fallback events:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "Output Secret amo-out:\n  <cannot read it: forbidden>") {
		t.Errorf("forbidden Secret not reported:\n%s", r.stdout)
	}

	// Sanity: this user really cannot list events.k8s.io/v1 Events, so the
	// events above came through the fallback.
	data, err := os.ReadFile(viewer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	vc, err := client.New(cfg, client.Options{Scheme: newScheme()})
	if err != nil {
		t.Fatal(err)
	}
	if err := vc.List(ctx, &eventsv1.EventList{}, client.InNamespace(ns)); !apierrors.IsForbidden(err) {
		t.Errorf("viewer listing events.k8s.io/v1 Events: err = %v, want Forbidden (else the fallback is untested)", err)
	}
}

// TestRefreshBeforeText: describe shows the refreshBefore the controller
// applies, which for a token only a human can renew is not the provider's.
func TestRefreshBeforeText(t *testing.T) {
	next := metav1.Now()
	for _, tc := range []struct {
		name     string
		provider tokensv1alpha1.Provider
		spec     *metav1.Duration
		status   tokensv1alpha1.ManagedTokenStatus
		want     string
	}{
		{"set in spec", tokensv1alpha1.ProviderAmoCRM, &metav1.Duration{Duration: 3 * time.Hour}, tokensv1alpha1.ManagedTokenStatus{}, "3h0m0s"},
		{"renewed AmoCRM token", tokensv1alpha1.ProviderAmoCRM, nil, tokensv1alpha1.ManagedTokenStatus{TokenType: "AmoCRMOAuth", NextRefreshTime: &next}, "2h (default)"},
		{"renewed Facebook token", tokensv1alpha1.ProviderFacebook, nil, tokensv1alpha1.ManagedTokenStatus{TokenType: "SystemUser", NextRefreshTime: &next}, "168h (default)"},
		{"Facebook user token", tokensv1alpha1.ProviderFacebook, nil, tokensv1alpha1.ManagedTokenStatus{TokenType: "User"}, "336h (default for a token only a human can renew)"},
		{"AmoCRM long-lived token", tokensv1alpha1.ProviderAmoCRM, nil, tokensv1alpha1.ManagedTokenStatus{TokenType: "AmoCRMLongLived"}, "336h (default for a token only a human can renew)"},
		{"no token yet", tokensv1alpha1.ProviderAmoCRM, nil, tokensv1alpha1.ManagedTokenStatus{}, "2h (default; 336h if only a human can renew the token)"},
	} {
		mt := &tokensv1alpha1.ManagedToken{Spec: tokensv1alpha1.ManagedTokenSpec{Provider: tc.provider, RefreshBefore: tc.spec}, Status: tc.status}
		if got := refreshBeforeText(mt); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
