package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

// errKilled is what a crash point panics with: the manager process dies
// there, and nothing after it runs.
var errKilled = errors.New("manager killed at a crash point")

// hookTransport calls hook after the fake answered a token request and
// before the client reads the answer: "the provider answer in flight".
type hookTransport struct {
	inner http.RoundTripper
	hook  func()
}

func (h *hookTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := h.inner.RoundTrip(req)
	if h.hook != nil && req.URL.Path == "/oauth2/access_token" {
		h.hook()
	}
	return resp, err
}

// hookProvider calls before and after around each Refresh.
type hookProvider struct {
	provider.Provider
	before, after func()
}

func (p *hookProvider) Refresh(ctx context.Context, req provider.Request, current *provider.Token) (*provider.Token, error) {
	if p.before != nil {
		p.before()
	}
	tok, err := p.Provider.Refresh(ctx, req, current)
	if p.after != nil {
		p.after()
	}
	return tok, err
}

// restart replaces the reconciler with a new one, as a new manager process
// would be: nothing in memory, plain providers and client.
func (h *harness) restart() {
	h.client.afterWrite = nil
	h.r = &ManagedTokenReconciler{
		Client: h.client, APIReader: k8sClient, Scheme: scheme, Recorder: h.events, Clock: h.clk,
		Providers: map[tokensv1alpha1.Provider]provider.Provider{
			tokensv1alpha1.ProviderAmoCRM: amocrm.New(amocrm.Options{BaseURL: h.amoURL, Clock: h.clk, RequestsPerSecond: 1000}),
		},
	}
}

// reconcileCtx runs one reconcile with ctx and reports whether the process
// "died" at a crash point.
func (h *harness) reconcileCtx(ctx context.Context) (died bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != errKilled {
				panic(v)
			}
			died = true
		}
	}()
	_, err = h.r.Reconcile(ctx, ctrl.Request{NamespacedName: h.key()})
	return false, err
}

