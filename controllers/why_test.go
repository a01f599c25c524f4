package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// The tests in this file each cover one case of issue "Rotation safety,
// proven" that the code before the rotation protocol got wrong.

// newReadyAmoCRM is a harness with a Ready AmoCRM token of 24h, obtained
// from a refresh token in the credentials Secret.
func newReadyAmoCRM(t *testing.T) *harness {
	h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	return h
}

// newOrphanedAmoCRM is newReadyAmoCRM whose ManagedToken was then deleted:
// its state Secret is marked orphaned. It returns the refresh token the
// state Secret holds.
func newOrphanedAmoCRM(t *testing.T) (*harness, string) {
	h := newReadyAmoCRM(t)
	rt := h.state().Token.RefreshToken
	if err := k8sClient.Delete(h.ctx, h.get()); err != nil {
		t.Fatal(err)
	}
	h.reconcile() // marked orphaned
	if h.secret(stateSecretName(h.mt.Name)).Annotations[orphanedAtAnnotation] == "" {
		t.Fatal("the orphaned state Secret is not marked")
	}
	return h, rt
}

// followRequeues runs reconciles, moving the fake clock by each requeue,
// until d has passed, and returns how many reconciles ran.
func (h *harness) followRequeues(d time.Duration) int {
	h.t.Helper()
	end := h.clk.Now().Add(d)
	n := 0
	for h.clk.Now().Before(end) {
		res := h.reconcile()
		n++
		if res.RequeueAfter <= 0 {
			h.t.Fatalf("reconcile %d returned no requeue", n)
		}
		h.clk.Step(res.RequeueAfter)
	}
	return n
}

func TestRefreshBeforeAboveLifetimeIsNoStorm(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("168h") // the Facebook default, copied onto a 24h token
	h.reconcile()
	before := h.amo.Calls("refresh_token")
	reconciles := h.followRequeues(72 * time.Hour)
	refreshes := h.amo.Calls("refresh_token") - before
	fmt.Printf("measured: refreshBefore 168h on 24h tokens: %d refreshes and %d reconciles in 72h\n", refreshes, reconciles)
	if refreshes < 3 || refreshes > 6 {
		t.Fatalf("%d refreshes in 72h of 24h tokens, want one per half lifetime (3 to 6)", refreshes)
	}
	c := h.cond(tokensv1alpha1.ConditionReady)
	if c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "capped at 12h0m0s") {
		t.Fatalf("status must say refreshBefore is capped: %+v", c)
	}
}

func TestRemovingTheConsumedGrantKeepsRefreshing(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
	h.amoCreds(map[string]string{"authorization_code": h.amo.IssueAuthorizationCode()})
	h.createAmoMT("")
	h.reconcile()
	// A GitOps tool removes the used code.
	h.amoCreds(nil)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	h.advancePastNextRefresh()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if got := string(h.output().Data["access_token"]); got != h.amo.CurrentAccessToken() || h.amo.Calls("refresh_token") != 1 {
		t.Fatal("the token was not refreshed after the consumed code was removed")
	}
}

func TestAccessTokenInCredentialsNeverDowngradesARefreshableToken(t *testing.T) {
	h := newReadyAmoCRM(t)
	rt := h.state().Token.RefreshToken
	// Someone pastes the current OAuth access token and removes the used
	// refresh token.
	h.amoCreds(map[string]string{"access_token": h.amo.CurrentAccessToken()})
	h.reconcile()
	h.reconcile()
	st := h.state()
	if !st.Token.Refreshable || st.Token.RefreshToken != rt {
		t.Fatal("the refreshable pair was replaced by a monitored token")
	}
	c := h.cond(tokensv1alpha1.ConditionReady)
	if c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, ReasonGrantNotAdopted) {
		t.Fatalf("Ready must stay True and name the refused grant: %+v", c)
	}
	if n := h.events.count(ReasonGrantRejected); n != 1 {
		t.Fatalf("%d GrantRejected events, want exactly 1", n)
	}
	before := h.amo.Calls("refresh_token")
	h.advancePastNextRefresh()
	h.reconcile()
	if h.amo.Calls("refresh_token") != before+1 || !h.amo.RefreshTokenLive(h.state().Token.RefreshToken) {
		t.Fatal("the refreshable token must go on being refreshed")
	}
}

