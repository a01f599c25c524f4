package controllers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/authz"
	"github.com/tokenkeeper/tokenkeeper/internal/callback"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

// TestKeeperStoresCallbackPairWithoutReconcile: a replica that does not
// lead runs no reconcile. An authorization callback there obtains a pair,
// and the state write fails until the spend's deadline: the pair is only in
// memory. The keeper stores it with no reconcile: while it runs, when the
// manager stops, and racing a reconcile (the leader's case) with one state
// write, not two.
func TestKeeperStoresCallbackPairWithoutReconcile(t *testing.T) {
	for _, when := range []string{"while running", "when stopping", "racing a reconcile"} {
		t.Run(when, func(t *testing.T) {
			h, state := readyWithAuthorizationRequest(t, amocrmfake.Options{})
			if a := h.get().Status.Authorization; a == nil || a.Phase != tokensv1alpha1.AuthorizationPending {
				t.Fatalf("status.authorization = %+v, want Pending", a)
			}

			// The intent is written; every later state write fails until
			// the spend's deadline has passed.
			h.r.SpendTimeout = 300 * time.Millisecond
			h.client.skipStateWrites.Store(1)
			h.client.failStateWrites.Store(1000)
			code := h.amo.IssueAuthorizationCode()
			res := h.r.HandleCallback(h.ctx, callback.Params{Provider: tokensv1alpha1.ProviderAmoCRM, State: state, Code: code, Referer: h.mt.Spec.AmoCRM.Domain})
			if res.Outcome != callback.NotStored || !strings.Contains(res.Message, "keeps retrying to store it") {
				t.Fatalf("callback with failing state writes: %+v", res)
			}
			if h.state().Token.RefreshToken == h.amo.CurrentRefreshToken() {
				t.Fatal("the store was supposed to fail")
			}
			if n := len(h.r.memory().pendingEntries()); n != 1 {
				t.Fatalf("%d pairs in memory, want 1", n)
			}
			h.client.failStateWrites.Store(0)
			var stateWrites atomic.Int32
			h.client.afterWrite = func(role string) {
				if role == roleState {
					stateWrites.Add(1)
				}
			}

			ctx, cancel := context.WithCancel(h.ctx)
			defer cancel()
			k := &keeper{r: h.r, interval: 20 * time.Millisecond}
			if when == "when stopping" {
				k.interval = time.Hour
			}
			if when == "racing a reconcile" {
				k.interval, k.minAge = time.Millisecond, -1
			}
			done := make(chan error, 1)
			go func() { done <- k.Start(ctx) }()
			switch when {
			case "while running":
				deadline := time.Now().Add(10 * time.Second)
				for h.state().Token.RefreshToken != h.amo.CurrentRefreshToken() {
					if time.Now().After(deadline) {
						t.Fatal("the keeper did not store the pair within 10s")
					}
					time.Sleep(20 * time.Millisecond)
				}
			case "racing a reconcile":
				for i := 0; i < 3; i++ {
					h.reconcile()
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("keeper: %v", err)
			}

			st := h.state()
			if st.Token == nil || st.Token.RefreshToken != h.amo.CurrentRefreshToken() || !h.amo.RefreshTokenLive(st.Token.RefreshToken) {
				t.Fatal("the state Secret does not hold the pair the provider issued for the code")
			}
			if n := len(h.r.memory().pendingEntries()); n != 0 {
				t.Fatalf("%d pairs still in memory", n)
			}
			if n := h.amo.Calls(amocrm.OpAuthorizationCode); n != 1 {
				t.Fatalf("%d code exchanges, want 1", n)
			}
			if n := stateWrites.Load(); n != 1 {
				t.Fatalf("%d state writes to store one pair, want 1", n)
			}
			fmt.Printf("measured: keeper %s: pair stored with %d state write, %d code exchange\n", when, stateWrites.Load(), h.amo.Calls(amocrm.OpAuthorizationCode))
		})
	}
}

// TestKeeperWaitsForSpendInFlightAtStop: the manager stops while a refresh
// is at the provider. The refresh goes on (shutdown does not cut it), its
// state write fails until the spend's deadline, and the pair is left in
// memory after the keeper was told to stop: the stopping keeper waits for
// the spend and stores the pair.
func TestKeeperWaitsForSpendInFlightAtStop(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	oldRT := h.state().Token.RefreshToken

	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- (&keeper{r: h.r, interval: time.Hour}).Start(ctx) }()

	h.r.SpendTimeout = 300 * time.Millisecond
	h.client.skipStateWrites.Store(1) // the intent
	h.client.failStateWrites.Store(1000)
	h.wrapAmo(func(p *hookProvider) { p.after = cancel }) // stop while the answer is in hand
	h.advancePastNextRefresh()
	h.reconcile()
	if h.state().Token.RefreshToken != oldRT {
		t.Fatal("the store was supposed to fail")
	}
	select {
	case err := <-done:
		t.Fatalf("the keeper stopped (%v) with a pair not stored", err)
	default:
	}
	h.client.failStateWrites.Store(0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the stopping keeper did not return")
	}
	st := h.state()
	if st.Token.RefreshToken != h.amo.CurrentRefreshToken() || !h.amo.RefreshTokenLive(st.Token.RefreshToken) {
		t.Fatal("the pair of the refresh in flight at stop was not stored")
	}
	if n := h.amo.ReusedRefreshTokens(); n != 0 {
		t.Fatalf("%d reused refresh tokens", n)
	}
}