// TestCrashPoints kills, or cancels (SIGTERM, lease loss), the manager at
// each boundary of a rotation, starts a new one, and checks that the token
// is Ready with no human action and no reused refresh token, except where
// the spend truly ended unknown, which is reported as such.
func TestCrashPoints(t *testing.T) {
	points := []struct {
		name string
		// arm installs the crash point; fire is called there.
		arm func(h *harness, fire func())
		// lostWhenKilled: a kill here loses the answer (the pair was issued
		// and never stored), so only the report can be right.
		lostWhenKilled bool
	}{
		{"before the provider call", func(h *harness, fire func()) {
			h.wrapAmo(func(p *hookProvider) { p.before = fire })
		}, false},
		{"with the provider answer in flight", func(h *harness, fire func()) {
			h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = amocrm.New(amocrm.Options{BaseURL: h.amoURL, Clock: h.clk, RequestsPerSecond: 1000,
				HTTPClient: &http.Client{Transport: &hookTransport{inner: http.DefaultTransport, hook: fire}}})
		}, true},
		{"after the answer", func(h *harness, fire func()) {
			h.wrapAmo(func(p *hookProvider) { p.after = fire })
		}, true},
		{"after the state write", func(h *harness, fire func()) {
			n := 0
			h.client.afterWrite = func(role string) {
				if role == roleState {
					if n++; n == 2 { // 1: the intent, 2: the new pair
						fire()
					}
				}
			}
		}, false},
		{"after the output write", func(h *harness, fire func()) {
			h.client.afterWrite = func(role string) {
				if role == roleOutput {
					fire()
				}
			}
		}, false},
	}
	for _, pt := range points {
		for _, mode := range []string{"kill", "cancel"} {
			t.Run(mode+" "+pt.name, func(t *testing.T) {
				h := newHarness(t, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour})
				h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
				h.createAmoMT("")
				h.reconcile()
				h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
				h.advancePastNextRefresh()

				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				fired := false
				fire := func() {
					if fired {
						return
					}
					fired = true
					if mode == "kill" {
						panic(errKilled)
					}
					cancel()
				}
				pt.arm(h, fire)
				died, err := h.reconcileCtx(ctx)
				if !fired {
					t.Fatalf("the crash point was never reached (err %v)", err)
				}
				if died != (mode == "kill") {
					t.Fatalf("died = %v in mode %s", died, mode)
				}

				// A new manager starts, after the spend's deadline.
				h.restart()
				h.clk.Step(h.r.spendTimeout() + time.Minute)
				for i := 0; i < 3; i++ {
					h.reconcile()
				}
				mt := h.get()
				ready := condOf(mt, tokensv1alpha1.ConditionReady)
				if mode == "kill" && pt.lostWhenKilled {
					if ready.Status != metav1.ConditionFalse || ready.Reason != ReasonRefreshOutcomeUnknown {
						t.Fatalf("a pair lost in flight must be reported as unknown, got Ready=%s/%s: %s", ready.Status, ready.Reason, ready.Message)
					}
					h.wantCond(tokensv1alpha1.ConditionReauthorizationRequired, metav1.ConditionTrue, ReasonRefreshOutcomeUnknown)
					fmt.Printf("measured: crash %s %s: reported %s, refresh token sent again %d time(s)\n", mode, pt.name, ready.Reason, h.amo.ReusedRefreshTokens())
					return
				}
				if ready.Status != metav1.ConditionTrue {
					t.Fatalf("Ready = %s/%s: %s", ready.Status, ready.Reason, ready.Message)
				}
				if h.amo.ReusedRefreshTokens() != 0 {
					t.Fatalf("%d consumed refresh tokens were sent again", h.amo.ReusedRefreshTokens())
				}
				if got := string(h.output().Data["access_token"]); got != h.amo.CurrentAccessToken() {
					t.Fatal("the output Secret does not hold the provider's current access token")
				}
				if !h.amo.RefreshTokenLive(h.state().Token.RefreshToken) {
					t.Fatal("the stored refresh token is not live at the provider")
				}
				if h.state().Intent != nil {
					t.Fatal("a spend intent was left behind")
				}
				fmt.Printf("measured: crash %s %s: Ready, %d token calls, 0 reused refresh tokens\n", mode, pt.name, h.amo.Calls("token"))
			})
		}
	}
}

func condOf(mt *tokensv1alpha1.ManagedToken, ct string) metav1.Condition {
	for _, c := range mt.Status.Conditions {
		if c.Type == ct {
			return c
		}
	}
	return metav1.Condition{}
}

// wrapAmo wraps the AmoCRM provider of the reconciler in a hookProvider.
func (h *harness) wrapAmo(set func(*hookProvider)) {
	p := &hookProvider{Provider: h.r.Providers[tokensv1alpha1.ProviderAmoCRM]}
	set(p)
	h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = p
}

// probeHook runs during a Probe, and changes the probed metadata so that
// the probe has something to write.
type probeHook struct {
	provider.Provider
	during func()
}

func (p *probeHook) Probe(ctx context.Context, req provider.Request, current *provider.Token) (*provider.Token, error) {
	tok, err := p.Provider.Probe(ctx, req, current)
	if p.during != nil {
		p.during()
	}
	if tok != nil {
		tok.Scopes = []string{"crm", "probed"}
	}
	return tok, err
}

