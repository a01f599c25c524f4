package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/version"
)

// listReader serves a fixed ManagedTokenList, standing in for the cache.
type listReader struct {
	client.Reader
	items []tokensv1alpha1.ManagedToken
	// copied counts lists that asked for deep copies.
	copied int
}

func (l *listReader) List(_ context.Context, list client.ObjectList, opts ...client.ListOption) error {
	lo := &client.ListOptions{}
	lo.ApplyOptions(opts)
	if lo.UnsafeDisableDeepCopy == nil || !*lo.UnsafeDisableDeepCopy {
		l.copied++
	}
	list.(*tokensv1alpha1.ManagedTokenList).Items = l.items
	return nil
}

func TestCollectorAndCounters(t *testing.T) {
	exp := metav1.NewTime(time.Unix(1800000000, 0))
	mt := tokensv1alpha1.ManagedToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "marketing", Name: "crm"},
		Spec:       tokensv1alpha1.ManagedTokenSpec{Provider: tokensv1alpha1.ProviderAmoCRM},
		Status: tokensv1alpha1.ManagedTokenStatus{
			ExpirationTimestamp: &exp,
			Conditions: []metav1.Condition{
				{Type: tokensv1alpha1.ConditionReady, Status: metav1.ConditionFalse},
				{Type: tokensv1alpha1.ConditionReauthorizationRequired, Status: metav1.ConditionTrue},
			},
			ConsecutiveFailures: 3,
		},
	}
	never := tokensv1alpha1.ManagedToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ads", Name: "page"},
		Spec:       tokensv1alpha1.ManagedTokenSpec{Provider: tokensv1alpha1.ProviderFacebook},
	}
	reader := &listReader{items: []tokensv1alpha1.ManagedToken{mt, never}}
	reg := prometheus.NewPedanticRegistry()
	m := New()
	if err := m.RegisterWith(reg, reader); err != nil {
		t.Fatal(err)
	}
	m.RecordRefresh("AmoCRM", "success")
	m.ObserveRequest("AmoCRM", "refresh_token", 200, 150*time.Millisecond)
	m.ObserveRequest("Facebook", "debug_token", 0, time.Second)

	want := `
# HELP tokenkeeper_token_expiration_timestamp_seconds Expiry of the published access token, in Unix seconds. Absent for tokens that never expire.
# TYPE tokenkeeper_token_expiration_timestamp_seconds gauge
tokenkeeper_token_expiration_timestamp_seconds{name="crm",namespace="marketing",provider="AmoCRM"} 1.8e+09
# HELP tokenkeeper_token_ready The Ready condition, one series per condition status (True, False, Unknown) with value 1 for the current one.
# TYPE tokenkeeper_token_ready gauge
tokenkeeper_token_ready{condition="False",name="crm",namespace="marketing",provider="AmoCRM"} 1
tokenkeeper_token_ready{condition="False",name="page",namespace="ads",provider="Facebook"} 0
tokenkeeper_token_ready{condition="True",name="crm",namespace="marketing",provider="AmoCRM"} 0
tokenkeeper_token_ready{condition="True",name="page",namespace="ads",provider="Facebook"} 0
tokenkeeper_token_ready{condition="Unknown",name="crm",namespace="marketing",provider="AmoCRM"} 0
tokenkeeper_token_ready{condition="Unknown",name="page",namespace="ads",provider="Facebook"} 1
# HELP tokenkeeper_token_reauthorization_required 1 when a human must re-authorize this token (ReauthorizationRequired=True), else 0.
# TYPE tokenkeeper_token_reauthorization_required gauge
tokenkeeper_token_reauthorization_required{name="crm",namespace="marketing",provider="AmoCRM"} 1
tokenkeeper_token_reauthorization_required{name="page",namespace="ads",provider="Facebook"} 0
# HELP tokenkeeper_provider_requests_total HTTP requests to providers by operation and HTTP status code ("error" when no response arrived).
# TYPE tokenkeeper_provider_requests_total counter
tokenkeeper_provider_requests_total{code="200",operation="refresh_token",provider="AmoCRM"} 1
tokenkeeper_provider_requests_total{code="error",operation="debug_token",provider="Facebook"} 1
# HELP tokenkeeper_refresh_total Token refreshes and bootstraps by provider and result (success, or the failure kind: Transient, Throttled, Reauthorize, Configuration, Blocked, TokenRejected).
# TYPE tokenkeeper_refresh_total counter
tokenkeeper_refresh_total{provider="AmoCRM",result="success"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tokenkeeper_token_expiration_timestamp_seconds", "tokenkeeper_token_ready",
		"tokenkeeper_token_reauthorization_required", "tokenkeeper_provider_requests_total", "tokenkeeper_refresh_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.duration); n != 2 {
		t.Fatalf("latency histogram series = %d, want 2", n)
	}
	if reader.copied != 0 {
		t.Fatalf("%d scrapes deep-copied every ManagedToken from the cache", reader.copied)
	}

	// A deleted token leaves no series behind: the gauges come from the list.
	reader.items = reader.items[:1]
	if n, err := testutil.GatherAndCount(reg, "tokenkeeper_token_reauthorization_required"); err != nil || n != 1 {
		t.Fatalf("series after deletion = %d (%v), want 1", n, err)
	}
}

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newBuildInfo(version.Info{Version: "1.2.3", Revision: "0123abcd", GoVersion: "go1.99"}))
	want := `
# HELP tokenkeeper_build_info Always 1; the labels tell the manager's version, source revision and Go version.
# TYPE tokenkeeper_build_info gauge
tokenkeeper_build_info{goversion="go1.99",revision="0123abcd",version="1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tokenkeeper_build_info"); err != nil {
		t.Fatal(err)
	}

	// New registers it with what this binary was built as.
	reg = prometheus.NewPedanticRegistry()
	if err := New().RegisterWith(reg, &listReader{}); err != nil {
		t.Fatal(err)
	}
	i := version.Get()
	want = strings.NewReplacer("1.2.3", i.Version, "0123abcd", i.Revision, "go1.99", i.GoVersion).Replace(want)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tokenkeeper_build_info"); err != nil {
		t.Fatal(err)
	}
}

func TestCallbacksStartAtZero(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New()
	if err := m.RegisterWith(reg, &listReader{}); err != nil {
		t.Fatal(err)
	}
	m.InitCallbacks([]string{"AmoCRM", "Facebook"}, []string{"accepted", "Expired"})
	m.RecordCallback("Facebook", "Expired")
	want := `
# HELP tokenkeeper_authorization_callbacks_total Requests to the authorization endpoint's OAuth callbacks by provider and result: accepted, or why one was refused (MissingState, UnknownState, Expired, Replayed, RefererNotAllowed, ConsentDenied, ProviderError, Unsolicited, Malformed, RateLimited, NotStored).
# TYPE tokenkeeper_authorization_callbacks_total counter
tokenkeeper_authorization_callbacks_total{provider="AmoCRM",result="Expired"} 0
tokenkeeper_authorization_callbacks_total{provider="AmoCRM",result="accepted"} 0
tokenkeeper_authorization_callbacks_total{provider="Facebook",result="Expired"} 1
tokenkeeper_authorization_callbacks_total{provider="Facebook",result="accepted"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tokenkeeper_authorization_callbacks_total"); err != nil {
		t.Fatal(err)
	}
}