// TestNoSpendStartsOnceSettling: once the manager is stopping, a due
// refresh is deferred and the provider is not called: when the reconcile's
// context is cancelled (SIGTERM, a lost lease), and when Settle has begun.
// Without the second, a spend that began after Settle found nothing in
// flight could be cut by the process's exit with its answer in hand.
func TestNoSpendStartsOnceSettling(t *testing.T) {
	for _, stop := range []string{"cancelled context", "settling"} {
		t.Run(stop, func(t *testing.T) {
			h := newHarness(t, amocrmfake.Options{})
			h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
			h.createAmoMT("")
			h.reconcile()
			calls := h.amo.Calls(amocrm.OpRefreshToken)
			rt := h.state().Token.RefreshToken

			h.advancePastNextRefresh()
			if stop == "settling" {
				h.r.Settle(h.ctx) // nothing in flight: returns at once
				h.reconcile()
			} else {
				ctx, cancel := context.WithCancel(h.ctx)
				cancel()
				_, _ = h.r.Reconcile(ctx, ctrl.Request{NamespacedName: h.key()}) // its writes fail too
			}
			if n := h.amo.Calls(amocrm.OpRefreshToken); n != calls {
				t.Fatalf("%d refresh calls, want none", n-calls)
			}
			if st := h.state(); st.Token.RefreshToken != rt || st.Intent != nil {
				t.Fatal("a deferred refresh changed the state or left an intent")
			}
		})
	}
}

