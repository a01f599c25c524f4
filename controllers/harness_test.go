package controllers

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

const (
	testClientID     = "client-id-4f1d"
	testClientSecret = "amocrm-client-secret-3a9c2b7e5d1f"
	testRedirectURI  = "https://api.example.com/amocrm/callback"
	testAppID        = "634974688087057"
	testAppSecret    = "facebook-app-secret-8e2a6c4b1d9f"
)

// recordedEvent is one event the reconciler emitted.
type recordedEvent struct{ Type, Reason, Note string }

// eventLog is an events.EventRecorder that keeps what it was given.
type eventLog struct {
	mu     sync.Mutex
	events []recordedEvent
}

func (e *eventLog) Eventf(_ runtime.Object, _ runtime.Object, eventtype, reason, _ string, note string, args ...interface{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, recordedEvent{eventtype, reason, fmt.Sprintf(note, args...)})
}

func (e *eventLog) all() []recordedEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]recordedEvent(nil), e.events...)
}

func (e *eventLog) count(reason string) int {
	n := 0
	for _, ev := range e.all() {
		if ev.Reason == reason {
			n++
		}
	}
	return n
}

// flakyClient fails writes of state Secrets while failStateWrites > 0, to
// prove a new pair survives a failed store.
type flakyClient struct {
	client.Client
	failStateWrites  atomic.Int32
	skipStateWrites  atomic.Int32 // state writes that succeed before failStateWrites applies
	failStatusWrites atomic.Int32
	failPatches      atomic.Int32
	// afterWrite, when set, is called after each successful Secret write
	// with the Secret's role ("state" or "output"): crash-point tests kill
	// or cancel the manager there.
	afterWrite func(role string)
	// beforeWrite, when set, is called before each Secret write with the
	// Secret's role: race tests let another writer in there.
	beforeWrite func(role string)
	// staleState, when set, is what a Get of the state Secret returns, as
	// an informer cache that has not seen later writes would.
	staleState atomic.Pointer[corev1.Secret]
}

// Get returns staleState for the state Secret while it is set.
func (f *flakyClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if stale := f.staleState.Load(); stale != nil && key.Namespace == stale.Namespace && key.Name == stale.Name {
		if sec, ok := obj.(*corev1.Secret); ok {
			stale.DeepCopyInto(sec)
			return nil
		}
	}
	return f.Client.Get(ctx, key, obj, opts...)
}

func (f *flakyClient) writing(obj client.Object) { callWithRole(f.beforeWrite, obj) }

func (f *flakyClient) wrote(obj client.Object) { callWithRole(f.afterWrite, obj) }

// callWithRole calls hook, when set, with the role of obj if it is a Secret.
func callWithRole(hook func(role string), obj client.Object) {
	if s, ok := obj.(*corev1.Secret); ok && hook != nil {
		hook(s.Labels[tokensv1alpha1.SecretRoleLabel])
	}
}

// Patch fails object patches (rollout restarts) while failPatches > 0.
func (f *flakyClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	if f.failPatches.Add(-1) >= 0 {
		return apierrors.NewServiceUnavailable("injected patch failure")
	}
	return f.Client.Patch(ctx, obj, patch, opts...)
}

// Status fails status writes while failStatusWrites > 0.
func (f *flakyClient) Status() client.SubResourceWriter {
	return &flakyStatus{SubResourceWriter: f.Client.Status(), f: f}
}

type flakyStatus struct {
	client.SubResourceWriter
	f *flakyClient
}

func (s *flakyStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	if s.f.failStatusWrites.Add(-1) >= 0 {
		return apierrors.NewServiceUnavailable("injected status write failure")
	}
	return s.SubResourceWriter.Patch(ctx, obj, patch, opts...)
}

func (f *flakyClient) failing(obj client.Object) bool {
	s, ok := obj.(*corev1.Secret)
	if !ok || !strings.HasPrefix(s.Name, stateNamePrefix) {
		return false
	}
	if f.skipStateWrites.Add(-1) >= 0 {
		return false
	}
	return f.failStateWrites.Add(-1) >= 0
}

func (f *flakyClient) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	f.writing(obj)
	if f.failing(obj) {
		return apierrors.NewServiceUnavailable("injected state write failure")
	}
	if err := f.Client.Create(ctx, obj, opts...); err != nil {
		return err
	}
	f.wrote(obj)
	return nil
}