// TestProbeRacingRefreshNeverRestoresOldPair: a probe holding RT1 while
// another reconciler rotates RT1 to RT2 must not write RT1 back (the old
// writeState re-read and retried on conflict, restoring a dead token).
func TestProbeRacingRefreshNeverRestoresOldPair(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.clk.Step(3 * time.Hour) // a check is due, a refresh is not

	other := &ManagedTokenReconciler{Client: k8sClient, APIReader: k8sClient, Scheme: scheme, Recorder: h.events, Clock: h.clk,
		Providers: map[tokensv1alpha1.Provider]provider.Provider{
			tokensv1alpha1.ProviderAmoCRM: amocrm.New(amocrm.Options{BaseURL: h.amoURL, Clock: h.clk, RequestsPerSecond: 1000})}}
	h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = &probeHook{Provider: h.r.Providers[tokensv1alpha1.ProviderAmoCRM], during: func() {
		// While the probe is in flight, a forced refresh elsewhere.
		h.annotate("race-1")
		if _, err := other.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()}); err != nil {
			t.Errorf("the other reconciler: %v", err)
		}
	}}
	rt1 := h.state().Token.RefreshToken
	h.reconcile()
	rt := h.state().Token.RefreshToken
	if rt == rt1 || rt != h.amo.CurrentRefreshToken() || !h.amo.RefreshTokenLive(rt) {
		t.Fatal("the probe wrote the old pair back over the rotated one")
	}
	// And later rotations work: nothing is broken.
	h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = other.Providers[tokensv1alpha1.ProviderAmoCRM]
	h.advancePastNextRefresh()
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if h.amo.ReusedRefreshTokens() != 0 {
		t.Fatalf("%d reused refresh tokens", h.amo.ReusedRefreshTokens())
	}
}

// TestProbeRacingOtherWriteKeepsIt: while a probe is at the provider,
// another writer stores a state with the same token but other bookkeeping
// (an authorization callback whose code the provider refused records the
// code as consumed and the request as used). The probe's write, built from
// the state it read, conflicts; it must not be redone over the newer state,
// which would forget that the code was spent (and let it be sent again).
func TestProbeRacingOtherWriteKeepsIt(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.clk.Step(3 * time.Hour) // a check is due, a refresh is not
	const spentCode = "code-fingerprint-recorded-meanwhile"
	h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = &probeHook{Provider: h.r.Providers[tokensv1alpha1.ProviderAmoCRM], during: func() {
		sec := h.secret(stateSecretName(h.mt.Name))
		st, err := decodeState(sec.Data)
		if err != nil {
			t.Fatal(err)
		}
		st.Consumed = append(st.Consumed, spentCode)
		sec.Data = encodeState(st)
		if err := k8sClient.Update(h.ctx, sec); err != nil {
			t.Fatal(err)
		}
	}}
	rt := h.state().Token.RefreshToken
	h.reconcile()
	st := h.state()
	if !st.hasConsumed(spentCode) {
		t.Fatal("the probe's write undid the other writer's: the consumed grant is forgotten")
	}
	if st.Token.RefreshToken != rt {
		t.Fatal("the token changed")
	}
	// The probe runs again soon and its result is stored then.
	h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = h.r.Providers[tokensv1alpha1.ProviderAmoCRM].(*probeHook).Provider
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if !h.state().hasConsumed(spentCode) {
		t.Fatal("the consumed grant was forgotten by the next probe")
	}
}

// TestLosingRefresherNeverHalts: two reconcilers decide to refresh the same
// pair; the one that loses must neither spend the old refresh token nor halt
// the token.
func TestLosingRefresherNeverHalts(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.advancePastNextRefresh()
	other := &ManagedTokenReconciler{Client: k8sClient, APIReader: k8sClient, Scheme: scheme, Recorder: h.events, Clock: h.clk,
		Providers: map[tokensv1alpha1.Provider]provider.Provider{
			tokensv1alpha1.ProviderAmoCRM: amocrm.New(amocrm.Options{BaseURL: h.amoURL, Clock: h.clk, RequestsPerSecond: 1000})}}
	// The first reconciler has loaded its inputs (from its cache) when the
	// other one rotates.
	in, err := h.r.load(h.ctx, h.key())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()}); err != nil {
		t.Fatal(err)
	}
	calls := h.amo.Calls("token")
	out := h.r.execute(h.ctx, in, decide(in.decisionInput()))
	if !out.conflict || out.failure != nil {
		t.Fatalf("the loser must see a conflict and no failure: %+v", out)
	}
	if h.amo.Calls("token") != calls {
		t.Fatal("the loser called the token endpoint with a stale refresh token")
	}
	h.reconcile()
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
	if h.get().Status.HaltedInputs != "" || h.amo.ReusedRefreshTokens() != 0 {
		t.Fatal("a lost race halted the token or reused a refresh token")
	}
}

