package controllers

import (
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

func TestAmoCRMReadyPathAndRotations(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")

	res := h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)
	if evs := h.events.all(); len(evs) != 1 || evs[0].Reason != "TokenObtained" {
		t.Fatalf("the first publish must emit exactly one event (TokenObtained), got %v", evs)
	}

	out := h.output()
	if out == nil {
		t.Fatal("no output Secret")
	}
	if got := string(out.Data["access_token"]); got != h.amo.CurrentAccessToken() {
		t.Fatal("output Secret does not hold the provider's current access token")
	}
	if len(out.Data) != 2 || out.Data["expires_at"] == nil {
		t.Fatalf("output Secret keys = %v, want exactly access_token and expires_at", keys(out.Data))
	}
	if out.Labels[tokensv1alpha1.ManagedByLabel] != "tokenkeeper" || out.Labels[tokensv1alpha1.ManagedTokenLabel] != "crm" {
		t.Fatalf("output labels = %v", out.Labels)
	}
	if !metav1.IsControlledBy(out, h.get()) {
		t.Fatal("output Secret has no controller reference to its ManagedToken")
	}
	st := h.get().Status
	exp, err := time.Parse(time.RFC3339, string(out.Data["expires_at"]))
	if err != nil || st.ExpirationTimestamp == nil || !exp.Equal(st.ExpirationTimestamp.Time) {
		t.Fatalf("expires_at %q and status %v disagree (%v)", out.Data["expires_at"], st.ExpirationTimestamp, err)
	}
	if want := exp.Add(-2 * time.Hour); st.NextRefreshTime == nil || st.NextRefreshTime.Time.After(want) || st.NextRefreshTime.Time.Before(want.Add(-12*time.Minute)) {
		t.Fatalf("nextRefreshTime = %v, want expiry-2h = %v less this token's offset (at most refreshBefore/10)", st.NextRefreshTime, want)
	}
	if st.RefreshTokenExpirationTimestamp == nil || st.RefreshTokenExpirationTimestamp.Sub(h.clk.Now()) < 89*24*time.Hour {
		t.Fatalf("refreshTokenExpirationTimestamp = %v, want about 90 days ahead", st.RefreshTokenExpirationTimestamp)
	}
	if res.RequeueAfter <= 0 || res.RequeueAfter > 2*time.Hour {
		t.Fatalf("requeueAfter = %v, want within checkInterval", res.RequeueAfter)
	}
	if rt := h.state().Token.RefreshToken; rt != h.amo.CurrentRefreshToken() {
		t.Fatal("state Secret does not hold the rotated refresh token")
	}
	if out.Data["refresh_token"] != nil {
		t.Fatal("the output Secret must never hold the refresh token")
	}

	// A reconcile with nothing due writes nothing and calls no token endpoint.
	rv, calls := h.get().ResourceVersion, h.amo.Calls("token")
	outRV := h.output().ResourceVersion
	h.reconcile()
	if h.get().ResourceVersion != rv || h.output().ResourceVersion != outRV || h.amo.Calls("token") != calls {
		t.Fatal("a reconcile with nothing due must not write or refresh")
	}

	// Several rotations in a row: each uses the newest refresh token.
	for i := 0; i < 5; i++ {
		before := h.amo.CurrentAccessToken()
		h.advancePastNextRefresh()
		h.reconcile()
		if h.amo.CurrentAccessToken() == before || string(h.output().Data["access_token"]) != h.amo.CurrentAccessToken() {
			t.Fatalf("rotation %d: output does not hold the new token", i+1)
		}
	}
	if got := h.amo.Calls("refresh_token"); got != 6 {
		t.Fatalf("refresh_token grants = %d, want 6 (bootstrap + 5 rotations)", got)
	}
	if n := h.amo.ReusedRefreshTokens(); n != 0 {
		t.Fatalf("the fake saw %d reused refresh tokens", n)
	}
	if n, b := h.events.count("TokenRefreshed"), h.events.count("TokenObtained"); n != 5 || b != 1 {
		t.Fatalf("TokenRefreshed events = %d, TokenObtained = %d, want 5 and 1", n, b)
	}
}