func (f *flakyClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	f.writing(obj)
	if f.failing(obj) {
		return apierrors.NewServiceUnavailable("injected state write failure")
	}
	if err := f.Client.Update(ctx, obj, opts...); err != nil {
		return err
	}
	f.wrote(obj)
	return nil
}

// harness runs one ManagedToken against a fake provider on a fake clock,
// calling Reconcile directly against the real API server.
type harness struct {
	t      *testing.T
	ctx    context.Context
	ns     string
	clk    *clocktesting.FakeClock
	amo    *amocrmfake.Server
	fb     *facebookfake.Server
	r      *ManagedTokenReconciler
	events *eventLog
	client *flakyClient
	mt     *tokensv1alpha1.ManagedToken
	// amoURL and fbURL are the fakes' addresses.
	amoURL, fbURL string
}

func newHarness(t *testing.T, amoOpts amocrmfake.Options, fbOpts ...facebookfake.Options) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		ctx:    context.Background(),
		ns:     newNamespace(t),
		clk:    clocktesting.NewFakeClock(time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)),
		events: &eventLog{},
		client: &flakyClient{Client: k8sClient},
	}
	amoOpts.ClientID, amoOpts.ClientSecret, amoOpts.RedirectURI = testClientID, testClientSecret, testRedirectURI
	amoOpts.Clock = h.clk
	h.amo = amocrmfake.New(amoOpts)
	var fo facebookfake.Options
	if len(fbOpts) > 0 {
		fo = fbOpts[0]
	}
	fo.AppID, fo.AppSecret, fo.Clock = testAppID, testAppSecret, h.clk
	h.fb = facebookfake.New(fo)
	amoSrv := httptest.NewServer(h.amo)
	fbSrv := httptest.NewServer(h.fb)
	t.Cleanup(amoSrv.Close)
	t.Cleanup(fbSrv.Close)
	h.amoURL, h.fbURL = amoSrv.URL, fbSrv.URL
	h.r = &ManagedTokenReconciler{
		Client:    h.client,
		APIReader: k8sClient,
		Scheme:    scheme,
		Recorder:  h.events,
		Clock:     h.clk,
		Providers: map[tokensv1alpha1.Provider]provider.Provider{
			tokensv1alpha1.ProviderAmoCRM:   amocrm.New(amocrm.Options{BaseURL: amoSrv.URL, Clock: h.clk, HTTPClient: amoSrv.Client(), RequestsPerSecond: 1000}),
			tokensv1alpha1.ProviderFacebook: facebook.New(facebook.Options{BaseURL: fbSrv.URL, Clock: h.clk, HTTPClient: fbSrv.Client()}),
		},
	}
	t.Cleanup(func() { h.assertNoLeaks() })
	return h
}

// assertNoLeaks greps everything a human could see for every secret value
// the fakes issued: the captured manager log, status, events.
func (h *harness) assertNoLeaks() {
	secrets := append(h.amo.Secrets(), h.fb.Secrets()...)
	secrets = append(secrets, testClientSecret, testAppSecret)
	if l := leaked(logSink.String(), secrets); len(l) > 0 {
		h.t.Errorf("secret values in the log: %v", l)
	}
	for _, ev := range h.events.all() {
		if l := leaked(ev.Note, secrets); len(l) > 0 {
			h.t.Errorf("secret values in event %s: %v", ev.Reason, l)
		}
	}
	var list tokensv1alpha1.ManagedTokenList
	if err := k8sClient.List(h.ctx, &list, client.InNamespace(h.ns)); err == nil {
		for _, mt := range list.Items {
			if l := leaked(fmt.Sprintf("%+v", mt.Status), secrets); len(l) > 0 {
				h.t.Errorf("secret values in status of %s: %v", mt.Name, l)
			}
		}
	}
}

