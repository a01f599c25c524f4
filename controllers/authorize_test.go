package controllers

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/authz"
	"github.com/tokenkeeper/tokenkeeper/internal/callback"
	"github.com/tokenkeeper/tokenkeeper/internal/metrics"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// authzEnv is a manager with the authorization endpoint, wired as
// cmd/main.go wires it, against the fakes' token endpoints and consent
// pages. The endpoint listens on a port fixed before the fakes start, so
// the integration's redirect URI can point at it.
type authzEnv struct {
	t        *testing.T
	ctx      context.Context
	ns       string
	clk      *clocktesting.FakeClock
	amo      *amocrmfake.Server
	fb       *facebookfake.Server
	amoURL   string
	fbURL    string
	endpoint string // http://127.0.0.1:PORT
	reg      *prometheus.Registry
	stop     func()
	listener net.Listener
}

func newAuthzEnv(t *testing.T) *authzEnv {
	t.Helper()
	e := &authzEnv{t: t, ctx: context.Background(), ns: newNamespace(t), clk: clocktesting.NewFakeClock(time.Now())}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.listener = l
	e.endpoint = "http://" + l.Addr().String()
	e.amo = amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret,
		RedirectURI: e.endpoint + tokensv1alpha1.AmoCRMCallbackPath, Clock: e.clk})
	e.fb = facebookfake.New(facebookfake.Options{AppID: testAppID, AppSecret: testAppSecret, Clock: e.clk})
	amoSrv, fbSrv := httptest.NewServer(e.amo), httptest.NewServer(e.fb)
	t.Cleanup(amoSrv.Close)
	t.Cleanup(fbSrv.Close)
	e.amoURL, e.fbURL = amoSrv.URL, fbSrv.URL
	e.start()
	t.Cleanup(e.assertNoLeaks)
	return e
}

// start runs a manager with the endpoint on e's port (again after stop).
func (e *authzEnv) start() {
	e.t.Helper()
	if e.listener == nil {
		l, err := net.Listen("tcp", strings.TrimPrefix(e.endpoint, "http://"))
		if err != nil {
			e.t.Fatal(err)
		}
		e.listener = l
	}
	l := e.listener
	e.listener = nil
	e.reg = prometheus.NewRegistry()
	m := metrics.New()
	e.stop = startManagerWith(e.t, e.ns, e.amoURL, e.fbURL, "", managerOptions{
		tweak: func(r *ManagedTokenReconciler) {
			r.Clock = e.clk
			r.ConsentURL = testConsentURL(e.amoURL, e.fbURL)
			r.Metrics = m
		},
		setup: func(mgr manager.Manager, r *ManagedTokenReconciler) {
			if err := m.RegisterWith(e.reg, mgr.GetCache()); err != nil {
				e.t.Fatal(err)
			}
			if err := mgr.Add(&callback.Endpoint{Listener: l, Handler: callback.NewServer(callback.Options{
				Handler: r.HandleCallback, Record: m.RecordCallback, RatePerSecond: 100, Burst: 100,
			})}); err != nil {
				e.t.Fatal(err)
			}
		},
	})
}

// testConsentURL is what cmd/main.go wires, with the fakes' consent pages.
func testConsentURL(amoURL, fbURL string) func(*tokensv1alpha1.ManagedTokenSpec, provider.Credentials) (string, error) {
	return func(spec *tokensv1alpha1.ManagedTokenSpec, creds provider.Credentials) (string, error) {
		if spec.Provider == tokensv1alpha1.ProviderFacebook {
			return facebook.ConsentURL(fbURL, spec, creds.Get("app_id"))
		}
		return amocrm.ConsentURL(amoURL+"/oauth", spec, creds.Get("client_id"))
	}
}

func (e *authzEnv) assertNoLeaks() {
	secrets := append(append(e.amo.Secrets(), e.fb.Secrets()...), testClientSecret, testAppSecret)
	if l := leaked(logSink.String(), secrets); len(l) > 0 {
		e.t.Errorf("secret values in the log: %v", l)
	}
	var list tokensv1alpha1.ManagedTokenList
	if err := k8sClient.List(e.ctx, &list, client.InNamespace(e.ns)); err == nil {
		for _, mt := range list.Items {
			if l := leaked(mt.Annotations[tokensv1alpha1.AuthorizeRequestAnnotation]+fmt.Sprintf("%+v", mt.Status.Authorization), secrets); len(l) > 0 {
				e.t.Errorf("secret values in %s: %v", mt.Name, l)
			}
		}
	}
	var events eventsv1.EventList
	if err := k8sClient.List(e.ctx, &events, client.InNamespace(e.ns)); err == nil {
		for _, ev := range events.Items {
			if l := leaked(ev.Note, secrets); len(l) > 0 {
				e.t.Errorf("secret values in event %s: %v", ev.Reason, l)
			}
		}
	}
}