// TestLeaseLossWaitsForSpendInFlight: the leader loses its lease while a
// refresh's answer is in hand and not yet stored. controller-runtime then
// skips its graceful shutdown and Start returns at once; cmd/main.go would
// exit, and the rotated pair would die with the process. Run waits until
// the pair is stored, then returns the lease error.
func TestLeaseLossWaitsForSpendInFlight(t *testing.T) {
	ns := newNamespace(t)
	amo := amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI})
	srv := httptest.NewServer(amo)
	defer srv.Close()
	if err := k8sClient.Create(ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "amocrm-oauth"},
		StringData: map[string]string{"client_id": testClientID, "client_secret": testClientSecret, "refresh_token": amo.IssueRefreshToken()}}); err != nil {
		t.Fatal(err)
	}
	mt := validAmoCRM(ns, "crm")
	mt.Spec.AmoCRM.RedirectURI = testRedirectURI
	if err := k8sClient.Create(ctx(), mt); err != nil {
		t.Fatal(err)
	}

	answered, release := make(chan struct{}), make(chan struct{})
	var refreshes atomic.Int32
	startReturned := make(chan error, 1)
	exited := make(chan error, 1)
	var r *ManagedTokenReconciler
	startManagerWith(t, ns, srv.URL, "", "", managerOptions{
		leaseID:    "lease-loss",
		leaseTimes: &[3]time.Duration{3 * time.Second, 2 * time.Second, 500 * time.Millisecond},
		tweak: func(rec *ManagedTokenReconciler) {
			r = rec
			// The first refresh (the bootstrap is not one) stops with its
			// answer in hand until released.
			r.Providers[tokensv1alpha1.ProviderAmoCRM] = &hookProvider{Provider: r.Providers[tokensv1alpha1.ProviderAmoCRM], after: func() {
				if refreshes.Add(1) == 1 {
					close(answered)
					<-release
				}
			}}
		},
		startReturned: func(err error) { startReturned <- err },
		exited:        exited,
	})
	key := types.NamespacedName{Namespace: ns, Name: "crm"}
	eventually(t, "crm Ready", 30*time.Second, func() bool {
		got := &tokensv1alpha1.ManagedToken{}
		return k8sClient.Get(ctx(), key, got) == nil && meta.IsStatusConditionTrue(got.Status.Conditions, tokensv1alpha1.ConditionReady)
	})
	before := amo.CurrentRefreshToken()

	patchAnnotation(t, key, "lease-loss")
	select {
	case <-answered:
	case <-time.After(30 * time.Second):
		t.Fatal("the forced refresh did not reach the provider")
	}
	if amo.CurrentRefreshToken() == before {
		t.Fatal("the provider did not rotate the pair")
	}

	// Another holder takes the Lease; the leader cannot renew it.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		lease := &coordinationv1.Lease{}
		if err := k8sClient.Get(ctx(), types.NamespacedName{Namespace: ns, Name: "lease-loss"}, lease); err != nil {
			return err
		}
		now := metav1.NewMicroTime(time.Now())
		lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds = ptr.To("another-manager"), ptr.To(int32(3600))
		lease.Spec.AcquireTime, lease.Spec.RenewTime = &now, &now
		return k8sClient.Update(ctx(), lease)
	}); err != nil {
		t.Fatal(err)
	}
	wantLeaseLost(t, startReturned, "the manager's Start")
	select {
	case err := <-exited:
		t.Fatalf("Run returned (%v) with a rotated pair in hand and not stored", err)
	case <-time.After(time.Second):
	}

	close(release)
	wantLeaseLost(t, exited, "Run, once the refresh could end,")
	sec := &corev1.Secret{}
	if err := k8sClient.Get(ctx(), types.NamespacedName{Namespace: ns, Name: stateSecretName("crm")}, sec); err != nil {
		t.Fatal(err)
	}
	st, err := decodeState(sec.Data)
	if err != nil {
		t.Fatal(err)
	}
	if st.Token == nil || st.Token.RefreshToken != amo.CurrentRefreshToken() || !amo.RefreshTokenLive(st.Token.RefreshToken) {
		t.Fatal("the state Secret does not hold the pair of the refresh in flight when the lease was lost")
	}
	if !r.memory().settled() {
		t.Fatal("Run returned with a spend in flight or a pair only in memory")
	}
	if n := amo.ReusedRefreshTokens(); n != 0 {
		t.Fatalf("%d reused refresh tokens", n)
	}
	fmt.Printf("measured: lease lost with a refresh's answer in hand; Run returned after storing it (%d refresh)\n", refreshes.Load())
}