func TestAmoCRMBootstrapByCodeAndRebootstrap(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	code := h.amo.IssueAuthorizationCode()
	h.amoCreds(map[string]string{"authorization_code": code})
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if h.amo.Calls("authorization_code") != 1 {
		t.Fatalf("authorization_code grants = %d, want 1", h.amo.Calls("authorization_code"))
	}
	// The consumed code is never replayed.
	h.clk.Step(3 * time.Hour)
	h.reconcile()
	h.advancePastNextRefresh()
	h.reconcile()
	if h.amo.Calls("authorization_code") != 1 {
		t.Fatal("a consumed authorization code was sent again")
	}
	// A human adds a new refresh token and leaves the consumed code in place:
	// the new refresh token is picked up, the code is not replayed.
	fresh := h.amo.IssueRefreshToken()
	h.amoCreds(map[string]string{"authorization_code": code, "refresh_token": fresh})
	h.reconcile()
	if h.amo.Calls("authorization_code") != 1 {
		t.Fatal("a consumed authorization code was sent again")
	}
	if got := h.state().Token.RefreshToken; got != h.amo.CurrentRefreshToken() {
		t.Fatal("the new refresh token from the credentials Secret was not used")
	}
	if got := h.amo.ReusedRefreshTokens(); got != 0 {
		t.Fatalf("reused refresh tokens = %d", got)
	}
}

func TestAmoCRMRebootstrapByNewRefreshToken(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	first := h.state()

	h.amo.RevokeAll()
	h.advancePastNextRefresh()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "RefreshTokenRevoked")

	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)
	now := h.state()
	if now.Token.RefreshToken != h.amo.CurrentRefreshToken() || len(now.Consumed) != len(first.Consumed)+1 {
		t.Fatalf("re-bootstrap did not store the new pair and its fingerprint (consumed %d -> %d)", len(first.Consumed), len(now.Consumed))
	}
	if string(h.output().Data["access_token"]) != h.amo.CurrentAccessToken() {
		t.Fatal("output not updated after re-bootstrap")
	}
}

func TestAmoCRMForcedRefreshHappensExactlyOnce(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	calls := h.amo.Calls("refresh_token")

	h.annotate("2026-11-27T10:00:00Z")
	for i := 0; i < 4; i++ {
		h.reconcile()
	}
	if got := h.amo.Calls("refresh_token") - calls; got != 1 {
		t.Fatalf("forced refreshes = %d, want exactly 1", got)
	}
	if got := h.get().Status.LastHandledRefreshRequest; got != "2026-11-27T10:00:00Z" {
		t.Fatalf("lastHandledRefreshRequest = %q", got)
	}
	h.annotate("2026-11-27T10:05:00Z")
	h.reconcile()
	h.reconcile()
	if got := h.amo.Calls("refresh_token") - calls; got != 2 {
		t.Fatalf("a second annotation value must cause one more refresh: %d", got)
	}
}

// TestAmoCRMForcedRefreshSurvivesAFailedStatusWrite: the handled request is
// stored with the new pair, so a retry after a failed status write does not
// refresh again.
func TestAmoCRMForcedRefreshSurvivesAFailedStatusWrite(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	calls := h.amo.Calls("refresh_token")
	h.annotate("once")
	h.client.failStatusWrites.Store(1)
	if _, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()}); err == nil {
		t.Fatal("the injected status failure must surface as a reconcile error")
	}
	h.reconcile()
	h.reconcile()
	if got := h.amo.Calls("refresh_token") - calls; got != 1 {
		t.Fatalf("refreshes for one request = %d, want 1", got)
	}
	if got := h.get().Status.LastHandledRefreshRequest; got != "once" {
		t.Fatalf("lastHandledRefreshRequest = %q, want once", got)
	}
}

func TestAmoCRMOutputSecretRestoredAndForeignSecretUntouched(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	calls := h.amo.Calls("token")

	if err := k8sClient.Delete(h.ctx, h.output()); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	if out := h.output(); out == nil || string(out.Data["access_token"]) != h.amo.CurrentAccessToken() {
		t.Fatal("deleted output Secret was not restored with the current token")
	}
	out := h.output()
	out.Data["access_token"] = []byte("edited-by-hand")
	out.Data["extra"] = []byte("x")
	delete(out.Labels, tokensv1alpha1.ManagedByLabel)
	if err := k8sClient.Update(h.ctx, out); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	out = h.output()
	if string(out.Data["access_token"]) != h.amo.CurrentAccessToken() || len(out.Data) != 2 || out.Labels[tokensv1alpha1.ManagedByLabel] != "tokenkeeper" {
		t.Fatalf("edited output Secret was not restored: keys %v labels %v", keys(out.Data), out.Labels)
	}
	if h.amo.Calls("token") != calls {
		t.Fatal("restoring the output Secret must not refresh the token")
	}

	// A second ManagedToken pointing at a Secret it does not own.
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "someone-elses"}, StringData: map[string]string{"access_token": "theirs"}}
	if err := k8sClient.Create(h.ctx, foreign); err != nil {
		t.Fatal(err)
	}
	mt2 := validAmoCRM(h.ns, "crm2")
	mt2.Spec.SecretName = "someone-elses"
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createMT(mt2)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonSecretNotOwned)
	got := h.secret("someone-elses")
	if string(got.Data["access_token"]) != "theirs" || len(got.OwnerReferences) != 0 || got.ResourceVersion != foreign.ResourceVersion {
		t.Fatal("a foreign Secret was modified")
	}
	if h.events.count(ReasonSecretNotOwned) != 1 {
		t.Fatalf("want one %s Warning event, got %v", ReasonSecretNotOwned, h.events.all())
	}
	h.reconcile()
	if h.events.count(ReasonSecretNotOwned) != 1 {
		t.Fatal("events must be emitted only on transitions")
	}
}