// amoMT creates credentials without a grant and an AmoCRM ManagedToken
// whose redirect URI is the endpoint.
func (e *authzEnv) amoMT(name string, unsolicited bool) *tokensv1alpha1.ManagedToken {
	e.t.Helper()
	e.creds(name+"-oauth", map[string]string{"client_id": testClientID, "client_secret": testClientSecret})
	mt := validAmoCRM(e.ns, name)
	mt.Spec.CredentialsSecretRef.Name = name + "-oauth"
	mt.Spec.SecretName = name + "-token"
	mt.Spec.AmoCRM.Domain = e.amo.Domain()
	mt.Spec.AmoCRM.RedirectURI = e.endpoint + tokensv1alpha1.AmoCRMCallbackPath
	mt.Spec.AmoCRM.AcceptUnsolicitedCodes = unsolicited
	if err := k8sClient.Create(e.ctx, mt); err != nil {
		e.t.Fatal(err)
	}
	return mt
}

func (e *authzEnv) fbMT(name string) *tokensv1alpha1.ManagedToken {
	e.t.Helper()
	e.creds(name+"-app", map[string]string{"app_id": testAppID, "app_secret": testAppSecret})
	mt := validFacebook(e.ns, name)
	mt.Spec.CredentialsSecretRef.Name = name + "-app"
	mt.Spec.SecretName = name + "-token"
	mt.Spec.Facebook = &tokensv1alpha1.FacebookSpec{GraphAPIVersion: tokensv1alpha1.DefaultGraphAPIVersion,
		RedirectURI: e.endpoint + tokensv1alpha1.FacebookCallbackPath, Scopes: []string{"ads_read", "pages_show_list"}}
	if err := k8sClient.Create(e.ctx, mt); err != nil {
		e.t.Fatal(err)
	}
	return mt
}

func (e *authzEnv) creds(name string, data map[string]string) {
	e.t.Helper()
	if err := k8sClient.Create(e.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name}, StringData: data}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *authzEnv) get(name string) *tokensv1alpha1.ManagedToken {
	e.t.Helper()
	mt := &tokensv1alpha1.ManagedToken{}
	if err := k8sClient.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: name}, mt); err != nil {
		e.t.Fatal(err)
	}
	return mt
}

// authorize does what kubectl tokenkeeper authorize does: mint a state,
// annotate its hash, and wait for the consent URL. It returns the URL to
// open (with the state).
func (e *authzEnv) authorize(name string) (consent, state string) {
	e.t.Helper()
	state, hash, err := authz.NewState()
	if err != nil {
		e.t.Fatal(err)
	}
	setAnnotation(e.t, e.get(name), tokensv1alpha1.AuthorizeRequestAnnotation, hash)
	var a *tokensv1alpha1.AuthorizationStatus
	eventually(e.t, "status.authorization Pending for "+name, 20*time.Second, func() bool {
		a = e.get(name).Status.Authorization
		return a != nil && a.RequestID == authz.RequestID(hash) && a.Phase == tokensv1alpha1.AuthorizationPending && a.ConsentURL != ""
	})
	if strings.Contains(a.ConsentURL, state) {
		e.t.Fatal("status holds the state")
	}
	return a.ConsentURL + "&state=" + url.QueryEscape(state), state
}

// page is one HTTP answer.
type page struct {
	status   int
	body     string
	location string
}

// fetch GETs u without following redirects.
func fetch(t *testing.T, u string) page {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 90 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(b), resp.Header.Get("Location")}
}

// consent opens the consent page, which approves and redirects to the
// callback; it returns the callback URL and the callback's page.
func (e *authzEnv) consent(consentURL string) (string, page) {
	e.t.Helper()
	p := fetch(e.t, consentURL)
	if p.status != http.StatusFound || !strings.HasPrefix(p.location, e.endpoint) {
		e.t.Fatalf("consent page: %d %q", p.status, p.location)
	}
	return p.location, fetch(e.t, p.location)
}

// callbacks returns tokenkeeper_authorization_callbacks_total by
// provider/result.
func (e *authzEnv) callbacks() map[string]float64 {
	e.t.Helper()
	out := map[string]float64{}
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tokenkeeper_authorization_callbacks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var p, r string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "provider":
					p = l.GetValue()
				case "result":
					r = l.GetValue()
				}
			}
			out[p+"/"+r] = m.GetCounter().GetValue()
		}
	}
	return out
}