func TestFacebookAccessTokenNotRequiredOnceStored(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	tok := h.fb.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	h.fbSetup(tok)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenNeverExpires)
	h.putCreds("facebook-app", map[string]string{"app_id": testAppID, "app_secret": testAppSecret})
	h.clk.Step(3 * time.Hour)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenNeverExpires)
}

func TestNoHotLoopBeforeCredentialsExist(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.createAmoMT("")
	res := h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonCredentialsSecretNotFound)
	if res.RequeueAfter != 2*time.Hour {
		t.Fatalf("requeue %v, want checkInterval (the credentials watch brings the next reconcile)", res.RequeueAfter)
	}
	h.amoCreds(map[string]string{"client_secret": "wrong-secret-value-123"})
	h.amoCreds(map[string]string{"client_secret": "wrong-secret-value-123", "refresh_token": h.amo.IssueRefreshToken()})
	res = h.reconcile()
	if res.RequeueAfter < time.Hour {
		t.Fatalf("a halted token requeues after %v, want checkInterval", res.RequeueAfter)
	}
}

func TestRetryAfterBoundedByExpiry(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.advancePastNextRefresh()
	expiry := h.get().Status.ExpirationTimestamp.Time
	h.amo.FailNext(1, http.StatusTooManyRequests, "", http.Header{"Retry-After": {"86400"}})
	h.reconcile()
	next := h.get().Status.NextRetryTime
	if next == nil || !next.Time.Before(expiry) {
		t.Fatalf("a 24h Retry-After 2h before expiry must be retried before expiry: nextRetryTime %v, expiry %v", next, expiry)
	}
	h.clk.SetTime(next.Time.Add(time.Second))
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if !h.get().Status.ExpirationTimestamp.Time.After(expiry) {
		t.Fatal("the token was not refreshed before it expired")
	}
}

// failUntil follows the requeues while the token endpoint fails, until
// status counts n consecutive failures.
func (h *harness) failUntil(n int32) {
	h.t.Helper()
	h.amo.FailNext(1000, http.StatusBadGateway, "<html>bad gateway</html>", nil)
	for i := 0; i < 200 && h.get().Status.ConsecutiveFailures < n; i++ {
		res := h.reconcile()
		h.clk.Step(res.RequeueAfter)
	}
	if got := h.get().Status.ConsecutiveFailures; got < n {
		h.t.Fatalf("only %d consecutive failures", got)
	}
}

func TestBackoffStaysExponentialAfterExpiry(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.clk.SetTime(h.get().Status.ExpirationTimestamp.Add(time.Hour))
	h.failUntil(8)
	st := h.get().Status
	wait := st.NextRetryTime.Sub(st.LastFailureTime.Time)
	fmt.Printf("measured: back-off after expiry, after %d failures: %v\n", st.ConsecutiveFailures, wait)
	if wait < 10*time.Minute {
		t.Fatalf("back-off after expiry collapsed to %v after %d failures", wait, st.ConsecutiveFailures)
	}
}

func TestNewGrantEndsABackoffAtOnce(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.clk.SetTime(h.get().Status.ExpirationTimestamp.Add(time.Hour))
	h.failUntil(10)
	if nr := h.get().Status.NextRetryTime; nr == nil || nr.Sub(h.clk.Now()) < 10*time.Minute {
		t.Fatalf("precondition: a long back-off, got nextRetryTime %v", nr)
	}
	h.amo.FailNext(0, 0, "", nil)
	// A human pastes a new code (it lives about 20 minutes).
	h.amoCreds(map[string]string{"authorization_code": h.amo.IssueAuthorizationCode()})
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if h.amo.Calls("authorization_code") != 1 {
		t.Fatal("the new grant waited out the back-off")
	}
}