func TestAmoCRMCredentialsMissingThenCreated(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonCredentialsSecretNotFound)
	if c := h.cond(tokensv1alpha1.ConditionReady); !strings.Contains(c.Message, "amocrm-oauth") {
		t.Fatalf("message must name the missing Secret: %q", c.Message)
	}
	h.putCreds("amocrm-oauth", map[string]string{"client_id": testClientID})
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonCredentialsKeyMissing)
	if c := h.cond(tokensv1alpha1.ConditionReady); !strings.Contains(c.Message, "client_secret") {
		t.Fatalf("message must name the missing key: %q", c.Message)
	}
	if h.amo.Calls("token") != 0 {
		t.Fatal("no provider call without credentials")
	}
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}

func TestAmoCRMTerminalFailureStopsProviderCalls(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusUnauthorized} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			h := newHarness(t, amocrmfake.Options{UsedTokenStatus: status})
			h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
			h.createAmoMT("")
			h.reconcile()
			h.amo.RevokeAll()
			h.advancePastNextRefresh()
			h.reconcile()
			h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "RefreshTokenRevoked")
			h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "RefreshTokenRevoked")
			if h.get().Status.HaltedInputs == "" {
				t.Fatal("status must record the halt")
			}
			calls := h.amo.Calls("token") + h.amo.Calls("account")
			for i := 0; i < 5; i++ {
				h.clk.Step(3 * time.Hour)
				h.reconcile()
			}
			if got := h.amo.Calls("token") + h.amo.Calls("account"); got != calls {
				t.Fatalf("provider calls went from %d to %d after a terminal failure", calls, got)
			}
			if n := h.events.count("RefreshTokenRevoked"); n != 2 {
				t.Fatalf("want one Warning per condition transition (Ready, ReauthorizationRequired), got %d", n)
			}
		})
	}
}

func TestAmoCRMStateWriteFailureKeepsNewPair(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	oldRT := h.state().Token.RefreshToken

	// The intent is written; then state writes fail for longer than the
	// spend's deadline.
	h.r.SpendTimeout = 300 * time.Millisecond
	h.client.skipStateWrites.Store(1)
	h.client.failStateWrites.Store(1000)
	h.advancePastNextRefresh()
	h.reconcile() // refresh succeeds at the provider, the store fails
	if h.state().Token.RefreshToken != oldRT {
		t.Fatal("the store was supposed to fail")
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonStatePending)
	calls := h.amo.Calls("token")
	h.reconcile()
	h.reconcile() // still failing: no provider call meanwhile
	if h.amo.Calls("token") != calls {
		t.Fatal("the provider was called while a new pair was not stored")
	}
	h.client.failStateWrites.Store(0)
	h.reconcile() // the store works again
	if got := h.state().Token.RefreshToken; got != h.amo.CurrentRefreshToken() {
		t.Fatal("the pending pair was not stored once writes worked")
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if string(h.output().Data["access_token"]) != h.amo.CurrentAccessToken() {
		t.Fatal("output not updated after the pending pair was stored")
	}
	h.advancePastNextRefresh()
	h.reconcile()
	if n := h.amo.ReusedRefreshTokens(); n != 0 {
		t.Fatalf("the old refresh token was sent again (%d reuses)", n)
	}
	if h.state().Token.RefreshToken != h.amo.CurrentRefreshToken() {
		t.Fatal("rotation after recovery failed")
	}
}

func TestAmoCRMStateSecretDeletedIsWrittenAgain(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	if err := k8sClient.Delete(h.ctx, h.secret(stateSecretName("crm"))); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	if st := h.state(); st.Token == nil || st.Token.RefreshToken != h.amo.CurrentRefreshToken() {
		t.Fatal("a deleted state Secret must be written again from memory")
	}
	h.advancePastNextRefresh()
	h.reconcile()
	if h.amo.ReusedRefreshTokens() != 0 {
		t.Fatal("a consumed refresh token was replayed")
	}
}

func TestAmoCRMLongLivedTokenIsMonitoredNotRefreshed(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	exp := h.clk.Now().Add(30 * 24 * time.Hour)
	h.putCreds("amocrm-oauth", map[string]string{"access_token": h.amo.IssueLongLivedToken(exp)})
	h.createAmoMT("168h")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionFalse, ReasonAuthorized)
	if got := h.get().Status; got.TokenType != "AmoCRMLongLived" || got.NextRefreshTime != nil || !got.ExpirationTimestamp.Time.Equal(exp.Truncate(time.Second)) {
		t.Fatalf("status = type %q next %v exp %v", got.TokenType, got.NextRefreshTime, got.ExpirationTimestamp)
	}
	h.clk.SetTime(exp.Add(-6 * 24 * time.Hour))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, ReasonTokenExpiringSoon)
	if c := h.cond(tokensv1alpha1.ConditionReauthorizationRequired); !strings.Contains(c.Message, exp.UTC().Format(time.RFC3339)) {
		t.Fatalf("the message must say by when: %q", c.Message)
	}
	if h.amo.Calls("token") != 0 {
		t.Fatal("a long-lived token must never be refreshed")
	}
	if h.amo.Calls("account") < 2 {
		t.Fatal("each check must probe the token")
	}
}