// secretVersions is every Secret's resourceVersion in the namespace: a
// refusal must leave them all as they were.
func (e *authzEnv) secretVersions() map[string]string {
	e.t.Helper()
	var list corev1.SecretList
	if err := k8sClient.List(e.ctx, &list, client.InNamespace(e.ns)); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for _, s := range list.Items {
		out[s.Name] = s.ResourceVersion
	}
	return out
}

func (e *authzEnv) eventReasons(name string) []string {
	e.t.Helper()
	var list eventsv1.EventList
	if err := k8sClient.List(e.ctx, &list, client.InNamespace(e.ns)); err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, ev := range list.Items {
		if ev.Regarding.Name == name {
			out = append(out, ev.Reason)
		}
	}
	sort.Strings(out)
	return out
}

func (e *authzEnv) waitReady(name string) *tokensv1alpha1.ManagedToken {
	e.t.Helper()
	var mt *tokensv1alpha1.ManagedToken
	eventually(e.t, name+" Ready", 30*time.Second, func() bool {
		mt = e.get(name)
		c := meta.FindStatusCondition(mt.Status.Conditions, tokensv1alpha1.ConditionReady)
		return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == mt.Generation
	})
	return mt
}

func (e *authzEnv) output(name string) *corev1.Secret {
	s := &corev1.Secret{}
	if err := k8sClient.Get(e.ctx, types.NamespacedName{Namespace: e.ns, Name: name}, s); err != nil {
		return nil
	}
	return s
}

func assertPageClean(t *testing.T, p page, secrets []string) {
	t.Helper()
	if l := leaked(p.body, secrets); len(l) > 0 {
		t.Errorf("the callback page holds secret values: %v", l)
	}
}

