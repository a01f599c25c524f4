package controllers

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/metrics"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// startManager runs a manager wired as cmd/main.go wires it (label-selected
// Secret cache, credentials watch) against the fakes. With metricsAddr set,
// it serves metrics there (only one manager per process may register the
// metrics).
func startManager(t *testing.T, ns, amoURL, fbURL, metricsAddr string) (stop func()) {
	return startManagerWith(t, ns, amoURL, fbURL, metricsAddr, managerOptions{})
}

// managerOptions are startManagerWith's extras.
type managerOptions struct {
	// restConfig, when set, replaces cfg (such as one that counts requests).
	restConfig *rest.Config
	// moreNamespaces are cached besides ns.
	moreNamespaces []string
	// caches, when set, gets the manager's cache and the credentials watch.
	caches func(mgrCache cache.Cache, creds *CredentialsWatch)
	// tweak adjusts the reconciler before it starts.
	tweak func(*ManagedTokenReconciler)
	// setup adds to the manager once the reconciler is set up.
	setup func(manager.Manager, *ManagedTokenReconciler)
	// leaseID, when set, runs the manager with leader election on the Lease
	// of that name in ns; leaseTimes, when set, replaces controller-runtime's
	// lease duration, renew deadline and retry period.
	leaseID    string
	leaseTimes *[3]time.Duration
	// startReturned, when set, is called when mgr.Start returns, before
	// Run settles; exited, when set, gets Run's result, which stop then
	// does not check.
	startReturned func(error)
	exited        chan<- error
}