func TestCorruptStateIsReportedNotOverwritten(t *testing.T) {
	h := newReadyAmoCRM(t)
	sec := h.secret(stateSecretName(h.mt.Name))
	sec.Data[keyExpiresAt] = []byte("not a time")
	if err := k8sClient.Update(h.ctx, sec); err != nil {
		t.Fatal(err)
	}
	rv, calls := h.secret(sec.Name).ResourceVersion, h.amo.Calls("token")
	h.advancePastNextRefresh()
	h.reconcile()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonStateCorrupt)
	if c := h.cond(tokensv1alpha1.ConditionReady); !strings.Contains(c.Message, keyExpiresAt) || strings.Contains(c.Message, "not a time") {
		t.Fatalf("the message must name the key and not its value: %s", c.Message)
	}
	if h.secret(sec.Name).ResourceVersion != rv || h.amo.Calls("token") != calls {
		t.Fatal("a corrupt state Secret was overwritten, or the provider was called")
	}
	if n := h.events.count(ReasonStateCorrupt); n != 1 {
		t.Fatalf("%d StateCorrupt events, want 1 (a Warning on the transition)", n)
	}
	// Nothing stale stays in status: no planned refresh, and
	// ReauthorizationRequired follows the spec's generation (Unknown: no
	// token to judge), not the "no human action needed" of before.
	mt := h.get()
	mt.Spec.CheckInterval = &metav1.Duration{Duration: 3 * time.Hour}
	if err := k8sClient.Update(h.ctx, mt); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	st := h.get()
	if st.Status.NextRefreshTime != nil {
		t.Fatalf("nextRefreshTime %v for a token the operator will not refresh", st.Status.NextRefreshTime)
	}
	if c := h.cond(tokensv1alpha1.ConditionReauthorizationRequired); c.Status != metav1.ConditionUnknown || c.ObservedGeneration != st.Generation {
		t.Fatalf("ReauthorizationRequired %s (generation %d of %d), want Unknown for the current generation", c.Status, c.ObservedGeneration, st.Generation)
	}
}

func TestRejectedExtraGrantNeverHaltsAHealthyToken(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.amoCreds(map[string]string{"refresh_token": "a-refresh-token-the-provider-never-issued"})
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	calls := h.amo.Calls("refresh_token")
	// Resume-style input changes (an unrelated spec edit) do not retry it.
	mt := h.get()
	mt.Spec.CheckInterval = &metav1.Duration{Duration: time.Hour}
	if err := k8sClient.Update(h.ctx, mt); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if h.amo.Calls("refresh_token") != calls || h.get().Status.HaltedInputs != "" {
		t.Fatal("the refused grant was tried again or halted the token")
	}
	if h.events.count(ReasonGrantRejected) != 1 {
		t.Fatalf("want one GrantRejected Warning, got %d", h.events.count(ReasonGrantRejected))
	}
	h.advancePastNextRefresh()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}

func TestDeleteAndRecreateResumesFromTheStoredPair(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
	h.amoCreds(map[string]string{"authorization_code": h.amo.IssueAuthorizationCode()})
	h.createAmoMT("")
	h.reconcile()
	if refs := h.secret(stateSecretName(h.mt.Name)).OwnerReferences; len(refs) != 0 {
		t.Fatalf("the state Secret must outlive its ManagedToken: owner references %v", refs)
	}
	rt := h.state().Token.RefreshToken
	if err := k8sClient.Delete(h.ctx, h.get()); err != nil {
		t.Fatal(err)
	}
	h.reconcile() // the ManagedToken is gone: the state is marked orphaned
	if h.secret(stateSecretName(h.mt.Name)).Annotations[orphanedAtAnnotation] == "" {
		t.Fatal("the orphaned state Secret is not marked")
	}
	// Argo CD Replace=true: the same ManagedToken, created again.
	h.mt = nil
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if h.amo.Calls("authorization_code") != 1 || h.state().Token.RefreshToken != rt {
		t.Fatal("the re-created ManagedToken replayed the consumed grant instead of resuming")
	}
	sec := h.secret(stateSecretName(h.mt.Name))
	if sec.Annotations[ownerUIDAnnotation] != string(h.get().UID) || sec.Annotations[orphanedAtAnnotation] != "" {
		t.Fatalf("the state Secret was not adopted: %v", sec.Annotations)
	}
	h.advancePastNextRefresh()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)

	// Deleted for good: the state goes after the retention.
	if err := k8sClient.Delete(h.ctx, h.get()); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	h.clk.Step(DefaultOrphanRetention + time.Minute)
	h.reconcile()
	if h.secret(stateSecretName(h.mt.Name)) != nil {
		t.Fatal("the orphaned state Secret outlived its retention")
	}
}

