package controllers

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

// amoReady bootstraps an AmoCRM token from a fresh refresh token.
func (h *harness) amoReady() {
	h.t.Helper()
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}

// TestFidelityDomainMoveIsFollowed: the account moves from amocrm.ru to
// kommo.com. The next check finds the new host with the refresh token (not
// consumed), keeps it in the state, and later checks and refreshes go there:
// no storm of calls to the old host, no extra refresh, no reuse.
func TestFidelityDomainMoveIsFollowed(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoReady()
	refreshes := h.amo.Calls("refresh_token")
	h.amo.MoveAccount("example.kommo.com", false)

	for i := 0; i < 4; i++ {
		h.clk.Step(2*time.Hour + time.Minute)
		h.reconcile()
		h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	}
	if st := h.state(); st.Token == nil || st.Token.APIDomain != "example.kommo.com" {
		t.Fatal("the state must keep the account's new host")
	}
	if n := h.amo.Calls("subdomain"); n != 1 {
		t.Fatalf("host lookups = %d, want 1", n)
	}
	if n := h.amo.Calls("old_host"); n != 1 {
		t.Fatalf("calls to the old host = %d, want the one that found the move", n)
	}
	// 8h later: only refreshes that were due (24h tokens, refreshBefore 2h).
	if n := h.amo.Calls("refresh_token") - refreshes; n > 1 {
		t.Fatalf("%d refreshes in 8h after the move", n)
	}
	if h.amo.ReusedRefreshTokens() != 0 {
		t.Fatal("a refresh token was reused")
	}
}

// TestFidelityDomainMoveReportedForLongLivedToken: a long-lived token has
// no refresh token to look the new host up: the condition names the domain
// the token belongs to, and calls stop (no storm).
func TestFidelityDomainMoveReportedForLongLivedToken(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.putCreds("amocrm-oauth", map[string]string{"access_token": h.amo.IssueLongLivedToken(h.clk.Now().Add(300 * 24 * time.Hour))})
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	h.amo.MoveAccount("renamed.amocrm.ru", true)
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "AccountNotFound")
	c := h.cond(tokensv1alpha1.ConditionReady)
	for _, k := range []string{"spec.amocrm.domain", "example.amocrm.ru", "account 31234567 on amocrm.ru"} {
		if !strings.Contains(c.Message, k) {
			t.Errorf("condition message lacks %q: %s", k, c.Message)
		}
	}
	calls := h.amo.Calls("account")
	for i := 0; i < 3; i++ {
		h.clk.Step(2*time.Hour + time.Minute)
		h.reconcile()
	}
	if h.amo.Calls("account") != calls {
		t.Fatalf("account calls after the report: %d more", h.amo.Calls("account")-calls)
	}
}

// TestFidelityNonTokenAccount401: a persistent documented non-token 401
// (user disabled) ends in a precise condition without any refresh.
func TestFidelityNonTokenAccount401(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{ErrorShape: amocrmfake.ShapeProblem})
	h.amoReady()
	refreshes := h.amo.Calls("refresh_token")
	h.amo.SetAccountError(amocrmfake.ErrUserDisabled)
	h.clk.Step(2*time.Hour + time.Minute)
	h.reconcile()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "UserDisabled")
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "UserDisabled")
	if n := h.amo.Calls("refresh_token") - refreshes; n != 0 {
		t.Fatalf("%d refreshes for a 401 that is not about the token", n)
	}
}

// TestFidelityPersistentTokenRejection: /api/v4/account keeps answering a
// plain token 401, also for a fresh token. The operator refreshes once,
// probes the new token, and halts with TokenRejectedAfterRefresh: at most
// one refresh, however many reconciles follow. NEEDS the controller's
// probe-after-refresh.
func TestFidelityPersistentTokenRejection(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoReady()
	refreshes := h.amo.Calls("refresh_token")
	h.amo.FailAccountNext(1000, 401, `{"title":"Unauthorized","type":"https://httpstatus.es/401","status":401,"detail":"Необходима авторизация"}`)
	h.clk.Step(2*time.Hour + time.Minute)
	for i := 0; i < 5; i++ {
		h.reconcile()
		h.clk.Step(10 * time.Minute)
	}
	if n := h.amo.Calls("refresh_token") - refreshes; n != 1 {
		t.Fatalf("refreshes = %d, want exactly 1", n)
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, provider.ReasonTokenRejectedAfterRefresh)
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, provider.ReasonTokenRejectedAfterRefresh)
	if st := h.state(); st.Token == nil || st.Token.RefreshToken != h.amo.CurrentRefreshToken() {
		t.Fatal("the rotated pair must be stored")
	}
}
