package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// Issue 10 headline cases against the real API server (provider fidelity).

// TestFidelityRequireAppSecretApp: an app with "Require App Secret" (and,
// unconfirmed, proofs required on app-token calls too) works end to end:
// the short-lived token is exchanged and checked, every Graph call that
// carries a token carries a correct appsecret_proof.
func TestFidelityRequireAppSecretApp(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{}, facebookfake.Options{RequireAppSecret: true, AppTokenCallsNeedProof: true})
	h.fbSetup(h.fb.IssueToken(facebookfake.KindUserShort, h.clk.Now().Add(time.Hour)))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if n := h.fb.Calls(facebookfake.OpDebugToken); n < 2 || h.fb.Proofs(facebookfake.OpDebugToken) != n {
		t.Fatalf("debug_token calls %d, with a correct proof %d", n, h.fb.Proofs(facebookfake.OpDebugToken))
	}
	if h.fb.Calls("exchange") != 1 {
		t.Fatalf("exchanges = %d, want 1", h.fb.Calls("exchange"))
	}
}

// TestFidelityUnknownTokenTypeIsMonitored: a Login-for-Business token is
// monitored and named, not halted as a configuration error.
func TestFidelityUnknownTokenTypeIsMonitored(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.fbSetup(h.fb.IssueToken(facebookfake.KindBusinessIntegrationSystemUser, time.Time{}))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenNeverExpires)
	if st := h.get().Status; st.TokenType != "FacebookBusinessIntegrationSystemUser" || st.HaltedInputs != "" {
		t.Fatalf("status: type %q halted %q", st.TokenType, st.HaltedInputs)
	}
}

// fbPageMT gives user a role on Page pageID, puts user into the credentials
// Secret, creates ManagedToken "page" for that Page, and reconciles once.
func (h *harness) fbPageMT(user, pageID string) {
	h.t.Helper()
	h.fb.AddPage(pageID, user)
	h.putCreds("facebook-app", map[string]string{"app_id": testAppID, "app_secret": testAppSecret, "access_token": user})
	mt := validFacebook(h.ns, "page")
	mt.Spec.Facebook = &tokensv1alpha1.FacebookSpec{PageID: pageID}
	h.createMT(mt)
	h.reconcile()
}

// TestFidelityPageToken: with spec.facebook.pageID the Page token is
// derived, published (the output Secret holds the Page token, the state
// keeps the managed system-user token), and flagged when the user token is
// revoked. NEEDS the controller to publish Token.Published().
func TestFidelityPageToken(t *testing.T) {
	const pageID = "104169029247128"
	h := newHarness(t, amocrmfake.Options{}, facebookfake.Options{RequireAppSecret: true})
	user := h.fb.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	h.fbPageMT(user, pageID)
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenNeverExpires)

	page := h.fb.PageToken(user, pageID)
	if page == "" {
		t.Fatal("no Page token was derived")
	}
	st := h.state()
	if st.Token == nil || st.Token.AccessToken != user || st.Token.PublishedAccessToken != page {
		t.Fatal("the state must keep the managed token and the published Page token")
	}
	if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != page {
		t.Fatalf("the output Secret must hold the Page token (holds the managed token: %v)", got == user)
	}
	if _, ok := h.output().Data[tokensv1alpha1.OutputExpiresAtKey]; ok {
		t.Fatal("a Page token from a system-user token does not expire: no expires_at")
	}

	// A check: both tokens looked at, nothing derived again, nothing changes.
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	if h.fb.Calls(facebookfake.OpPage) != 1 || string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]) != page {
		t.Fatalf("page derivations %d, want 1", h.fb.Calls(facebookfake.OpPage))
	}

	// The user token is revoked: the Page token dies with it.
	h.fb.Revoke(user)
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "TokenInvalid")
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "TokenInvalid")
	c := h.cond(tokensv1alpha1.ConditionReauthorizationRequired)
	for _, k := range []string{"Page token", pageID, "access_token"} {
		if !strings.Contains(c.Message, k) {
			t.Errorf("condition message lacks %q: %s", k, c.Message)
		}
	}
	calls := h.fb.Calls(facebookfake.OpDebugToken)
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	if h.fb.Calls(facebookfake.OpDebugToken) != calls {
		t.Fatal("a halted token must not be checked again until its inputs change")
	}
}

// TestRemovingPageIDPublishesTheManagedToken: with spec.facebook.pageID
// removed, the next check publishes the managed token again instead of
// the Page token (the check's empty Page token was ignored before).
func TestRemovingPageIDPublishesTheManagedToken(t *testing.T) {
	const pageID = "104169029247128"
	h := newHarness(t, amocrmfake.Options{})
	user := h.fb.IssueToken(facebookfake.KindUserLong, h.clk.Now().Add(50*24*time.Hour))
	h.fbPageMT(user, pageID)
	if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != h.fb.PageToken(user, pageID) || got == "" {
		t.Fatal("the output Secret does not hold the Page token")
	}

	cur := h.get()
	cur.Spec.Facebook.PageID = ""
	if err := k8sClient.Update(h.ctx, cur); err != nil {
		t.Fatal(err)
	}
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != user {
		t.Fatal("with pageID removed, the output Secret still does not hold the managed user token")
	}
	if st := h.state(); st.Token.PublishedAccessToken != "" {
		t.Fatal("the state still names a Page token to publish")
	}
}

// TestFidelityPageIDAdmission: spec.facebook.pageID must be numeric.
func TestFidelityPageIDAdmission(t *testing.T) {
	ns := newNamespace(t)
	bad := validFacebook(ns, "bad-page")
	bad.Spec.Facebook = &tokensv1alpha1.FacebookSpec{PageID: "my-page"}
	err := k8sClient.Create(context.Background(), bad)
	if err == nil || !strings.Contains(err.Error(), "pageID must be the numeric ID of the Facebook Page") {
		t.Fatalf("a non-numeric pageID must be rejected with a clear message: %v", err)
	}
	good := validFacebook(ns, "good-page")
	good.Spec.Facebook = &tokensv1alpha1.FacebookSpec{PageID: "104169029247128"}
	if err := k8sClient.Create(context.Background(), good); err != nil {
		t.Fatal(err)
	}
}
