package controllers

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

// TestOutputNotWrittenIsNotReady: the namespace's ResourceQuota leaves room
// for the state Secret only, so the API server refuses the output Secret.
// The pair is stored, but workloads do not have the token: Ready is False
// (OutputNotWritten, naming the quota, with one Warning event), not True,
// and the reconcile returns an error so that it is retried with back-off.
// Once the quota allows it, the output Secret is written and Ready is True.
func TestOutputNotWrittenIsNotReady(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")

	var secrets corev1.SecretList
	if err := k8sClient.List(h.ctx, &secrets, client.InNamespace(h.ns)); err != nil {
		t.Fatal(err)
	}
	setSecretQuota(t, h.ctx, h.ns, len(secrets.Items)+1, len(secrets.Items))

	if _, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()}); err == nil || !strings.Contains(err.Error(), "exceeded quota") {
		t.Fatalf("reconcile with the output Secret refused: error %v, want the quota's", err)
	}
	if st := h.state(); st.Token == nil || st.Token.RefreshToken != h.amo.CurrentRefreshToken() {
		t.Fatal("the pair was not stored")
	}
	if h.output() != nil {
		t.Fatal("the quota did not refuse the output Secret")
	}
	c := h.cond(tokensv1alpha1.ConditionReady)
	if c.Status != metav1.ConditionFalse || c.Reason != ReasonOutputNotWritten || !strings.Contains(c.Message, "exceeded quota") {
		t.Fatalf("Ready %s %s %q, want False %s naming the quota", c.Status, c.Reason, c.Message, ReasonOutputNotWritten)
	}
	for _, secret := range append(h.amo.Secrets(), testClientSecret) {
		if strings.Contains(c.Message, secret) {
			t.Fatal("the condition message holds a secret")
		}
	}
	if n := h.events.count(ReasonOutputNotWritten); n != 1 {
		t.Fatalf("%d %s events, want 1", n, ReasonOutputNotWritten)
	}

	setSecretQuota(t, h.ctx, h.ns, len(secrets.Items)+2, len(secrets.Items)+1)
	h.reconcile()
	out := h.output()
	if out == nil || string(out.Data[tokensv1alpha1.OutputAccessTokenKey]) != h.amo.CurrentAccessToken() {
		t.Fatal("the output Secret does not hold the stored token once the quota allows it")
	}
	if c := h.cond(tokensv1alpha1.ConditionReady); c.Status != metav1.ConditionTrue {
		t.Fatalf("Ready %s %s %q once the output Secret is written, want True", c.Status, c.Reason, c.Message)
	}
	if n := h.events.count(ReasonOutputNotWritten); n != 1 {
		t.Fatalf("%d %s events, want still 1", n, ReasonOutputNotWritten)
	}
}

// setSecretQuota creates or updates the namespace's ResourceQuota on Secrets
// with used as its status: envtest runs no quota controller, so the test
// sets what it would have counted, and the API server's quota admission
// does the rest.
func setSecretQuota(t *testing.T, ctx context.Context, ns string, hard, used int) {
	t.Helper()
	q := &corev1.ResourceQuota{}
	key := types.NamespacedName{Namespace: ns, Name: "secrets"}
	list := func(n int) corev1.ResourceList {
		return corev1.ResourceList{"count/secrets": *resource.NewQuantity(int64(n), resource.DecimalSI)}
	}
	if err := k8sClient.Get(ctx, key, q); err != nil {
		q = &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: key.Name}, Spec: corev1.ResourceQuotaSpec{Hard: list(hard)}}
		if err := k8sClient.Create(ctx, q); err != nil {
			t.Fatal(err)
		}
	} else {
		q.Spec.Hard = list(hard)
		if err := k8sClient.Update(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	q.Status = corev1.ResourceQuotaStatus{Hard: list(hard), Used: list(used)}
	if err := k8sClient.Status().Update(ctx, q); err != nil {
		t.Fatal(err)
	}
}

// TestUnlabelledStateSecretIsReported: a Secret without tokenkeeper's label
// holds the state Secret's name. The manager's label-selected cache never
// shows it, so each run used to decide to create the state Secret, fail
// (AlreadyExists), and try again a second later forever, reporting
// NoToken. Now the token reports StateSecretNotOwned, with no provider
// call and no more write attempts, and deleting that Secret wakes it.
func TestUnlabelledStateSecretIsReported(t *testing.T) {
	ns := newNamespace(t)
	amo := amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI})
	srv := httptest.NewServer(amo)
	defer srv.Close()
	mk := func(name string, data map[string]string) {
		t.Helper()
		if err := k8sClient.Create(ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}); err != nil {
			t.Fatal(err)
		}
	}
	mk("amocrm-oauth", map[string]string{"client_id": testClientID, "client_secret": testClientSecret, "refresh_token": amo.IssueRefreshToken()})
	mk(stateSecretName("crm"), map[string]string{"note": "made by hand"})
	mt := validAmoCRM(ns, "crm")
	mt.Spec.AmoCRM.RedirectURI = testRedirectURI
	if err := k8sClient.Create(ctx(), mt); err != nil {
		t.Fatal(err)
	}

	var stateWrites atomic.Int32
	startManagerWith(t, ns, srv.URL, "", "", managerOptions{tweak: func(r *ManagedTokenReconciler) {
		r.Client = &flakyClient{Client: r.Client, beforeWrite: func(role string) {
			if role == roleState {
				stateWrites.Add(1)
			}
		}}
	}})
	key := types.NamespacedName{Namespace: ns, Name: "crm"}
	ready := func() *metav1.Condition {
		got := &tokensv1alpha1.ManagedToken{}
		if err := k8sClient.Get(ctx(), key, got); err != nil {
			return nil
		}
		return meta.FindStatusCondition(got.Status.Conditions, tokensv1alpha1.ConditionReady)
	}
	eventually(t, "Ready=False StateSecretNotOwned", 20*time.Second, func() bool {
		c := ready()
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonStateSecretNotOwned
	})
	n := stateWrites.Load()
	time.Sleep(5 * time.Second)
	if more := stateWrites.Load() - n; more != 0 {
		t.Fatalf("%d more state Secret write attempts in 5 s after the token reported the Secret, want none", more)
	}
	if c := ready(); c.Reason != ReasonStateSecretNotOwned {
		t.Fatalf("Ready reason %s after 5 s, want still %s", c.Reason, ReasonStateSecretNotOwned)
	}
	if calls := amo.Calls(amocrm.OpRefreshToken); calls != 0 {
		t.Fatalf("%d refresh calls with the state Secret's name taken, want none", calls)
	}

	if err := k8sClient.Delete(ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: stateSecretName("crm")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Ready once the Secret is deleted", 20*time.Second, func() bool {
		c := ready()
		return c != nil && c.Status == metav1.ConditionTrue
	})
	fmt.Printf("measured: an unlabelled Secret with the state name cost %d state write attempts before it was reported\n", n)
}