// TestBlockedRecreateAdoptsTheOrphanedState: a ManagedToken is deleted and
// created again while it is blocked (its credentials Secret is gone). It
// adopts the orphaned state Secret all the same, which clears the earlier
// orphaned-at mark: deleted again more than the retention after the first
// deletion, its state Secret is kept for a new retention, not deleted at
// once with the only live refresh token.
func TestBlockedRecreateAdoptsTheOrphanedState(t *testing.T) {
	h, rt := newOrphanedAmoCRM(t)
	if err := k8sClient.Delete(h.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: h.mt.Spec.CredentialsSecretRef.Name}}); err != nil {
		t.Fatal(err)
	}

	h.clk.Step(DefaultOrphanRetention - 24*time.Hour)
	h.mt = nil
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonCredentialsSecretNotFound)
	sec := h.secret(stateSecretName(h.mt.Name))
	if sec.Annotations[orphanedAtAnnotation] != "" || sec.Annotations[ownerUIDAnnotation] != string(h.get().UID) {
		t.Fatalf("a blocked re-created ManagedToken did not adopt its state Secret: %v", sec.Annotations)
	}

	h.clk.Step(48 * time.Hour) // past the first deletion's retention
	if err := k8sClient.Delete(h.ctx, h.get()); err != nil {
		t.Fatal(err)
	}
	h.reconcile()
	sec = h.secret(stateSecretName(h.mt.Name))
	if sec == nil {
		t.Fatal("the state Secret was deleted with the first deletion's mark: the only live refresh token is gone")
	}
	if st, err := decodeState(sec.Data); err != nil || st.Token == nil || st.Token.RefreshToken != rt {
		t.Fatal("the state Secret no longer holds the pair")
	}
}

// TestOrphanDeleteChecksTheAPIServer: the retention of an orphaned state
// Secret has passed, and its ManagedToken is created again just before the
// orphan run, which a cache that has not seen the re-create reports as
// gone. The run asks the API server before deleting, and keeps the state
// Secret: the re-created token resumes from the stored pair.
func TestOrphanDeleteChecksTheAPIServer(t *testing.T) {
	h, rt := newOrphanedAmoCRM(t)
	h.clk.Step(DefaultOrphanRetention + time.Minute)

	name := h.mt.Name
	h.mt = nil
	h.createAmoMT("")
	cached := h.r.Client
	h.r.Client = lagging{Client: cached, hide: name}
	h.reconcile()
	if h.secret(stateSecretName(name)) == nil {
		t.Fatal("the state Secret was deleted though its ManagedToken exists again")
	}
	if st := h.state(); st.Token == nil || st.Token.RefreshToken != rt {
		t.Fatal("the state Secret no longer holds the pair")
	}
	h.r.Client = cached
	h.reconcile() // adopts
	h.reconcile() // the access token expired meanwhile: refreshes with the stored refresh token
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if st := h.state(); !h.amo.RefreshTokenLive(st.Token.RefreshToken) || h.amo.ReusedRefreshTokens() != 0 {
		t.Fatal("the re-created ManagedToken did not resume from the stored pair")
	}
}

// lagging is a client whose reads, like a cache that has not seen a
// create yet, do not find the ManagedToken named hide.
type lagging struct {
	client.Client
	hide string
}

func (l lagging) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*tokensv1alpha1.ManagedToken); ok && key.Name == l.hide {
		return apierrors.NewNotFound(tokensv1alpha1.GroupVersion.WithResource("managedtokens").GroupResource(), key.Name)
	}
	return l.Client.Get(ctx, key, obj, opts...)
}