// startManagerWith is startManager with options.
func startManagerWith(t *testing.T, ns, amoURL, fbURL, metricsAddr string, o managerOptions) (stop func()) {
	t.Helper()
	bind := "0"
	if metricsAddr != "" {
		bind = metricsAddr
	}
	// Only this test's namespaces: other tests leave ManagedTokens behind.
	cacheOpts := ManagerCacheOptions()
	cacheOpts.DefaultNamespaces = map[string]cache.Config{ns: {}}
	for _, more := range o.moreNamespaces {
		cacheOpts.DefaultNamespaces[more] = cache.Config{}
	}
	restConfig := cfg
	if o.restConfig != nil {
		restConfig = o.restConfig
	}
	mgrOpts := ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: bind},
		Cache:   cacheOpts,
		// Several managers start in one test process.
		Controller:              config.Controller{SkipNameValidation: ptr.To(true)},
		LeaderElection:          o.leaseID != "",
		LeaderElectionID:        o.leaseID,
		LeaderElectionNamespace: ns,
	}
	if lt := o.leaseTimes; lt != nil {
		mgrOpts.LeaseDuration, mgrOpts.RenewDeadline, mgrOpts.RetryPeriod = &lt[0], &lt[1], &lt[2]
	}
	mgr, err := ctrl.NewManager(restConfig, mgrOpts)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := NewCredentialsWatch(mgr)
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(creds); err != nil {
		t.Fatal(err)
	}
	var m *metrics.Metrics
	observe := provider.RequestObserver(nil)
	if metricsAddr != "" {
		m = metrics.New()
		if err := m.Register(mgr.GetCache()); err != nil {
			t.Fatal(err)
		}
		observe = m.ObserveRequest
	}
	r := &ManagedTokenReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(),
		Recorder: mgr.GetEventRecorder("tokenkeeper"), Clock: clock.RealClock{},
		Providers: map[tokensv1alpha1.Provider]provider.Provider{
			tokensv1alpha1.ProviderAmoCRM:   amocrm.New(amocrm.Options{BaseURL: amoURL, Observe: observe}),
			tokensv1alpha1.ProviderFacebook: facebook.New(facebook.Options{BaseURL: fbURL, Observe: observe}),
		},
	}
	if m != nil {
		r.Metrics = m
	}
	if o.tweak != nil {
		o.tweak(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.SetupWithManager(ctx, mgr, creds, 2); err != nil {
		t.Fatal(err)
	}
	if o.caches != nil {
		o.caches(mgr.GetCache(), creds)
	}
	if o.setup != nil {
		o.setup(mgr, r)
	}
	done := make(chan error, 1)
	go func() {
		// As cmd/main.go runs it (Run), with a look at Start's return.
		err := r.runWith(ctx, func(ctx context.Context) error {
			err := mgr.Start(ctx)
			if o.startReturned != nil {
				o.startReturned(err)
			}
			return err
		})
		if o.exited != nil {
			o.exited <- err
		}
		done <- err
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && o.exited == nil {
				t.Errorf("manager: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func eventually(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", timeout, what)
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestManagerEndToEnd(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	amo := amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI})
	fb := facebookfake.New(facebookfake.Options{AppID: testAppID, AppSecret: testAppSecret})
	amoSrv, fbSrv := httptest.NewServer(amo), httptest.NewServer(fb)
	defer amoSrv.Close()
	defer fbSrv.Close()
	secrets := func() []string {
		return append(append(amo.Secrets(), fb.Secrets()...), testClientSecret, testAppSecret)
	}

	mk := func(name string, data map[string]string) {
		if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}); err != nil {
			t.Fatal(err)
		}
	}
	mk("amocrm-oauth", map[string]string{"client_id": testClientID, "client_secret": testClientSecret, "refresh_token": amo.IssueRefreshToken()})
	mk("facebook-app", map[string]string{"app_id": testAppID, "app_secret": testAppSecret, "access_token": fb.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})})
	createConsumer(t, ns)
	crm := validAmoCRM(ns, "crm")
	crm.Spec.AmoCRM.RedirectURI = testRedirectURI
	crm.Spec.RolloutRestartTargets = []tokensv1alpha1.RolloutRestartTarget{{Kind: "Deployment", Name: "consumer"}}
	ads := validFacebook(ns, "ads")
	for _, mt := range []*tokensv1alpha1.ManagedToken{crm, ads} {
		if err := k8sClient.Create(ctx, mt); err != nil {
			t.Fatal(err)
		}
	}

	metricsAddr := freeAddr(t)
	stop := startManager(t, ns, amoSrv.URL, fbSrv.URL, metricsAddr)
	ready := func(name string) bool {
		mt := &tokensv1alpha1.ManagedToken{}
		if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, mt); err != nil {
			return false
		}
		return meta.IsStatusConditionTrue(mt.Status.Conditions, tokensv1alpha1.ConditionReady)
	}
	eventually(t, "both tokens Ready", 30*time.Second, func() bool { return ready("crm") && ready("ads") })

	// Metrics: series for both tokens, computed from the cache.
	var body string
	eventually(t, "expiry gauge for crm", 10*time.Second, func() bool {
		body = scrape(t, metricsAddr)
		return strings.Contains(body, fmt.Sprintf(`tokenkeeper_token_expiration_timestamp_seconds{name="crm",namespace=%q,provider="AmoCRM"}`, ns))
	})
	for _, want := range []string{
		fmt.Sprintf(`tokenkeeper_token_ready{condition="True",name="crm",namespace=%q,provider="AmoCRM"} 1`, ns),
		fmt.Sprintf(`tokenkeeper_token_ready{condition="True",name="ads",namespace=%q,provider="Facebook"} 1`, ns),
		fmt.Sprintf(`tokenkeeper_token_reauthorization_required{name="ads",namespace=%q,provider="Facebook"} 0`, ns),
		`tokenkeeper_provider_requests_total{code="200",operation="refresh_token",provider="AmoCRM"}`,
		`tokenkeeper_refresh_total{provider="AmoCRM",result="success"}`,
		`tokenkeeper_provider_request_duration_seconds_bucket{operation="debug_token",provider="Facebook"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, fmt.Sprintf(`tokenkeeper_token_expiration_timestamp_seconds{name="ads",namespace=%q`, ns)) {
		t.Error("a non-expiring token must have no expiry series")
	}
	if l := leaked(body, secrets()); len(l) > 0 {
		t.Fatalf("secret values in metrics: %v", l)
	}

	// Deleting a ManagedToken removes its series.
	if err := k8sClient.Delete(ctx, ads); err != nil {
		t.Fatal(err)
	}
	eventually(t, "series of the deleted token to disappear", 10*time.Second, func() bool {
		return !strings.Contains(scrape(t, metricsAddr), fmt.Sprintf(`name="ads",namespace=%q`, ns))
	})

	// A changed credentials Secret is noticed within seconds (metadata watch).
	restartsBefore := restartedAt(t, ns)
	fresh := amo.IssueRefreshToken()
	creds := &corev1.Secret{}
	if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "amocrm-oauth"}, creds); err != nil {
		t.Fatal(err)
	}
	creds.StringData = map[string]string{"refresh_token": fresh}
	if err := k8sClient.Update(ctx, creds); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new refresh token to be consumed", 10*time.Second, func() bool {
		out := &corev1.Secret{}
		return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: crm.Spec.SecretName}, out) == nil &&
			string(out.Data["access_token"]) == amo.CurrentAccessToken() && amo.Calls("refresh_token") == 2
	})
	// The published token changed once: the consumer restarted once.
	eventually(t, "a rollout restart", 10*time.Second, func() bool { return restartedAt(t, ns) != restartsBefore })
	after := restartedAt(t, ns)
	// Ten no-op reconciles (an unrelated annotation) restart nothing.
	for i := 0; i < 10; i++ {
		mt := &tokensv1alpha1.ManagedToken{}
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(crm), mt); err != nil {
			t.Fatal(err)
		}
		p := client.MergeFrom(mt.DeepCopy())
		if mt.Annotations == nil {
			mt.Annotations = map[string]string{}
		}
		mt.Annotations["example.com/touch"] = fmt.Sprint(i)
		if err := k8sClient.Patch(ctx, mt, p); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	if got := restartedAt(t, ns); got != after {
		t.Fatalf("no-op reconciles restarted the consumer: %q -> %q", after, got)
	}
	stop()

	// A second manager on the same control plane makes no provider calls for
	// tokens that are not due.
	tokenCalls, probes := amo.Calls("token"), amo.Calls("account")
	decided := decisionsLogged(ns)
	stop2 := startManager(t, ns, amoSrv.URL, fbSrv.URL, "")
	// Wait until the new manager has really looked at the token (its
	// decision is logged), so "no calls" is not a vacuous pass.
	eventually(t, "the second manager to reconcile the token", 30*time.Second, func() bool { return decisionsLogged(ns) > decided })
	time.Sleep(time.Second)
	stop2()
	if amo.Calls("token") != tokenCalls || amo.Calls("account") != probes {
		t.Fatalf("a restarted manager called the provider: token %d->%d, account %d->%d",
			tokenCalls, amo.Calls("token"), probes, amo.Calls("account"))
	}
	if amo.ReusedRefreshTokens() != 0 {
		t.Fatal("a refresh token was reused")
	}
	if l := leaked(logSink.String(), secrets()); len(l) > 0 {
		t.Fatalf("secret values in the manager log: %v", l)
	}
}

func restartedAt(t *testing.T, ns string) string {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "consumer"}, d); err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Annotations[tokensv1alpha1.RestartedAtAnnotation]
}

// decisionsLogged counts the reconciler's "decided" log lines for tokens in ns.
func decisionsLogged(ns string) int {
	n := 0
	for _, l := range strings.Split(logSink.String(), "\n") {
		if strings.Contains(l, "decided") && strings.Contains(l, ns) {
			n++
		}
	}
	return n
}

// TestCachesHoldOnlyWhatTheyNeed: the manager's cache holds only the Secrets
// the operator writes, and the credentials watch holds Secret metadata
// stripped to name, namespace, resourceVersion and UID.
func TestCachesHoldOnlyWhatTheyNeed(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	amo := amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI})
	srv := httptest.NewServer(amo)
	defer srv.Close()
	unrelated := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "unrelated", Labels: map[string]string{"team": "x"},
			Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": `{"data":{"password":"aHVudGVyMg=="}}`}},
		StringData: map[string]string{"password": "hunter2"},
	}
	if err := k8sClient.Create(ctx, unrelated); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "amocrm-oauth"},
		StringData: map[string]string{"client_id": testClientID, "client_secret": testClientSecret, "refresh_token": amo.IssueRefreshToken()}}); err != nil {
		t.Fatal(err)
	}
	mt := validAmoCRM(ns, "crm")
	mt.Spec.AmoCRM.RedirectURI = testRedirectURI
	if err := k8sClient.Create(ctx, mt); err != nil {
		t.Fatal(err)
	}
	var mgrCache cache.Cache
	var creds *CredentialsWatch
	startManagerWith(t, ns, srv.URL, srv.URL, "", managerOptions{caches: func(m cache.Cache, c *CredentialsWatch) { mgrCache, creds = m, c }})
	eventually(t, "the output Secret", 30*time.Second, func() bool {
		return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: mt.Spec.SecretName}, &corev1.Secret{}) == nil
	})

	var cached corev1.SecretList
	eventually(t, "the owned Secrets in the cache", 10*time.Second, func() bool {
		return mgrCache.List(ctx, &cached, client.InNamespace(ns)) == nil && len(cached.Items) == 2
	})
	for _, s := range cached.Items {
		if s.Labels[tokensv1alpha1.ManagedByLabel] != tokensv1alpha1.ManagedByValue {
			t.Errorf("the manager's cache holds a Secret the operator does not write: %s", s.Name)
		}
	}

	meta := &metav1.PartialObjectMetadata{}
	meta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	eventually(t, "the unrelated Secret's metadata", 10*time.Second, func() bool {
		c := creds.cacheFor(ns)
		return c != nil && c.Get(ctx, client.ObjectKeyFromObject(unrelated), meta) == nil
	})
	if len(meta.Annotations) != 0 || len(meta.Labels) != 0 || len(meta.ManagedFields) != 0 || meta.ResourceVersion == "" {
		t.Fatalf("the credentials watch keeps more than name, namespace and resourceVersion: %d annotations, %d labels, %d managedFields",
			len(meta.Annotations), len(meta.Labels), len(meta.ManagedFields))
	}
}