// wantLeaseLost waits up to 30 s for what to return the lost lease's error
// on ch.
func wantLeaseLost(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err == nil || !strings.Contains(err.Error(), "leader election lost") {
			t.Fatalf("%s returned %v, want the lost lease", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return within 30s", what)
	}
}

// TestKeeperOnReplicaThatDoesNotLead: two replicas behind one callback
// Service. The leader reconciles; the other holds no lease and runs no
// reconcile, but its endpoint takes the callback. Its state writes fail
// until the spend's deadline, so the pair is only in its memory. Once
// writes work, its keeper (wired by SetupWithManager) stores the pair, and
// the leader publishes it: Ready, with one code exchange.
func TestKeeperOnReplicaThatDoesNotLead(t *testing.T) {
	e := newAuthzEnv(t) // the leader: it runs without leader election
	e.amoMT("crm", false)
	eventually(t, "crm waiting", 20*time.Second, func() bool {
		return waitingForAuthorization(e.get("crm")) && len(e.get("crm").Status.Conditions) > 0
	})

	// A Lease someone else holds for an hour: the second replica never leads.
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "keeper-test", Namespace: e.ns},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("the-leader"), LeaseDurationSeconds: ptr.To(int32(3600)),
			AcquireTime: &now, RenewTime: &now},
	}
	if err := k8sClient.Create(e.ctx, lease); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var flaky *flakyClient
	var follower manager.Manager
	startManagerWith(t, e.ns, e.amoURL, e.fbURL, "", managerOptions{
		leaseID: "keeper-test",
		tweak: func(r *ManagedTokenReconciler) {
			r.Clock = e.clk
			r.ConsentURL = testConsentURL(e.amoURL, e.fbURL)
			r.SpendTimeout = 500 * time.Millisecond
			flaky = &flakyClient{Client: r.Client}
			flaky.skipStateWrites.Store(1) // the intent
			flaky.failStateWrites.Store(1 << 30)
			r.Client = flaky
		},
		setup: func(mgr manager.Manager, r *ManagedTokenReconciler) {
			follower = mgr
			if err := mgr.Add(&callback.Endpoint{Listener: l, Handler: callback.NewServer(callback.Options{
				Handler: r.HandleCallback, RatePerSecond: 100, Burst: 100, Timeout: time.Minute,
			})}); err != nil {
				t.Fatal(err)
			}
		},
	})
	eventually(t, "the second replica's cache", 20*time.Second, func() bool {
		return follower.GetCache().WaitForCacheSync(e.ctx)
	})

	// The consent page sends the browser to the callback; the Service
	// routes it to the replica that does not lead.
	consentURL, _ := e.authorize("crm")
	p := fetch(t, consentURL)
	if p.status != http.StatusFound || !strings.HasPrefix(p.location, e.endpoint) {
		t.Fatalf("consent page: %d %q", p.status, p.location)
	}
	p = fetch(t, "http://"+l.Addr().String()+strings.TrimPrefix(p.location, e.endpoint))
	if !strings.Contains(p.body, "keeps retrying to store it") {
		t.Fatalf("callback on the replica that does not lead, with failing state writes: %d\n%s", p.status, p.body)
	}
	select {
	case <-follower.Elected():
		t.Fatal("the second replica leads")
	default:
	}

	flaky.failStateWrites.Store(0)
	e.waitReady("crm")
	if out := e.output("crm-token"); out == nil || string(out.Data[tokensv1alpha1.OutputAccessTokenKey]) != e.amo.CurrentAccessToken() {
		t.Fatal("the output Secret does not hold the token the code gave")
	}
	if got := e.amo.CurrentRefreshToken(); !e.amo.RefreshTokenLive(got) {
		t.Fatal("no live refresh token")
	}
	if n := e.amo.Calls(amocrm.OpAuthorizationCode); n != 1 {
		t.Fatalf("%d code exchanges, want 1", n)
	}
	fmt.Printf("measured: a pair obtained on a replica that does not lead was stored by its keeper and published by the leader; %d code exchange\n", e.amo.Calls(amocrm.OpAuthorizationCode))
}