// TestStaleRunDoesNotOverwriteNewerToken: a run that probed (and stored
// what the probe learned) ends by publishing the token it loaded and
// projecting status from it. If another writer (a second manager, a
// callback on another replica) refreshed meanwhile, both are older than
// what is in place. The output Secret records when its token was obtained,
// so the older token is not published over the newer one, whether the
// newer one was there when the run read the output Secret or arrived
// between that read and the write (the write carries the resourceVersion
// read). The status write carries the resourceVersion the run loaded, so
// it conflicts instead of landing. The run looks again soon, reports no
// transition it did not write, and its next run shows the newer token.
func TestStaleRunDoesNotOverwriteNewerToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		// duringPublish: the other manager refreshes between the stale
		// run's read of the output Secret and its write.
		duringPublish bool
	}{{"before the publish", false}, {"between read and write", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newReadyAmoCRM(t)
			refreshAt := h.get().Status.NextRefreshTime.Add(time.Second)
			h.clk.Step(3 * time.Hour) // a check is due, a refresh is not
			h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = &probeHook{Provider: h.r.Providers[tokensv1alpha1.ProviderAmoCRM]}
			in, err := h.r.load(h.ctx, h.key())
			if err != nil {
				t.Fatal(err)
			}
			older := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey])
			out := h.r.execute(h.ctx, in, decide(in.decisionInput()))
			if !out.checked || !out.stored {
				t.Fatalf("the probe did not run and store: %+v", out)
			}

			// Another manager, whose clock says a refresh is due, rotates.
			otherClk := clocktesting.NewFakeClock(refreshAt)
			other := &ManagedTokenReconciler{Client: k8sClient, APIReader: k8sClient, Scheme: scheme, Recorder: &eventLog{}, Clock: otherClk,
				Providers: map[tokensv1alpha1.Provider]provider.Provider{
					tokensv1alpha1.ProviderAmoCRM: amocrm.New(amocrm.Options{BaseURL: h.amoURL, Clock: otherClk, RequestsPerSecond: 1000})}}
			var newer string // the token the other manager published
			rotate := func() {
				if _, err := other.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()}); err != nil {
					t.Fatal(err)
				}
				newer = string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey])
			}
			if tc.duringPublish {
				// The probe's scopes change nothing the output holds: make
				// the stale run's publish a write, as if a user had edited
				// the output Secret before the other manager rotated.
				sec := h.output()
				sec.Data[tokensv1alpha1.OutputAccessTokenKey] = []byte("edited")
				if err := k8sClient.Update(h.ctx, sec); err != nil {
					t.Fatal(err)
				}
				var once sync.Once
				h.client.beforeWrite = func(role string) {
					if role == roleOutput {
						once.Do(rotate)
					}
				}
			} else {
				rotate()
			}
			events := len(h.events.all())

			pub := h.r.publish(h.ctx, in, out)
			h.client.beforeWrite = nil
			won := h.get().Status
			if won.LastRefreshTime == nil || won.LastRefreshTime.Equal(in.mt.Status.LastRefreshTime) {
				t.Fatal("the other manager did not refresh")
			}
			if newer == older || newer == "edited" {
				t.Fatal("the other manager did not publish")
			}
			if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != newer {
				t.Fatal("the stale run published its older token over the newer one")
			}
			if !(pub.superseded || pub.publishedLater) || pub.err != nil {
				t.Fatalf("the stale run must see the newer token and look again: %+v", pub)
			}
			status := projectStatus(in, out, pub)
			if equality.Semantic.DeepEqual(status, in.mt.Status) {
				t.Fatal("the stale run has nothing to write; the test proves nothing")
			}
			res, err := h.r.finish(h.ctx, in, out, pub, status)
			if err != nil {
				t.Fatalf("a lost race is not an error: %v", err)
			}
			if res.RequeueAfter != minWake {
				t.Fatalf("the stale run must look again soon, not after %v", res.RequeueAfter)
			}
			if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != newer {
				t.Fatal("the stale run published its older token over the newer one")
			}
			if got := h.get().Status; !equality.Semantic.DeepEqual(got, won) {
				t.Fatalf("the stale run overwrote the newer status:\nnewer %+v\nnow   %+v", won, got)
			}
			if n := len(h.events.all()); n != events {
				t.Fatalf("the stale run reported %d transitions it did not write", n-events)
			}
			h.reconcile()
			if got := h.get().Status; !got.ExpirationTimestamp.Equal(won.ExpirationTimestamp) {
				t.Fatal("the next run does not show the newer token")
			}
			if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != newer {
				t.Fatal("the next run changed the published token")
			}
			h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
		})
	}
}