func TestAmoCRMProbeFindsRevokedToken(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	h.amo.RevokeAll()
	h.clk.Step(2*time.Hour + time.Minute) // one check interval, far from expiry
	h.reconcile()
	if h.amo.Calls("account") != 1 {
		t.Fatalf("account probes = %d, want 1", h.amo.Calls("account"))
	}
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, "RefreshTokenRevoked")
}

func TestAmoCRMThrottledAndTransientFailures(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()

	h.amo.FailNext(1, http.StatusTooManyRequests, "", http.Header{"Retry-After": {"120"}})
	h.advancePastNextRefresh()
	now := h.clk.Now()
	h.reconcile()
	st := h.get().Status
	if st.NextRetryTime == nil || st.NextRetryTime.Time.Sub(now) < 119*time.Second || st.NextRetryTime.Time.Sub(now) > 121*time.Second {
		t.Fatalf("nextRetryTime = %v, want Retry-After (120s) after %v", st.NextRetryTime, now)
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonRefreshFailing)
	calls := h.amo.Calls("token")
	h.clk.Step(60 * time.Second)
	h.reconcile()
	if h.amo.Calls("token") != calls {
		t.Fatal("retried before Retry-After elapsed")
	}

	h.amo.FailNext(2, http.StatusBadGateway, "<html>bad gateway</html>", nil)
	h.clk.Step(61 * time.Second)
	h.reconcile() // 502
	first := h.get().Status.NextRetryTime.Sub(h.clk.Now())
	h.clk.Step(first + time.Second)
	h.reconcile() // 502 again, longer wait
	second := h.get().Status.NextRetryTime.Sub(h.clk.Now())
	if second <= first {
		t.Fatalf("back-off must grow: %v then %v", first, second)
	}
	h.clk.Step(second + time.Second)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if h.get().Status.ConsecutiveFailures != 0 {
		t.Fatal("failures must reset after a success")
	}
}

func TestAmoCRMBlockedStopsAndAlerts(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	h.amo.SetBlocked(true)
	h.advancePastNextRefresh()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, "ProviderBlocked")
	calls := h.amo.Calls("token")
	for i := 0; i < 3; i++ {
		h.clk.Step(time.Hour)
		h.reconcile()
	}
	if h.amo.Calls("token") != calls {
		t.Fatal("an IP block must not be retried in a loop")
	}
	h.amo.SetBlocked(false)
	h.annotate("resume")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestAmoCRMFailedRolloutRestartIsRetried: a restart that failed is owed,
// retried on the next reconcile, and then not repeated.
func TestAmoCRMFailedRolloutRestartIsRetried(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	dep := createConsumer(t, h.ns)
	mt := validAmoCRM(h.ns, "crm")
	mt.Spec.AmoCRM.RedirectURI = testRedirectURI
	mt.Spec.RolloutRestartTargets = []tokensv1alpha1.RolloutRestartTarget{{Kind: "Deployment", Name: "consumer"}}
	h.createMT(mt)
	h.reconcile()
	restarted := func() string {
		d := &appsv1.Deployment{}
		if err := k8sClient.Get(h.ctx, client.ObjectKeyFromObject(dep), d); err != nil {
			t.Fatal(err)
		}
		return d.Spec.Template.Annotations[tokensv1alpha1.RestartedAtAnnotation]
	}
	if restarted() != "" {
		t.Fatal("the first publish must restart nobody")
	}
	h.advancePastNextRefresh()
	h.client.failPatches.Store(1)
	if _, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()}); err == nil {
		t.Fatal("the injected restart failure must surface as a reconcile error")
	}
	if restarted() != "" {
		t.Fatal("the restart was supposed to fail")
	}
	h.reconcile()
	first := restarted()
	if first == "" {
		t.Fatal("a failed restart was not retried")
	}
	h.clk.Step(time.Second)
	h.reconcile()
	h.reconcile()
	if restarted() != first {
		t.Fatal("a retried restart must not repeat on no-op reconciles")
	}
}
