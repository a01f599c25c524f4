package controllers

import (
	"context"
	"net/http/httptest"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

// TestCredentialsWatchFollowsNamespaces: the credentials watch covers the
// namespaces that hold ManagedTokens and no other. A namespace is watched
// from its first ManagedToken on (and a change of a credentials Secret there
// is noticed) and released after its last one is deleted, so Secrets in
// namespaces without ManagedTokens cost the manager nothing.
func TestCredentialsWatchFollowsNamespaces(t *testing.T) {
	ctx := context.Background()
	withToken, other := newNamespace(t), newNamespace(t)
	amo := amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI})
	srv := httptest.NewServer(amo)
	defer srv.Close()
	mkCreds := func(ns string) {
		t.Helper()
		if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "amocrm-oauth"},
			StringData: map[string]string{"client_id": testClientID, "client_secret": testClientSecret, "refresh_token": amo.IssueRefreshToken()}}); err != nil {
			t.Fatal(err)
		}
	}
	mkToken := func(ns string) *tokensv1alpha1.ManagedToken {
		t.Helper()
		mt := validAmoCRM(ns, "crm")
		mt.Spec.AmoCRM.RedirectURI = testRedirectURI
		if err := k8sClient.Create(ctx, mt); err != nil {
			t.Fatal(err)
		}
		return mt
	}
	outputExists := func(ns string) bool {
		return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "amocrm-token"}, &corev1.Secret{}) == nil
	}
	mkCreds(withToken)
	mkToken(withToken)
	// A Secret in a namespace without ManagedTokens.
	if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: other, Name: "unrelated"},
		StringData: map[string]string{"password": "hunter2"}}); err != nil {
		t.Fatal(err)
	}

	var creds *CredentialsWatch
	startManagerWith(t, withToken, srv.URL, srv.URL, "", managerOptions{
		moreNamespaces: []string{other},
		caches:         func(_ cache.Cache, c *CredentialsWatch) { creds = c },
	})
	watched := func(want ...string) func() bool {
		sort.Strings(want)
		return func() bool { return slices.Equal(creds.namespaces(), want) }
	}
	eventually(t, "the first token's output Secret", 30*time.Second, func() bool { return outputExists(withToken) })
	eventually(t, "a watch of the namespace with a ManagedToken only", 10*time.Second, watched(withToken))
	if creds.cacheFor(other) != nil {
		t.Fatal("the namespace without ManagedTokens is watched")
	}

	// The first ManagedToken in the other namespace brings a watch there,
	// and a change of its credentials Secret is noticed through it.
	mkCreds(other)
	mt := mkToken(other)
	eventually(t, "a watch of the second namespace", 10*time.Second, watched(withToken, other))
	eventually(t, "the second token's output Secret", 30*time.Second, func() bool { return outputExists(other) })
	refreshes := amo.Calls("refresh_token")
	sec := &corev1.Secret{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: other, Name: "amocrm-oauth"}, sec); err != nil {
		t.Fatal(err)
	}
	sec.StringData = map[string]string{"refresh_token": amo.IssueRefreshToken()}
	if err := k8sClient.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new refresh token to be consumed", 15*time.Second, func() bool {
		return amo.Calls("refresh_token") > refreshes
	})

	// Its last ManagedToken gone, the namespace is no longer watched.
	if err := k8sClient.Delete(ctx, mt); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second namespace to be released", 10*time.Second, watched(withToken))
	if amo.ReusedRefreshTokens() != 0 {
		t.Fatal("a refresh token was reused")
	}
}

// recordingController records the sources given to Watch.
type recordingController struct {
	controller.Controller
	mu      sync.Mutex
	sources []source.Source
}

func (c *recordingController) Watch(src source.Source) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sources = append(c.sources, src)
	return nil
}

// newBoundCredentialsWatch returns a CredentialsWatch bound to a
// controller that records its sources, running until the test ends, without
// a manager started.
func newBoundCredentialsWatch(t *testing.T) (*CredentialsWatch, *recordingController, context.Context) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewCredentialsWatch(mgr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rc := &recordingController{}
	w.ctx = ctx
	w.bind(rc, handler.TypedEnqueueRequestsFromMapFunc(func(context.Context, *metav1.PartialObjectMetadata) []reconcile.Request { return nil }))
	return w, rc, ctx
}

// TestCredentialsWatchDoesNotHoldTheController: a controller waits for
// every source registered before it starts to sync, and fails (stopping the
// manager) when one does not within its cache sync timeout. A namespace's
// credentials watch that cannot sync must not do that: its source gives the
// controller nothing to wait for; lookups wait instead, bounded (see
// TestRestartWhileCredentialsWatchSyncs).
func TestCredentialsWatchDoesNotHoldTheController(t *testing.T) {
	w, rc, _ := newBoundCredentialsWatch(t)
	w.beforeStart = func(ctx context.Context, _ string) { <-ctx.Done() } // never syncs
	w.watch("some-namespace")
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.sources) != 1 {
		t.Fatalf("%d sources given to the controller, want 1", len(rc.sources))
	}
	if _, ok := rc.sources[0].(source.SyncingSource); ok {
		t.Error("the namespace's source is a SyncingSource: a controller starting after it would wait for it to sync")
	}
}

// TestCredentialsLookupStartsTheWatch: after a restart the controller can
// reconcile a namespace's first ManagedToken before the handler that starts
// the namespace's credentials watch has run. The lookup then starts the
// watch and answers from it instead of sending the reconcile to a live read.
func TestCredentialsLookupStartsTheWatch(t *testing.T) {
	w, _, ctx := newBoundCredentialsWatch(t)
	ns := newNamespace(t)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: ns}, StringData: map[string]string{"k": "v"}}
	if err := k8sClient.Create(ctx, sec); err != nil {
		t.Fatal(err)
	}
	rv, ok := w.ResourceVersion(ctx, ns, "creds")
	if !ok || rv != sec.ResourceVersion {
		t.Fatalf("lookup in a namespace not watched yet: %q, %v; want %q from the watch", rv, ok, sec.ResourceVersion)
	}
	if got := w.namespaces(); len(got) != 1 || got[0] != ns {
		t.Fatalf("watched namespaces %v, want [%s]", got, ns)
	}
}