// TestPublishedLaterIsNoHotLoop: the output Secret holds a token obtained
// later than the stored state's, and no newer state comes (an older state
// Secret restored from a backup, say). The run leaves the output alone and
// looks again within a minute, not every second forever.
func TestPublishedLaterIsNoHotLoop(t *testing.T) {
	h := newReadyAmoCRM(t)
	sec := h.output()
	later := h.clk.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)
	sec.Data[tokensv1alpha1.OutputAccessTokenKey] = []byte("a-token-obtained-later")
	sec.Annotations[tokensv1alpha1.ObtainedAtAnnotation] = later
	if err := k8sClient.Update(h.ctx, sec); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		res := h.reconcile()
		if res.RequeueAfter < publishedLaterWake/2 || res.RequeueAfter > publishedLaterWake {
			t.Fatalf("run %d: requeue after %v, want about %v", i, res.RequeueAfter, publishedLaterWake)
		}
	}
	if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != "a-token-obtained-later" {
		t.Fatal("the run published its older token over the later one")
	}
}

// TestAPIErrorsBackOffAndAreReported: the API server refuses the spend
// intent's write (not a conflict: an admission policy, an outage). Each run
// used to try again 5 s later, forever, with Ready still TokenValid and no
// event. Now the waits grow, Ready names the refusal (still True while the
// token is valid), one event says so, and nothing reaches the provider.
func TestAPIErrorsBackOffAndAreReported(t *testing.T) {
	h := newReadyAmoCRM(t)
	refreshes := h.amo.Calls(amocrm.OpRefreshToken)
	h.client.failStateWrites.Store(1 << 20)
	h.advancePastNextRefresh()
	var waits []time.Duration
	for i := 0; i < 4; i++ {
		res := h.reconcile()
		waits = append(waits, res.RequeueAfter)
		h.clk.Step(res.RequeueAfter)
	}
	for i := 1; i < len(waits); i++ {
		if waits[i] <= waits[i-1] {
			t.Fatalf("waits %v: want them to grow", waits)
		}
	}
	c := h.cond(tokensv1alpha1.ConditionReady)
	if c.Status != metav1.ConditionTrue || c.Reason != ReasonKubernetesAPIError || !strings.Contains(c.Message, "injected state write failure") || !strings.Contains(c.Message, "no provider call could start") {
		t.Fatalf("Ready %s %s %q, want True %s naming the refusal", c.Status, c.Reason, c.Message, ReasonKubernetesAPIError)
	}
	if n := h.events.count(ReasonKubernetesAPIError); n != 1 {
		t.Fatalf("%d %s events, want 1", n, ReasonKubernetesAPIError)
	}
	if n := h.amo.Calls(amocrm.OpRefreshToken); n != refreshes {
		t.Fatalf("%d refresh calls without an intent written, want none", n-refreshes)
	}

	h.client.failStateWrites.Store(0)
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if n := h.amo.Calls(amocrm.OpRefreshToken); n != refreshes+1 {
		t.Fatalf("%d refresh calls once writes work, want 1", n-refreshes)
	}
}
