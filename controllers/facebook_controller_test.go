package controllers

import (
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

func (h *harness) fbSetup(token string) {
	h.t.Helper()
	h.putCreds("facebook-app", map[string]string{"app_id": testAppID, "app_secret": testAppSecret, "access_token": token})
	mt := validFacebook(h.ns, "ads")
	mt.Spec.Facebook = &tokensv1alpha1.FacebookSpec{GraphAPIVersion: "v25.0"}
	h.createMT(mt)
}

// fbRevokedAtNextCheck sets up a Ready non-expiring token, revokes it at
// the provider, and lets the next check find that out.
func (h *harness) fbRevokedAtNextCheck() {
	h.t.Helper()
	tok := h.fb.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	h.fbSetup(tok)
	h.reconcile()
	h.fb.Revoke(tok)
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "")
}

func TestFacebookShortLivedUserTokenIsExchangedOnce(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	short := h.fb.IssueToken(facebookfake.KindUserShort, h.clk.Now().Add(time.Hour))
	h.fbSetup(short)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)

	out := h.output()
	long := string(out.Data["access_token"])
	if long == "" || long == short {
		t.Fatal("the output Secret must hold the exchanged long-lived token")
	}
	exp, err := time.Parse(time.RFC3339, string(out.Data["expires_at"]))
	if err != nil || exp.Sub(h.clk.Now()) < 59*24*time.Hour || exp.Sub(h.clk.Now()) > 61*24*time.Hour {
		t.Fatalf("expires_at = %q, want about 60 days ahead (%v)", out.Data["expires_at"], err)
	}
	st := h.get().Status
	if st.TokenType != "FacebookUserLongLived" || st.DataAccessExpirationTimestamp == nil || st.NextRefreshTime != nil {
		t.Fatalf("status: type %q dataAccess %v nextRefresh %v", st.TokenType, st.DataAccessExpirationTimestamp, st.NextRefreshTime)
	}
	if got := h.fb.Versions(); len(got) == 0 || got[0] != "v25.0" {
		t.Fatalf("Graph API version from spec not used: %v", got)
	}

	// The long-lived user token cannot be extended: never exchanged again,
	// and a human is asked to log in before expiry.
	for i := 0; i < 3; i++ {
		h.clk.Step(3 * time.Hour)
		h.reconcile()
	}
	h.clk.SetTime(exp.Add(-6 * 24 * time.Hour))
	h.reconcile()
	h.reconcile()
	if h.fb.Calls("exchange") != 1 || h.fb.Calls("refresh") != 0 {
		t.Fatalf("exchanges = %d refreshes = %d, want 1 and 0", h.fb.Calls("exchange"), h.fb.Calls("refresh"))
	}
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, ReasonTokenExpiringSoon)
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if c := h.cond(tokensv1alpha1.ConditionReauthorizationRequired); !strings.Contains(c.Message, exp.UTC().Format(time.RFC3339)) {
		t.Fatalf("the message must say by when a human must log in: %q", c.Message)
	}
}

func TestFacebookExpiresInMissingAsksDebugToken(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{}, facebookfake.Options{OmitExpiresIn: true, LongLivedTTL: 50 * 24 * time.Hour})
	h.fbSetup(h.fb.IssueToken(facebookfake.KindUserShort, h.clk.Now().Add(time.Hour)))
	h.reconcile()
	exp := h.get().Status.ExpirationTimestamp
	if exp == nil || exp.Sub(h.clk.Now()) < 49*24*time.Hour || exp.Sub(h.clk.Now()) > 51*24*time.Hour {
		t.Fatalf("expiry = %v, want the 50 days debug_token reports (never an assumed 60 days)", exp)
	}
}

func TestFacebookExpiringSystemUserTokenIsRefreshed(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	orig := h.fb.IssueToken(facebookfake.KindSystemUserExpiring, h.clk.Now().Add(3*24*time.Hour))
	h.fbSetup(orig)
	h.reconcile() // adopt
	h.reconcile() // 3 days left, refreshBefore 168h capped at half of that
	if h.fb.Calls("refresh") != 0 {
		t.Fatal("refreshed before the capped refreshBefore")
	}
	if c := h.cond(tokensv1alpha1.ConditionReady); !strings.Contains(c.Message, "capped at 36h0m0s") {
		t.Fatalf("Ready must say refreshBefore is capped: %s", c.Message)
	}
	h.advancePastNextRefresh()
	h.reconcile()
	if h.fb.Calls("refresh") != 1 {
		t.Fatalf("refreshes = %d, want 1", h.fb.Calls("refresh"))
	}
	out := h.output()
	if string(out.Data["access_token"]) == orig {
		t.Fatal("the refreshed token must replace the old one")
	}
	exp, _ := time.Parse(time.RFC3339, string(out.Data["expires_at"]))
	if exp.Sub(h.clk.Now()) < 59*24*time.Hour {
		t.Fatalf("refreshed expiry %v is not about 60 days ahead", exp)
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if st := h.get().Status; st.TokenType != "FacebookSystemUserExpiring" || st.NextRefreshTime == nil {
		t.Fatalf("status: type %q next %v", st.TokenType, st.NextRefreshTime)
	}
	h.reconcile()
	if h.fb.Calls("refresh") != 1 {
		t.Fatal("a refreshed token must not be refreshed again before it is due")
	}
}

func TestFacebookNonExpiringToken(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.fbSetup(h.fb.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{}))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenNeverExpires)
	out := h.output()
	if _, ok := out.Data["expires_at"]; ok || len(out.Data) != 1 {
		t.Fatalf("a non-expiring token has no expires_at: keys %v", keys(out.Data))
	}
	if st := h.get().Status; st.ExpirationTimestamp != nil || st.TokenType != "FacebookSystemUserNonExpiring" {
		t.Fatalf("status: exp %v type %q", st.ExpirationTimestamp, st.TokenType)
	}
	checks := h.fb.Calls("debug_token")
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	if h.fb.Calls("debug_token") != checks+1 || h.fb.Calls("exchange")+h.fb.Calls("refresh") != 0 {
		t.Fatal("a non-expiring token is validated each check and never exchanged")
	}
}