// amoCreds creates the credentials Secret.
func (h *harness) putCreds(name string, data map[string]string) {
	h.t.Helper()
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name}, StringData: data}
	if err := k8sClient.Create(h.ctx, sec); apierrors.IsAlreadyExists(err) {
		cur := &corev1.Secret{}
		if err := k8sClient.Get(h.ctx, client.ObjectKeyFromObject(sec), cur); err != nil {
			h.t.Fatal(err)
		}
		cur.Data, cur.StringData = nil, data
		if err := k8sClient.Update(h.ctx, cur); err != nil {
			h.t.Fatal(err)
		}
	} else if err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) amoCreds(extra map[string]string) {
	d := map[string]string{"client_id": testClientID, "client_secret": testClientSecret}
	for k, v := range extra {
		d[k] = v
	}
	h.putCreds("amocrm-oauth", d)
}

func (h *harness) createMT(mt *tokensv1alpha1.ManagedToken) {
	h.t.Helper()
	if err := k8sClient.Create(h.ctx, mt); err != nil {
		h.t.Fatal(err)
	}
	h.mt = mt
}

func (h *harness) createAmoMT(refreshBefore string) {
	mt := validAmoCRM(h.ns, "crm")
	mt.Spec.AmoCRM.RedirectURI = testRedirectURI
	if refreshBefore != "" {
		d, _ := time.ParseDuration(refreshBefore)
		mt.Spec.RefreshBefore = &metav1.Duration{Duration: d}
	}
	h.createMT(mt)
}

func (h *harness) key() types.NamespacedName { return client.ObjectKeyFromObject(h.mt) }

// reconcile runs one reconcile and fails the test on an error.
func (h *harness) reconcile() ctrl.Result {
	h.t.Helper()
	res, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()})
	if err != nil {
		h.t.Fatalf("reconcile: %v", err)
	}
	return res
}

func (h *harness) get() *tokensv1alpha1.ManagedToken {
	h.t.Helper()
	mt := &tokensv1alpha1.ManagedToken{}
	if err := k8sClient.Get(h.ctx, h.key(), mt); err != nil {
		h.t.Fatal(err)
	}
	return mt
}

func (h *harness) cond(condType string) *metav1.Condition {
	return meta.FindStatusCondition(h.get().Status.Conditions, condType)
}

func (h *harness) wantCond(condType string, status metav1.ConditionStatus, reason string) {
	h.t.Helper()
	c := h.cond(condType)
	if c == nil || c.Status != status || (reason != "" && c.Reason != reason) {
		h.t.Fatalf("%s = %+v, want %s/%s", condType, c, status, reason)
	}
	if c.ObservedGeneration != h.get().Generation {
		h.t.Fatalf("%s observedGeneration %d, want %d", condType, c.ObservedGeneration, h.get().Generation)
	}
}

func (h *harness) secret(name string) *corev1.Secret {
	h.t.Helper()
	s := &corev1.Secret{}
	if err := k8sClient.Get(h.ctx, types.NamespacedName{Namespace: h.ns, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) output() *corev1.Secret { return h.secret(h.mt.Spec.SecretName) }

func (h *harness) state() tokenState {
	h.t.Helper()
	s := h.secret(stateSecretName(h.mt.Name))
	if s == nil {
		return tokenState{}
	}
	st, err := decodeState(s.Data)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// advanceTo moves the fake clock to just after status.nextRefreshTime.
func (h *harness) advancePastNextRefresh() {
	h.t.Helper()
	next := h.get().Status.NextRefreshTime
	if next == nil {
		h.t.Fatal("no nextRefreshTime in status")
	}
	h.clk.SetTime(next.Add(time.Second))
}

func (h *harness) annotate(value string) {
	h.t.Helper()
	setAnnotation(h.t, h.get(), tokensv1alpha1.RefreshRequestedAtAnnotation, value)
}

// setAnnotation patches one annotation of mt.
func setAnnotation(t *testing.T, mt *tokensv1alpha1.ManagedToken, key, value string) {
	t.Helper()
	patch := client.MergeFrom(mt.DeepCopy())
	if mt.Annotations == nil {
		mt.Annotations = map[string]string{}
	}
	mt.Annotations[key] = value
	if err := k8sClient.Patch(context.Background(), mt, patch); err != nil {
		t.Fatal(err)
	}
}

// createConsumer creates the Deployment "consumer", a rollout restart target.
func createConsumer(t *testing.T, ns string) *appsv1.Deployment {
	t.Helper()
	replicas := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "consumer"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "consumer"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "consumer"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			},
		},
	}
	if err := k8sClient.Create(context.Background(), dep); err != nil {
		t.Fatal(err)
	}
	return dep
}