// TestRecreatedManagedTokenResumesFromPendingPair: a refresh obtains a new
// pair whose state write fails, so the pair is only in memory and the
// refresh token in the state Secret is already spent. Then the
// ManagedToken is deleted, and (Argo CD Replace=true) created again. The new
// pair must end in the state Secret and be the one the re-created
// ManagedToken resumes from, whichever stores it first: a reconcile of the
// re-created ManagedToken, or the keeper. Deleted for good, the state Secret
// still gets the pair and keeps its orphan mark.
func TestRecreatedManagedTokenResumesFromPendingPair(t *testing.T) {
	for _, order := range []string{"re-created, then reconciled", "stored by the keeper, then re-created", "deleted for good"} {
		t.Run(order, func(t *testing.T) {
			h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
			h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
			h.createAmoMT("")
			h.reconcile()
			oldUID := h.get().UID

			h.r.SpendTimeout = 300 * time.Millisecond
			h.client.skipStateWrites.Store(1) // the intent
			h.client.failStateWrites.Store(1000)
			h.advancePastNextRefresh()
			h.reconcile()
			issued := h.amo.CurrentRefreshToken()
			if h.state().Token.RefreshToken == issued {
				t.Fatal("the store was supposed to fail")
			}
			refreshes := h.amo.Calls("refresh_token")

			if err := k8sClient.Delete(h.ctx, h.get()); err != nil {
				t.Fatal(err)
			}
			h.client.failStateWrites.Store(0)
			h.reconcile() // the ManagedToken is gone: its state is marked orphaned
			if h.secret(stateSecretName("crm")).Annotations[orphanedAtAnnotation] == "" {
				t.Fatal("the state Secret of the deleted ManagedToken is not marked")
			}
			if order != "re-created, then reconciled" {
				h.r.storeKept(h.ctx, 0)
				if st := h.state(); st.Token.RefreshToken != issued {
					t.Fatal("the keeper did not store the pair of the deleted ManagedToken")
				}
			}
			if order == "deleted for good" {
				h.reconcile() // the state Secret changed: still an orphan
				if h.secret(stateSecretName("crm")).Annotations[orphanedAtAnnotation] == "" {
					t.Fatal("the state Secret of a deleted ManagedToken lost its orphan mark")
				}
			} else {
				h.mt = nil
				h.createAmoMT("")
				if h.get().UID == oldUID {
					t.Fatal("not a new ManagedToken")
				}
				h.reconcile()
				h.reconcile()
				h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, "")
				if out := h.output(); out == nil || string(out.Data[tokensv1alpha1.OutputAccessTokenKey]) != h.amo.CurrentAccessToken() {
					t.Fatal("the re-created ManagedToken does not publish the access token of the pending pair")
				}
				if sec := h.secret(stateSecretName("crm")); sec.Annotations[ownerUIDAnnotation] != string(h.get().UID) {
					t.Fatalf("the state Secret is not the re-created ManagedToken's: %v", sec.Annotations)
				}
			}
			st := h.state()
			if st.Token == nil || st.Token.RefreshToken != issued || !h.amo.RefreshTokenLive(issued) {
				t.Fatal("the state Secret does not hold the live pair the provider issued")
			}
			if n := h.amo.Calls("refresh_token") - refreshes; n != 0 {
				t.Fatalf("%d refresh calls after the pair was issued, want 0", n)
			}
			if n := len(h.r.memory().pendingEntries()); n != 0 {
				t.Fatalf("%d pairs still in memory", n)
			}
			if order != "deleted for good" {
				// The chain goes on from the stored pair.
				h.advancePastNextRefresh()
				h.reconcile()
				h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, "")
				if h.state().Token.RefreshToken != h.amo.CurrentRefreshToken() {
					t.Fatal("the next refresh was not stored")
				}
			}
			if n := h.amo.ReusedRefreshTokens(); n != 0 {
				t.Fatalf("%d refresh tokens reused", n)
			}
		})
	}
}