// TestIntentDeadlineCountsFromItsWrite: loading the inputs may wait (for
// the credentials watch to sync after a restart, up to 20s). The intent's
// deadline counts from its write, not from the load, so it does not look
// expired to another spender while the spend, which may run for the spend
// timeout after the write, is still in flight.
func TestIntentDeadlineCountsFromItsWrite(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.advancePastNextRefresh()
	const loadWait = 20 * time.Second
	h.r.CredentialsVersion = func(context.Context, string, string) (string, bool) {
		h.clk.Step(loadWait) // the lookup waited this long
		return "", false
	}
	var seen *spendIntent
	var writtenAt time.Time
	h.wrapAmo(func(p *hookProvider) {
		p.before = func() {
			seen, writtenAt = h.state().Intent, h.clk.Now()
		}
	})
	h.reconcile()
	if seen == nil {
		t.Fatal("no intent stored during the spend")
	}
	if want := writtenAt.Add(h.r.spendTimeout()); seen.Deadline.Before(want) {
		t.Fatalf("intent deadline %s, want at least %s (spend timeout after the write; the load waited %s)", seen.Deadline, want, loadWait)
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}

// TestOutputConflictLooksAgain: the output Secret changed between this
// run's read and its update, with no newer token in it (another
// controller's annotation; or the manager's own previous write that its
// cache had not seen yet). The update conflicts, the run asks to look again
// a second later instead of failing, and the next run publishes the new
// token and keeps the other writer's annotation.
func TestOutputConflictLooksAgain(t *testing.T) {
	h := newReadyAmoCRM(t)
	h.advancePastNextRefresh()
	touched := false
	h.client.beforeWrite = func(role string) {
		if role != roleOutput || touched {
			return
		}
		touched = true
		sec := h.output()
		sec.Annotations["example.com/seen-by"] = "another-controller"
		if err := k8sClient.Update(h.ctx, sec); err != nil {
			t.Fatal(err)
		}
	}
	old := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey])
	res := h.reconcile()
	if !touched {
		t.Fatal("the refresh did not write the output Secret")
	}
	if res.RequeueAfter != minWake {
		t.Fatalf("requeue after %s, want %s after the conflict", res.RequeueAfter, minWake)
	}
	if got := string(h.output().Data[tokensv1alpha1.OutputAccessTokenKey]); got != old {
		t.Fatal("the conflicting update landed")
	}
	h.client.beforeWrite = nil
	h.reconcile()
	sec := h.output()
	if got := string(sec.Data[tokensv1alpha1.OutputAccessTokenKey]); got != h.amo.CurrentAccessToken() || got == old {
		t.Fatal("the next run did not publish the new token")
	}
	if sec.Annotations["example.com/seen-by"] != "another-controller" {
		t.Fatal("the other writer's annotation was dropped")
	}
	if h.amo.Calls("token") != 2 {
		t.Fatalf("%d token calls, want 2 (the bootstrap and one refresh)", h.amo.Calls("token"))
	}
	h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}
