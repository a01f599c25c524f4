package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/controllers"
	"github.com/tokenkeeper/tokenkeeper/internal/callback"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// TestKubectlAuthorizeWithOperator runs the whole loop with real parts: the
// plugin found by kubectl, the real reconciler and authorization endpoint
// in a manager, and the fake AmoCRM's consent page and token endpoint. The
// test plays the human: it opens the printed URL, and the fake approves and
// redirects to the callback. The command then reports the token Ready.
func TestKubectlAuthorizeWithOperator(t *testing.T) {
	for _, p := range []tokensv1alpha1.Provider{tokensv1alpha1.ProviderAmoCRM, tokensv1alpha1.ProviderFacebook} {
		t.Run(string(p), func(t *testing.T) { authorizeWithOperator(t, p) })
	}
}

func authorizeWithOperator(t *testing.T, prov tokensv1alpha1.Provider) {
	kubectl, path := kubectlWithPlugin(t)
	ns := newNamespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	const clientID, clientSecret = "client-e2e", "amocrm-client-secret-e2e-5c1d"
	amo := amocrmfake.New(amocrmfake.Options{ClientID: clientID, ClientSecret: clientSecret, RedirectURI: endpoint + tokensv1alpha1.AmoCRMCallbackPath})
	amoSrv := httptest.NewServer(amo)
	defer amoSrv.Close()
	const appID, appSecret = "634974688087057", "facebook-app-secret-e2e-9d2f"
	fb := facebookfake.New(facebookfake.Options{AppID: appID, AppSecret: appSecret})
	fbSrv := httptest.NewServer(fb)
	defer fbSrv.Close()

	cacheOpts := controllers.ManagerCacheOptions()
	cacheOpts.DefaultNamespaces = map[string]cache.Config{ns: {}}
	mgr, err := ctrl.NewManager(testEnv.Config, ctrl.Options{
		Scheme: newScheme(), Metrics: metricsserver.Options{BindAddress: "0"}, Cache: cacheOpts,
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := controllers.NewCredentialsWatch(mgr)
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(creds); err != nil {
		t.Fatal(err)
	}
	r := &controllers.ManagedTokenReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: mgr.GetScheme(),
		Recorder: mgr.GetEventRecorder("tokenkeeper"), Clock: clock.RealClock{},
		Providers: map[tokensv1alpha1.Provider]provider.Provider{
			tokensv1alpha1.ProviderAmoCRM:   amocrm.New(amocrm.Options{BaseURL: amoSrv.URL}),
			tokensv1alpha1.ProviderFacebook: facebook.New(facebook.Options{BaseURL: fbSrv.URL}),
		},
		ConsentURL: func(spec *tokensv1alpha1.ManagedTokenSpec, c provider.Credentials) (string, error) {
			if spec.Provider == tokensv1alpha1.ProviderFacebook {
				return facebook.ConsentURL(fbSrv.URL, spec, c.Get("app_id"))
			}
			return amocrm.ConsentURL(amoSrv.URL+"/oauth", spec, c.Get("client_id"))
		},
	}
	if err := r.SetupWithManager(ctx, mgr, creds, 2); err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(&callback.Endpoint{Listener: l, Handler: callback.NewServer(callback.Options{Handler: r.HandleCallback})}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()

	credsData := map[string]string{"client_id": clientID, "client_secret": clientSecret}
	spec := tokensv1alpha1.ManagedTokenSpec{
		Provider: prov, CredentialsSecretRef: tokensv1alpha1.SecretReference{Name: "crm-oauth"}, SecretName: "crm-token",
		AmoCRM: &tokensv1alpha1.AmoCRMSpec{Domain: amo.Domain(), RedirectURI: endpoint + tokensv1alpha1.AmoCRMCallbackPath},
	}
	consentPrefix := amoSrv.URL + "/oauth?"
	if prov == tokensv1alpha1.ProviderFacebook {
		credsData = map[string]string{"app_id": appID, "app_secret": appSecret}
		spec.AmoCRM = nil
		spec.Facebook = &tokensv1alpha1.FacebookSpec{GraphAPIVersion: tokensv1alpha1.DefaultGraphAPIVersion,
			RedirectURI: endpoint + tokensv1alpha1.FacebookCallbackPath, Scopes: []string{"ads_read"}}
		consentPrefix = fbSrv.URL + "/" + tokensv1alpha1.DefaultGraphAPIVersion + "/dialog/oauth?"
	}
	if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "crm-oauth"}, StringData: credsData}); err != nil {
		t.Fatal(err)
	}
	mt := &tokensv1alpha1.ManagedToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "crm"}, Spec: spec}
	if err := k8sClient.Create(ctx, mt); err != nil {
		t.Fatal(err)
	}

	proc := startProcess(t, []string{path}, kubectl, "tokenkeeper", "authorize", "crm", "--kubeconfig", kubeconfig, "-n", ns, "--timeout", "60s")
	var consentURL string
	deadline := time.Now().Add(30 * time.Second)
	for consentURL == "" && time.Now().Before(deadline) && !proc.exited() {
		for _, f := range strings.Fields(proc.stdout.String()) {
			if strings.HasPrefix(f, consentPrefix) && strings.Contains(f, "state=") {
				consentURL = f
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if consentURL == "" {
		t.Fatalf("no consent URL printed:\n%s", proc)
	}
	// The human's browser: the consent page approves and redirects to the
	// operator's callback, which exchanges the code.
	resp, err := http.Get(consentURL)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Authorized") {
		t.Fatalf("callback page %d:\n%s", resp.StatusCode, page)
	}
	if err := proc.wait(t, 45*time.Second); err != nil {
		t.Fatalf("kubectl tokenkeeper authorize: %v\n%s", err, proc)
	}
	if !strings.Contains(proc.stdout.String(), "managedtoken/crm authorized: Ready") {
		t.Fatalf("no success line:\n%s", proc)
	}
	if got := amo.Calls(amocrm.OpAuthorizationCode) + fb.Calls(facebookfake.OpAuthorizationCode); got != 1 {
		t.Fatalf("authorization_code exchanges = %d, want 1", got)
	}
	for _, s := range append(append(amo.Secrets(), fb.Secrets()...), clientSecret, appSecret) {
		if len(s) >= 8 && (strings.Contains(proc.stdout.String(), s) || strings.Contains(proc.stderr.String(), s) || strings.Contains(string(page), s)) {
			t.Fatal("a secret value appeared in the command's output or the callback page")
		}
	}
}