// TestDeletedStateRestoredBeforeAuthorizationRequest: the state Secret and
// the credentials Secret are deleted together (kubectl delete secret --all)
// on a token that was once authorized with kubectl tokenkeeper authorize,
// whose request annotation stays. The state Secret must be written again
// from memory with its token, not created afresh for the old request
// (which would forget the pair and later replay the consumed grant).
func TestDeletedStateRestoredBeforeAuthorizationRequest(t *testing.T) {
	h, _ := readyWithAuthorizationRequest(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
	if a := h.state().Authorization; a == nil {
		t.Fatal("the authorization request was not recorded")
	}
	rt := h.state().Token.RefreshToken
	original := string(h.secret("amocrm-oauth").Data["refresh_token"])

	for _, name := range []string{stateSecretName("crm"), "amocrm-oauth"} {
		if err := k8sClient.Delete(h.ctx, h.secret(name)); err != nil {
			t.Fatal(err)
		}
	}
	h.reconcile()
	if st := h.state(); st.Token == nil || st.Token.RefreshToken != rt || !h.amo.RefreshTokenLive(rt) {
		t.Fatal("the deleted state Secret was not written again with its token")
	}
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonCredentialsSecretNotFound)

	// The credentials come back, with the grant that was spent long ago:
	// the token resumes from the stored pair.
	h.amoCreds(map[string]string{"refresh_token": original})
	h.reconcile()
	h.advancePastNextRefresh()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if st := h.state(); st.Token.RefreshToken != h.amo.CurrentRefreshToken() || st.Token.RefreshToken == rt {
		t.Fatal("the token did not go on from the restored pair")
	}
	if n := h.amo.ReusedRefreshTokens(); n != 0 {
		t.Fatalf("%d refresh tokens reused", n)
	}
}

// stateReadFailing fails every Get of a state Secret.
type stateReadFailing struct{ client.Reader }

func (r stateReadFailing) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if strings.HasPrefix(key.Name, stateNamePrefix) {
		return fmt.Errorf("injected: the API server is unreachable")
	}
	return r.Reader.Get(ctx, key, obj, opts...)
}

// TestPendingPairNotWrittenBlind: a pair this process could not store is
// retried, but the state Secret meanwhile holds a newer pair (stored by
// another replica's authorization callback, say). When the fresh read of
// the state Secret fails, the retry must not write the older pair over it
// on the strength of what the cache showed.
func TestPendingPairNotWrittenBlind(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	h.r.SpendTimeout = 300 * time.Millisecond
	h.client.skipStateWrites.Store(1) // the intent
	h.client.failStateWrites.Store(1000)
	h.advancePastNextRefresh()
	h.reconcile()
	if len(h.r.memory().pendingEntries()) != 1 {
		t.Fatal("no pair pending")
	}
	h.client.failStateWrites.Store(0)

	// A newer pair is stored elsewhere.
	sec := h.secret(stateSecretName("crm"))
	st, err := decodeState(sec.Data)
	if err != nil {
		t.Fatal(err)
	}
	newer := *st.Token
	newer.RefreshToken, newer.ObtainedAt = h.amo.IssueRefreshToken(), h.clk.Now().Add(time.Minute)
	st.Token, st.Intent = &newer, nil
	sec.Data = encodeState(st)
	if err := k8sClient.Update(h.ctx, sec); err != nil {
		t.Fatal(err)
	}

	h.r.APIReader = stateReadFailing{k8sClient}
	h.r.storeKept(h.ctx, 0)
	if _, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()}); err != nil {
		t.Logf("reconcile: %v", err)
	}
	if got := h.state().Token.RefreshToken; got != newer.RefreshToken {
		t.Fatal("the older pending pair was written over the newer stored one")
	}
	// Once the state Secret can be read again, the pending pair is found
	// older and dropped, and the newer one stays.
	h.r.APIReader = k8sClient
	h.reconcile()
	if got := h.state().Token.RefreshToken; got != newer.RefreshToken {
		t.Fatal("the older pending pair was written over the newer stored one")
	}
	if n := len(h.r.memory().pendingEntries()); n != 0 {
		t.Fatalf("%d pairs still pending", n)
	}
}

// readyWithAuthorizationRequest returns a harness with a Ready AmoCRM
// ManagedToken on which an authorization request (kubectl tokenkeeper
// authorize) was then accepted, and that request's state.
func readyWithAuthorizationRequest(t *testing.T, opts amocrmfake.Options) (*harness, string) {
	t.Helper()
	h := newHarness(t, opts)
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	h.r.ConsentURL = testConsentURL(h.amoURL, h.fbURL)
	state, hash, err := authz.NewState()
	if err != nil {
		t.Fatal(err)
	}
	setAnnotation(t, h.get(), tokensv1alpha1.AuthorizeRequestAnnotation, hash)
	h.reconcile()
	return h, state
}