// TestAuthorizeAmoCRM: authorize → consent → callback → Ready, with the code
// spent exactly once, a page free of secrets, and the replay of the same
// callback refused without a call or a write.
func TestAuthorizeAmoCRM(t *testing.T) {
	e := newAuthzEnv(t)
	e.amoMT("crm", false)
	eventually(t, "AuthorizationRequired naming the command", 20*time.Second, func() bool {
		mt := e.get("crm")
		c := meta.FindStatusCondition(mt.Status.Conditions, tokensv1alpha1.ConditionReauthorizationRequired)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == ReasonAuthorizationRequired &&
			strings.Contains(c.Message, "kubectl tokenkeeper authorize crm -n "+e.ns) && strings.Contains(c.Message, "authorization_code or refresh_token")
	})

	consentURL, state := e.authorize("crm")
	cbURL, p := e.consent(consentURL)
	if p.status != http.StatusOK || !strings.Contains(p.body, "Authorized") || !strings.Contains(p.body, e.ns+"/crm") {
		t.Fatalf("callback page %d:\n%s", p.status, p.body)
	}
	assertPageClean(t, p, append(e.amo.Secrets(), testClientSecret, state))
	mt := e.waitReady("crm")
	if a := mt.Status.Authorization; a == nil || a.Phase != tokensv1alpha1.AuthorizationCompleted || a.ConsentURL != "" {
		t.Fatalf("status.authorization = %+v", a)
	}
	if got := e.amo.Calls(amocrm.OpAuthorizationCode); got != 1 {
		t.Fatalf("authorization_code exchanges = %d, want 1", got)
	}
	out := e.output("crm-token")
	if out == nil || string(out.Data[tokensv1alpha1.OutputAccessTokenKey]) != e.amo.CurrentAccessToken() {
		t.Fatal("the output Secret does not hold the token the code gave")
	}
	if got := e.amo.CurrentRefreshToken(); got == "" || !e.amo.RefreshTokenLive(got) {
		t.Fatal("no live refresh token issued")
	}
	eventually(t, "events", 10*time.Second, func() bool {
		r := strings.Join(e.eventReasons("crm"), ",")
		return strings.Contains(r, eventAuthorizationRequested) && strings.Contains(r, eventAuthorizationCompleted)
	})
	for _, r := range e.eventReasons("crm") {
		if r == "TokenObtained" {
			t.Error("TokenObtained as well as AuthorizationCompleted: one event per transition")
		}
	}

	// The same callback again (a reload, or a replay): refused, no call,
	// no write.
	before := e.secretVersions()
	p = fetch(t, cbURL)
	if p.status != http.StatusForbidden || !strings.Contains(p.body, "already used") {
		t.Fatalf("replayed callback: %d\n%s", p.status, p.body)
	}
	if got := e.amo.Calls(amocrm.OpAuthorizationCode); got != 1 {
		t.Fatalf("a replay called the provider: %d exchanges", got)
	}
	if after := e.secretVersions(); !equalMaps(before, after) {
		t.Fatalf("a replay wrote Secrets: %v -> %v", before, after)
	}
	if got := e.callbacks(); got["AmoCRM/accepted"] != 1 || got["AmoCRM/Replayed"] != 1 {
		t.Fatalf("callbacks metric = %v", got)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestAuthorizeRefusals: each refusal answers without a provider call and
// without a Secret write, and is counted.
func TestAuthorizeRefusals(t *testing.T) {
	e := newAuthzEnv(t)
	e.amoMT("crm", false)
	consentURL, state := e.authorize("crm")
	// Get a genuine code for this request without delivering it.
	p := fetch(t, consentURL)
	if p.status != http.StatusFound {
		t.Fatalf("consent: %d", p.status)
	}
	genuine, err := url.Parse(p.location)
	if err != nil {
		t.Fatal(err)
	}
	with := func(mod func(q url.Values)) string {
		q := genuine.Query()
		mod(q)
		u := *genuine
		u.RawQuery = q.Encode()
		return u.String()
	}
	forged, _, _ := authz.NewState()
	cases := []struct {
		name, url, result string
		status            int
	}{
		{"missing state, no client_id", with(func(q url.Values) { q.Del("state"); q.Del("client_id") }), callback.Unsolicited, http.StatusBadRequest},
		{"missing state on Facebook", e.endpoint + tokensv1alpha1.FacebookCallbackPath + "?code=abc", callback.MissingState, http.StatusBadRequest},
		{"forged state", with(func(q url.Values) { q.Set("state", forged) }), callback.UnknownState, http.StatusForbidden},
		{"state of another provider's path", e.endpoint + tokensv1alpha1.FacebookCallbackPath + "?code=abc&state=" + url.QueryEscape(state), callback.UnknownState, http.StatusForbidden},
		{"referer outside the domain", with(func(q url.Values) { q.Set("referer", "other.amocrm.ru") }), callback.RefererNotAllowed, http.StatusBadRequest},
		{"no referer", with(func(q url.Values) { q.Del("referer") }), callback.RefererNotAllowed, http.StatusBadRequest},
		{"malformed", with(func(q url.Values) { q.Add("state", "x") }), callback.Malformed, http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, calls, count := e.secretVersions(), e.amo.Calls(amocrm.OpAuthorizationCode), e.callbacks()
			p := fetch(t, tc.url)
			if p.status != tc.status {
				t.Errorf("status %d, want %d\n%s", p.status, tc.status, p.body)
			}
			if got := e.amo.Calls(amocrm.OpAuthorizationCode); got != calls {
				t.Errorf("the provider was called")
			}
			if after := e.secretVersions(); !equalMaps(before, after) {
				t.Errorf("Secrets were written")
			}
			prov := "AmoCRM"
			if strings.Contains(tc.url, tokensv1alpha1.FacebookCallbackPath) {
				prov = "Facebook"
			}
			if got := e.callbacks()[prov+"/"+tc.result]; got != count[prov+"/"+tc.result]+1 {
				t.Errorf("%s/%s counted %v times, want one more than %v", prov, tc.result, got, count[prov+"/"+tc.result])
			}
			assertPageClean(t, p, append(e.amo.Secrets(), state))
		})
	}

	// Expired: the request's deadline passes; the genuine callback is
	// refused, and status says Expired.
	e.clk.Step(authz.RequestTTL + time.Second)
	before, calls := e.secretVersions(), e.amo.Calls(amocrm.OpAuthorizationCode)
	p = fetch(t, genuine.String())
	if p.status != http.StatusForbidden || !strings.Contains(p.body, "expired") {
		t.Fatalf("expired request: %d\n%s", p.status, p.body)
	}
	if e.amo.Calls(amocrm.OpAuthorizationCode) != calls || !equalMaps(before, e.secretVersions()) {
		t.Fatal("an expired request called the provider or wrote a Secret")
	}
	if got := e.callbacks()["AmoCRM/"+callback.Expired]; got != 1 {
		t.Fatalf("Expired counted %v", got)
	}
	// The status flips to Expired at the next reconcile (a nudge stands in
	// for the timer the fake clock does not fire).
	e.nudge("crm")
	eventually(t, "status.authorization Expired", 20*time.Second, func() bool {
		a := e.get("crm").Status.Authorization
		return a != nil && a.Phase == tokensv1alpha1.AuthorizationExpired
	})
	if got := e.amo.Calls(amocrm.OpAuthorizationCode); got != 0 {
		t.Fatalf("%d code exchanges in a test of refusals", got)
	}
	fmt.Printf("measured: authorization callbacks refused without a provider call or a Secret write: %d kinds (%s)\n", len(cases)+1, refusedKinds(e.callbacks()))
}

// refusedKinds lists the counted refusals, sorted.
func refusedKinds(m map[string]float64) string {
	var out []string
	for k, v := range m {
		if v > 0 && !strings.HasSuffix(k, "/"+callback.Accepted) {
			out = append(out, fmt.Sprintf("%s=%v", k, v))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// nudge makes the manager reconcile name now: a change of its credentials
// Secret (the credentials watch enqueues it).
func (e *authzEnv) nudge(name string) {
	e.t.Helper()
	sec := &corev1.Secret{}
	key := types.NamespacedName{Namespace: e.ns, Name: e.get(name).Spec.CredentialsSecretRef.Name}
	if err := k8sClient.Get(e.ctx, key, sec); err != nil {
		e.t.Fatal(err)
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations["nudge"] = time.Now().Format("150405.000000")
	if err := k8sClient.Update(e.ctx, sec); err != nil {
		e.t.Fatal(err)
	}
}

// TestAuthorizeProviderErrorAndDenial: a code the provider refuses is
// reported on the page, as a condition and as an event; a denied consent
// ends the request without any exchange.
func TestAuthorizeProviderErrorAndDenial(t *testing.T) {
	e := newAuthzEnv(t)
	e.amoMT("crm", false)
	consentURL, _ := e.authorize("crm")
	e.amo.FailNext(1, http.StatusBadRequest, amocrmfake.ProblemBody(http.StatusBadRequest, "Authorization code has expired"), nil)
	_, p := e.consent(consentURL)
	if p.status != http.StatusBadGateway || !strings.Contains(p.body, "Authorization code has expired") {
		t.Fatalf("provider error page: %d\n%s", p.status, p.body)
	}
	mt := e.get("crm")
	if a := mt.Status.Authorization; a == nil || a.Phase != tokensv1alpha1.AuthorizationFailed || !strings.Contains(a.Message, "refused the code") {
		t.Fatalf("status.authorization = %+v", a)
	}
	if c := meta.FindStatusCondition(mt.Status.Conditions, tokensv1alpha1.ConditionReauthorizationRequired); c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("ReauthorizationRequired = %+v", c)
	}
	eventually(t, "AuthorizationFailed event", 10*time.Second, func() bool {
		return strings.Contains(strings.Join(e.eventReasons("crm"), ","), eventAuthorizationFailed)
	})
	if got := e.callbacks()["AmoCRM/"+callback.ProviderError]; got != 1 {
		t.Fatalf("ProviderError counted %v", got)
	}

	// Denied consent: no exchange at all.
	consentURL, _ = e.authorize("crm")
	e.amo.SetConsent(true)
	calls := e.amo.Calls(amocrm.OpAuthorizationCode)
	_, p = e.consent(consentURL)
	if p.status != http.StatusOK || !strings.Contains(p.body, "denied") {
		t.Fatalf("denied consent page: %d\n%s", p.status, p.body)
	}
	if e.amo.Calls(amocrm.OpAuthorizationCode) != calls {
		t.Fatal("a denied consent called the token endpoint")
	}
	eventually(t, "status.authorization Failed after denial", 20*time.Second, func() bool {
		a := e.get("crm").Status.Authorization
		return a != nil && a.Phase == tokensv1alpha1.AuthorizationFailed && strings.Contains(a.Message, "consent was not given")
	})
}

// TestAuthorizeUnsolicitedAmoCRM: a code without our state (the fake sends
// Kommo's documented webhook: code, referer, from_widget) is taken only by an
// opted-in ManagedToken that waits for authorization, and only when it is
// the one match.
func TestAuthorizeUnsolicitedAmoCRM(t *testing.T) {
	e := newAuthzEnv(t)
	e.amoMT("crm", false)
	eventually(t, "crm waiting", 20*time.Second, func() bool { return waitingForAuthorization(e.get("crm")) && len(e.get("crm").Status.Conditions) > 0 })

	// Not opted in: refused, nothing spent.
	before := e.secretVersions()
	p := fetch(t, e.amo.UnsolicitedCallbackURL())
	if p.status != http.StatusBadRequest || e.amo.Calls(amocrm.OpAuthorizationCode) != 0 || !equalMaps(before, e.secretVersions()) {
		t.Fatalf("unsolicited code without opt-in: %d, %d exchanges\n%s", p.status, e.amo.Calls(amocrm.OpAuthorizationCode), p.body)
	}

	// Two opted-in ManagedTokens of the same integration and account:
	// ambiguous, refused.
	e.amoMT("a", true)
	e.amoMT("b", true)
	for _, n := range []string{"a", "b"} {
		eventually(t, n+" waiting", 20*time.Second, func() bool { return len(e.get(n).Status.Conditions) > 0 })
	}
	p = fetch(t, e.amo.UnsolicitedCallbackURL())
	if p.status != http.StatusBadRequest || !strings.Contains(p.body, "refusing to guess") || e.amo.Calls(amocrm.OpAuthorizationCode) != 0 {
		t.Fatalf("ambiguous unsolicited code: %d\n%s", p.status, p.body)
	}

	// A callback that names a client_id (Kommo's documented webhook names
	// none) is matched on it too: another integration's code is refused.
	p = fetch(t, e.amo.UnsolicitedCallbackURL()+"&client_id=another-integration")
	if p.status != http.StatusBadRequest || !strings.Contains(p.body, "no ManagedToken waits") || e.amo.Calls(amocrm.OpAuthorizationCode) != 0 {
		t.Fatalf("unsolicited code of another integration: %d\n%s", p.status, p.body)
	}

	// One opted-in match: accepted.
	if err := k8sClient.Delete(e.ctx, e.get("b")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b gone from the cache", 10*time.Second, func() bool {
		p = fetch(t, e.amo.UnsolicitedCallbackURL())
		return p.status == http.StatusOK
	})
	e.waitReady("a")
	if got := e.amo.Calls(amocrm.OpAuthorizationCode); got != 1 {
		t.Fatalf("exchanges = %d, want 1", got)
	}
	if got := e.callbacks(); got["AmoCRM/accepted"] != 1 || got["AmoCRM/"+callback.Unsolicited] < 2 {
		t.Fatalf("callbacks metric = %v", got)
	}
}

// TestAuthorizeSurvivesRestart: a request accepted by one manager is
// completed through the next one; a request whose deadline passed while no
// manager ran expires cleanly.
func TestAuthorizeSurvivesRestart(t *testing.T) {
	e := newAuthzEnv(t)
	e.amoMT("crm", false)
	e.amoMT("late", false)
	consentURL, _ := e.authorize("crm")
	lateURL, _ := e.authorize("late")
	e.stop()
	e.start()

	_, p := e.consent(consentURL)
	if p.status != http.StatusOK {
		t.Fatalf("callback after a restart: %d\n%s", p.status, p.body)
	}
	e.waitReady("crm")

	e.stop()
	e.clk.Step(authz.RequestTTL + time.Minute)
	e.start()
	eventually(t, "late request Expired after the restart", 20*time.Second, func() bool {
		a := e.get("late").Status.Authorization
		return a != nil && a.Phase == tokensv1alpha1.AuthorizationExpired
	})
	before := e.secretVersions()
	_, p = e.consent(lateURL)
	if p.status != http.StatusForbidden || !equalMaps(before, e.secretVersions()) {
		t.Fatalf("callback of an expired request: %d\n%s", p.status, p.body)
	}
	if got := e.amo.Calls(amocrm.OpAuthorizationCode); got != 1 {
		t.Fatalf("exchanges = %d, want 1", got)
	}
}

// TestAuthorizeConcurrentCallbacks: the same callback delivered many times
// at once spends the code exactly once.
func TestAuthorizeConcurrentCallbacks(t *testing.T) {
	e := newAuthzEnv(t)
	e.amoMT("crm", false)
	consentURL, _ := e.authorize("crm")
	p := fetch(t, consentURL)
	e.fetchAtOnceExchangedOnce(p.location, 8)
	e.waitReady("crm")
}

// fetchAtOnceExchangedOnce fetches the callback url n times at once and
// fails unless exactly one answer is 200 and the code was exchanged once.
func (e *authzEnv) fetchAtOnceExchangedOnce(url string, n int) {
	e.t.Helper()
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = fetch(e.t, url).status
		}()
	}
	wg.Wait()
	ok := 0
	for _, s := range statuses {
		if s == http.StatusOK {
			ok++
		}
	}
	if ok != 1 || e.amo.Calls(amocrm.OpAuthorizationCode) != 1 {
		e.t.Fatalf("statuses %v, %d exchanges; want exactly one of each", statuses, e.amo.Calls(amocrm.OpAuthorizationCode))
	}
}

// TestAuthorizeUnsolicitedDeliveredManyTimes: an unsolicited AmoCRM code
// (no state, so no request to mark used) delivered many times at once, a
// browser reloading the install page, say, is exchanged once: a code
// already spent on this token is refused as replayed.
func TestAuthorizeUnsolicitedDeliveredManyTimes(t *testing.T) {
	e := newAuthzEnv(t)
	e.amoMT("crm", true)
	eventually(t, "crm waiting", 20*time.Second, func() bool { return waitingForAuthorization(e.get("crm")) && len(e.get("crm").Status.Conditions) > 0 })
	url := e.amo.UnsolicitedCallbackURL()
	e.fetchAtOnceExchangedOnce(url, 8)
	e.waitReady("crm")
	if p := fetch(t, url); p.status == http.StatusOK || e.amo.Calls(amocrm.OpAuthorizationCode) != 1 {
		t.Fatalf("the same code once more after Ready: %d\n%s", p.status, p.body)
	}
}

// TestAuthorizeFacebook: authorize → login dialog → callback → Ready: the
// code is exchanged once for a user token, which becomes the long-lived
// one; the page is free of secrets; a replay is refused.
func TestAuthorizeFacebook(t *testing.T) {
	e := newAuthzEnv(t)
	e.fbMT("ads")
	eventually(t, "AuthorizationRequired", 20*time.Second, func() bool {
		c := meta.FindStatusCondition(e.get("ads").Status.Conditions, tokensv1alpha1.ConditionReauthorizationRequired)
		return c != nil && c.Reason == ReasonAuthorizationRequired
	})
	// The message names Facebook's grant keys, not AmoCRM's refresh_token.
	if c := meta.FindStatusCondition(e.get("ads").Status.Conditions, tokensv1alpha1.ConditionReauthorizationRequired); !strings.Contains(c.Message, "authorization_code or access_token") || strings.Contains(c.Message, "refresh_token") {
		t.Fatalf("AuthorizationRequired message for a Facebook token: %s", c.Message)
	}
	consentURL, state := e.authorize("ads")
	u, err := url.Parse(consentURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if q.Get("client_id") != testAppID || q.Get("redirect_uri") != e.endpoint+tokensv1alpha1.FacebookCallbackPath || q.Get("scope") != "ads_read,pages_show_list" || q.Get("state") != state {
		t.Fatalf("login dialog URL query %v", q)
	}
	cbURL, p := e.consent(consentURL)
	if p.status != http.StatusOK || !strings.Contains(p.body, "Authorized") {
		t.Fatalf("callback page %d:\n%s", p.status, p.body)
	}
	assertPageClean(t, p, append(e.fb.Secrets(), testAppSecret, state))
	mt := e.waitReady("ads")
	if mt.Status.TokenType != "FacebookUserLongLived" || mt.Status.Authorization.Phase != tokensv1alpha1.AuthorizationCompleted {
		t.Fatalf("tokenType %q, authorization %+v", mt.Status.TokenType, mt.Status.Authorization)
	}
	if got := e.fb.Calls(facebookfake.OpAuthorizationCode); got != 1 {
		t.Fatalf("code exchanges = %d, want 1", got)
	}
	out := e.output("ads-token")
	if out == nil || len(out.Data[tokensv1alpha1.OutputAccessTokenKey]) == 0 {
		t.Fatal("no output Secret")
	}
	if exp, ok := e.fb.TokenInfo(string(out.Data[tokensv1alpha1.OutputAccessTokenKey])); !ok || exp.Before(e.clk.Now().Add(50*24*time.Hour)) {
		t.Fatalf("published token is not the long-lived one (expires %v, known %v)", exp, ok)
	}
	before := e.secretVersions()
	if p := fetch(t, cbURL); p.status != http.StatusForbidden {
		t.Fatalf("replay: %d\n%s", p.status, p.body)
	}
	if e.fb.Calls(facebookfake.OpAuthorizationCode) != 1 || !equalMaps(before, e.secretVersions()) {
		t.Fatal("a replay called the provider or wrote a Secret")
	}
	if got := e.callbacks(); got["Facebook/accepted"] != 1 || got["Facebook/Replayed"] != 1 {
		t.Fatalf("callbacks metric = %v", got)
	}
}

// TestAuthorizationRequestFailsClearly: a request the operator cannot serve
// ends at once as Failed, with a message that says what to do, and writes
// nothing but the request's record.
func TestAuthorizationRequestFailsClearly(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(nil) // client keys, no grant
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, ReasonAuthorizationRequired)

	for _, tc := range []struct {
		name    string
		consent func(*tokensv1alpha1.ManagedTokenSpec, provider.Credentials) (string, error)
		creds   map[string]string
		value   string
		want    string
	}{
		{"endpoint not enabled", nil, nil, "", "--authorization-bind-address"},
		{"no client_id", testConsentURL(h.amoURL, h.fbURL), map[string]string{"client_secret": testClientSecret}, "", "no consent page can be built: the credentials Secret is missing: client_id"},
		{"malformed annotation", testConsentURL(h.amoURL, h.fbURL), nil, "not-a-hash", "is not sha256:<64 hex digits>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.r.ConsentURL = tc.consent
			if tc.creds != nil {
				h.putCreds("amocrm-oauth", tc.creds)
			}
			v := tc.value
			if v == "" {
				_, v, _ = authz.NewState()
			}
			setAnnotation(t, h.get(), tokensv1alpha1.AuthorizeRequestAnnotation, v)
			h.reconcile()
			h.reconcile()
			a := h.get().Status.Authorization
			if a == nil || a.Phase != tokensv1alpha1.AuthorizationFailed || !strings.Contains(a.Message, tc.want) || a.ConsentURL != "" {
				t.Fatalf("status.authorization = %+v, want Failed with %q", a, tc.want)
			}
			if n := h.amo.Calls(amocrm.OpAuthorizationCode); n != 0 {
				t.Fatalf("%d code exchanges", n)
			}
		})
	}
}