func TestFacebookDataAccessExpiry(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{}, facebookfake.Options{DataAccessTTL: 20 * 24 * time.Hour})
	h.fbSetup(h.fb.IssueToken(facebookfake.KindUserLong, h.clk.Now().Add(50*24*time.Hour)))
	h.reconcile()
	da := h.get().Status.DataAccessExpirationTimestamp
	if da == nil {
		t.Fatal("no dataAccessExpirationTimestamp")
	}
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)
	// A user token only a human can renew: warned 14 days ahead.
	h.clk.SetTime(da.Add(-15 * 24 * time.Hour))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)
	h.clk.SetTime(da.Add(-13 * 24 * time.Hour))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, ReasonDataAccessExpiringSoon)
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	// Lapsed: the token still authenticates, but data calls fail, so
	// workloads cannot use it: not Ready, said once.
	h.clk.SetTime(da.Add(time.Hour))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonDataAccessExpired)
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, ReasonDataAccessExpired)
	h.clk.Step(3 * time.Hour)
	h.reconcile()
	if n := h.events.count(ReasonDataAccessExpired); n != 2 {
		t.Fatalf("%d %s events, want 2 (one per condition's transition)", n, ReasonDataAccessExpired)
	}
}

func TestFacebookRevokedTokenFoundByProbe(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.fbRevokedAtNextCheck()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "")
	calls := h.fb.Calls("debug_token")
	for i := 0; i < 3; i++ {
		h.clk.Step(3 * time.Hour)
		h.reconcile()
	}
	if h.fb.Calls("debug_token") != calls {
		t.Fatal("no more calls after a token needs a human")
	}
	// A human pastes a new token: picked up.
	h.putCreds("facebook-app", map[string]string{"app_id": testAppID, "app_secret": testAppSecret,
		"access_token": h.fb.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})})
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenNeverExpires)
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)
}

func TestFacebookThrottled(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.fbSetup(h.fb.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{}))
	h.reconcile()
	h.fb.FailNext("debug_token", 1, http.StatusBadRequest,
		`{"error":{"message":"(#4) Application request limit reached","type":"OAuthException","is_transient":true,"code":4,"fbtrace_id":"AbC"}}`,
		http.Header{"X-App-Usage": {`{"call_count":100,"total_time":20,"total_cputime":15}`}})
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	st := h.get().Status
	if st.NextRetryTime == nil || st.ConsecutiveFailures != 1 {
		t.Fatalf("throttling must schedule a retry: next %v failures %d", st.NextRetryTime, st.ConsecutiveFailures)
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonRefreshFailing)
	calls := h.fb.Calls("debug_token")
	h.reconcile()
	if h.fb.Calls("debug_token") != calls {
		t.Fatal("retried before the back-off elapsed")
	}
	h.clk.SetTime(st.NextRetryTime.Add(time.Second))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenNeverExpires)
}

func TestFacebookWrongAppSecretIsAConfigurationError(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	short := h.fb.IssueToken(facebookfake.KindUserShort, h.clk.Now().Add(time.Hour))
	h.putCreds("facebook-app", map[string]string{"app_id": testAppID, "app_secret": "wrong-secret-value-123456", "access_token": short})
	h.createMT(validFacebook(h.ns, "ads"))
	h.reconcile()
	c := h.cond(tokensv1alpha1.ConditionReady)
	if c == nil || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "app_secret") {
		t.Fatalf("Ready = %+v, want False naming app_secret", c)
	}
	if strings.Contains(c.Message, "wrong-secret-value-123456") {
		t.Fatal("the secret leaked into the condition")
	}
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)
}

// TestFacebookHaltResumesOnceWhenInputsChange: after a token needs a human,
// changing the spec retries once and keeps the honest status; it does not
// report the revoked token as Ready.
func TestFacebookHaltResumesOnceWhenInputsChange(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.fbRevokedAtNextCheck()
	calls := h.fb.Calls("debug_token")

	mt := h.get()
	mt.Spec.CheckInterval = &metav1.Duration{Duration: 3 * time.Hour}
	if err := k8sClient.Update(h.ctx, mt); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	h.reconcile()
	if got := h.fb.Calls("debug_token") - calls; got != 1 {
		t.Fatalf("a changed input must retry exactly once, got %d calls", got)
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "")
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "")
}