// TestUntriedGrantIsNotHiddenByTheWatch: with the credentials watch on
// (the manager's setting, which the harness leaves off otherwise), a grant
// the provider could not answer for (a 502 on the first exchange) is tried
// again after its back-off: the stored credentials version must not let
// load skip a grant that was never used up. And credentials that change
// between the decision and the call make the run decide again, so a grant
// they bring is not hidden under their new version.
func TestUntriedGrantIsNotHiddenByTheWatch(t *testing.T) {
	watchOn := func(h *harness) {
		h.r.CredentialsVersion = func(ctx context.Context, ns, name string) (string, bool) {
			s := &corev1.Secret{}
			if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s); err != nil {
				return "", false
			}
			return s.ResourceVersion, true
		}
	}
	t.Run("a first exchange that failed transiently", func(t *testing.T) {
		h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
		watchOn(h)
		h.amoCreds(map[string]string{"authorization_code": h.amo.IssueAuthorizationCode()})
		h.amo.FailNext(1, http.StatusBadGateway, "<html>Bad Gateway</html>", nil)
		h.createAmoMT("")
		h.followRequeues(time.Hour)
		h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
		if n := h.amo.Calls("authorization_code"); n != 2 {
			t.Fatalf("%d code exchanges, want 2 (the failed one and its retry)", n)
		}
	})
	t.Run("a grant added after the decision", func(t *testing.T) {
		h := newReadyAmoCRM(t)
		watchOn(h)
		h.advancePastNextRefresh()
		h.reconcile() // a refresh records the credentials' version
		stale := h.r.CredentialsVersion
		var once sync.Once
		h.r.CredentialsVersion = func(ctx context.Context, ns, name string) (string, bool) {
			rv, ok := stale(ctx, ns, name)
			// The watch has not seen the edit below yet.
			once.Do(func() {
				s := h.secret(name)
				s.Data["authorization_code"] = []byte(h.amo.IssueAuthorizationCode())
				if err := k8sClient.Update(ctx, s); err != nil {
					t.Fatal(err)
				}
			})
			return rv, ok
		}
		h.advancePastNextRefresh()
		h.reconcile() // decided on the old version; the call finds a new one
		h.r.CredentialsVersion = stale
		h.reconcile()
		if n := h.amo.Calls("authorization_code"); n != 1 {
			t.Fatalf("%d code exchanges, want the new grant tried once", n)
		}
	})
}

func TestStateOfAnotherProviderIsNotAdopted(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	sec := &corev1.Secret{}
	sec.Namespace, sec.Name, sec.Type = h.ns, stateSecretName("crm"), stateSecretType
	mtStub := &tokensv1alpha1.ManagedToken{ObjectMeta: metav1.ObjectMeta{Name: "crm"}}
	sec.Labels = ownedLabels(mtStub, roleState)
	sec.Data = encodeState(tokenState{Provider: "Facebook"})
	if err := k8sClient.Create(h.ctx, sec); err != nil {
		t.Fatal(err)
	}
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonStateSecretNotOwned)
	if h.amo.Calls("token") != 0 {
		t.Fatal("the provider was called with another provider's state in place")
	}
}

// TestForcedRefreshHandledWithItsOutcome: the handled request is stored in
// the same write as the outcome of the refresh it caused, so a forced
// refresh whose call fails is retried by the normal back-off, not forced
// again, and a crash before the call forces it once after the restart.
func TestForcedRefreshHandledWithItsOutcome(t *testing.T) {
	h := newReadyAmoCRM(t)
	base := h.amo.Calls("refresh_token")

	h.annotate("force-1")
	h.amo.FailNext(1, http.StatusInternalServerError, "<html>500</html>", nil)
	h.reconcile()
	if st := h.state(); st.HandledRequest != "force-1" || st.Failure == nil {
		t.Fatalf("the handled request must be stored with the failure: %+v", st)
	}
	for i := 0; i < 5; i++ {
		h.reconcile() // backing off: no forced retry
	}
	if got := h.amo.Calls("refresh_token") - base; got != 1 {
		t.Fatalf("%d refresh calls, want the one forced call while backing off", got)
	}

	// A crash right before the call of the next forced refresh: after the
	// restart it happens once.
	h.clk.Step(time.Hour)
	h.reconcile()
	h.annotate("force-2")
	h.wrapAmo(func(p *hookProvider) { p.before = func() { panic(errKilled) } })
	if died, _ := h.reconcileCtx(h.ctx); !died {
		t.Fatal("the crash point was not reached")
	}
	h.restart()
	h.clk.Step(h.r.spendTimeout() + time.Minute)
	calls := h.amo.Calls("refresh_token")
	for i := 0; i < 4; i++ {
		h.reconcile()
	}
	if got := h.amo.Calls("refresh_token") - calls; got != 1 {
		t.Fatalf("%d refreshes after the restart, want exactly 1", got)
	}
	if h.get().Status.LastHandledRefreshRequest != "force-2" {
		t.Fatalf("lastHandledRefreshRequest = %q", h.get().Status.LastHandledRefreshRequest)
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}