// TestCallbackWaitsForSpendInFlight: a callback that finds a live spend
// intent (a refresh of the same token in flight) spends nothing while it is
// live or within the grace after its deadline that reconciles also give it,
// and spends its code once that is over.
func TestCallbackWaitsForSpendInFlight(t *testing.T) {
	h := newHarness(t, amocrmfake.Options{})
	h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
	h.createAmoMT("")
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	h.r.ConsentURL = testConsentURL(h.amoURL, h.fbURL)
	state, hash, _ := authz.NewState()
	setAnnotation(t, h.get(), tokensv1alpha1.AuthorizeRequestAnnotation, hash)
	h.reconcile()

	// A refresh in flight: its intent is live for another minute.
	sec := h.secret(stateSecretName(h.mt.Name))
	st := h.state()
	st.Intent = &spendIntent{Op: opRefresh, Spent: spentFingerprint(st.Token), Started: h.clk.Now(), Deadline: h.clk.Now().Add(time.Minute)}
	if _, err := h.r.saveState(h.ctx, h.get(), sec.ResourceVersion, st); err != nil {
		t.Fatal(err)
	}
	h.r.CallbackWait = time.Second
	code := h.amo.IssueAuthorizationCode()
	p := callback.Params{Provider: tokensv1alpha1.ProviderAmoCRM, State: state, Code: code, Referer: h.mt.Spec.AmoCRM.Domain}
	start := time.Now()
	res := h.r.HandleCallback(h.ctx, p)
	if res.Outcome != callback.NotStored || !strings.Contains(res.Message, "in progress") || time.Since(start) < time.Second {
		t.Fatalf("callback during a live intent: %+v after %v", res, time.Since(start))
	}
	if n := h.amo.Calls(amocrm.OpAuthorizationCode); n != 0 {
		t.Fatalf("%d code exchanges while another spend was live", n)
	}
	if a := h.state().Authorization; a == nil || a.Used != nil {
		t.Fatalf("the request was used up by a callback that spent nothing: %+v", a)
	}

	// Past the intent's deadline, but within the grace a reconcile gives it
	// (the spend's store may still be landing): the callback still waits.
	h.clk.SetTime(st.Intent.Deadline.Add(5 * time.Second))
	if res := h.r.HandleCallback(h.ctx, p); res.Outcome != callback.NotStored || !strings.Contains(res.Message, "in progress") {
		t.Fatalf("callback within the intent's grace: %+v", res)
	}
	if n := h.amo.Calls(amocrm.OpAuthorizationCode); n != 0 {
		t.Fatalf("%d code exchanges within the intent's grace", n)
	}

	// The intent's deadline and grace pass: the same callback now spends the code.
	h.clk.Step(2 * time.Minute)
	res = h.r.HandleCallback(h.ctx, p)
	if res.Outcome != callback.Accepted {
		t.Fatalf("callback after the intent ended: %+v", res)
	}
	if n := h.amo.Calls(amocrm.OpAuthorizationCode); n != 1 {
		t.Fatalf("%d code exchanges, want 1", n)
	}
}
