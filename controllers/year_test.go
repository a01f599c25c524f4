package controllers

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// faultyWrites fails a share of the API writes (Secrets and status) with a
// conflict or a 500, without performing them.
type faultyWrites struct {
	client.Client
	mu     sync.Mutex
	rng    *rand.Rand
	pct    int
	failed int
}

func (f *faultyWrites) fault() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rng.Intn(100) >= f.pct {
		return nil
	}
	f.failed++
	if f.rng.Intn(2) == 0 {
		return apierrors.NewConflict(schema.GroupResource{Resource: "secrets"}, "x", errors.New("injected conflict"))
	}
	return apierrors.NewInternalError(errors.New("injected API server failure"))
}

func (f *faultyWrites) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	if err := f.fault(); err != nil {
		return err
	}
	return f.Client.Create(ctx, obj, opts...)
}

func (f *faultyWrites) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	if err := f.fault(); err != nil {
		return err
	}
	return f.Client.Update(ctx, obj, opts...)
}

func (f *faultyWrites) Status() client.SubResourceWriter {
	return &faultyStatus{SubResourceWriter: f.Client.Status(), f: f}
}

type faultyStatus struct {
	client.SubResourceWriter
	f *faultyWrites
}

func (s *faultyStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	if err := s.f.fault(); err != nil {
		return err
	}
	return s.SubResourceWriter.Patch(ctx, obj, patch, opts...)
}

// unreachable fails a request before it reaches the provider (a connect
// timeout) while on is set.
type unreachable struct {
	inner http.RoundTripper
	on    bool
}

func (u *unreachable) RoundTrip(req *http.Request) (*http.Response, error) {
	if u.on {
		u.on = false
		return nil, &timeoutErr{}
	}
	return u.inner.RoundTrip(req)
}

type timeoutErr struct{}

func (*timeoutErr) Error() string   { return "dial tcp: i/o timeout" }
func (*timeoutErr) Timeout() bool   { return true }
func (*timeoutErr) Temporary() bool { return true }

// yearRun is one simulated year of one token.
type yearRun struct {
	h          *harness
	rng        *rand.Rand
	writes     *faultyWrites
	net        *unreachable
	failNext   func(kind int)
	reconciles int
	errors     int
	// published counts changes of the published token (refreshes that
	// reached workloads).
	published int
	// expiredMinutes counts minutes in which the published token had
	// expired while the provider was reachable.
	expiredMinutes float64
}

// run follows the requeues for a year, injecting a fault before a share of
// the reconciles.
func (y *yearRun) run(faultPct int) {
	h := y.h
	end := h.clk.Now().Add(365 * 24 * time.Hour)
	lastTok := ""
	for h.clk.Now().Before(end) {
		if y.rng.Intn(100) < faultPct {
			switch k := y.rng.Intn(4); k {
			case 3:
				y.net.on = true
			default:
				y.failNext(k)
			}
		}
		res, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: h.key()})
		y.net.on = false
		y.reconciles++
		wait := res.RequeueAfter
		if err != nil {
			y.errors++
			wait = 5 * time.Second // controller-runtime's rate-limited retry
		}
		if out := h.output(); out != nil {
			if tok := string(out.Data["access_token"]); tok != lastTok {
				y.published++
				lastTok = tok
			}
			if exp, perr := time.Parse(time.RFC3339, string(out.Data["expires_at"])); perr == nil {
				over := h.clk.Now().Add(wait).Sub(exp)
				if over > 0 {
					y.expiredMinutes += min(over, wait).Minutes()
				}
			}
		}
		h.clk.Step(wait)
	}
}

// settle turns the faults off, lets pending retries run, and checks that
// the token ends Ready.
func (y *yearRun) settle() {
	y.writes.mu.Lock()
	y.writes.pct = 0
	y.writes.mu.Unlock()
	y.h.amo.FailNext(0, 0, "", nil)
	for i := 0; i < 100; i++ {
		res := y.h.reconcile()
		if c := y.h.cond(tokensv1alpha1.ConditionReady); c != nil && c.Reason == ReasonTokenValid {
			return
		}
		y.h.clk.Step(res.RequeueAfter)
	}
	y.h.wantCond(tokensv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonTokenValid)
}

func newYearRun(t *testing.T, seed int64, amoOpts amocrmfake.Options, fbOpts facebookfake.Options) *yearRun {
	h := newHarness(t, amoOpts, fbOpts)
	y := &yearRun{h: h, rng: rand.New(rand.NewSource(seed))}
	y.writes = &faultyWrites{Client: k8sClient, rng: rand.New(rand.NewSource(seed + 1)), pct: 5}
	y.net = &unreachable{inner: http.DefaultTransport}
	h.r.Client = y.writes
	h.r.Providers[tokensv1alpha1.ProviderAmoCRM] = amocrm.New(amocrm.Options{BaseURL: h.amoURL, Clock: h.clk, RequestsPerSecond: 1000,
		HTTPClient: &http.Client{Transport: y.net}})
	h.r.Providers[tokensv1alpha1.ProviderFacebook] = facebook.New(facebook.Options{BaseURL: h.fbURL, Clock: h.clk,
		HTTPClient: &http.Client{Transport: y.net}})
	return y
}

// TestSimulatedYear runs a year of 24h AmoCRM tokens and of 60-day Facebook
// system-user tokens on a fake clock, against the fakes, with provider
// faults (5xx, 429 asking for 10 days, malformed bodies, timeouts) and API
// server write faults (conflicts, 500s).
func TestSimulatedYear(t *testing.T) {
	t.Run("AmoCRM 24h tokens", func(t *testing.T) {
		y := newYearRun(t, 1, amocrmfake.Options{AccessTokenTTL: 24 * time.Hour}, facebookfake.Options{})
		h := y.h
		y.failNext = func(k int) {
			switch k {
			case 0:
				h.amo.FailNext(1, http.StatusInternalServerError, "<html>500</html>", nil)
			case 1:
				h.amo.FailNext(1, http.StatusTooManyRequests, "", http.Header{"Retry-After": {"864000"}})
			case 2:
				h.amo.FailNext(1, http.StatusOK, `{"token_type":"Bearer","access_tok`, nil)
			}
		}
		h.amoCreds(map[string]string{"refresh_token": h.amo.IssueRefreshToken()})
		mt := validAmoCRM(h.ns, "crm")
		mt.Spec.AmoCRM.RedirectURI = testRedirectURI
		mt.Spec.CheckInterval = &metav1.Duration{Duration: 12 * time.Hour}
		h.createMT(mt)
		y.run(15)
		refreshes := h.amo.Calls("refresh_token")
		fmt.Printf("measured: simulated year, AmoCRM 24h tokens: %d reconciles, %d reconcile errors, %d injected API write faults, %.2f refresh calls and %.2f new tokens published per day, %d reused refresh tokens, %.0f minutes with an expired token published\n",
			y.reconciles, y.errors, y.writes.failed, float64(refreshes)/365, float64(y.published)/365, h.amo.ReusedRefreshTokens(), y.expiredMinutes)
		if h.amo.ReusedRefreshTokens() != 0 || !h.amo.RefreshTokenLive(h.state().Token.RefreshToken) {
			t.Fatal("a refresh token was lost")
		}
		if y.expiredMinutes > 0 {
			t.Fatalf("an expired token was published for %.0f minutes while the provider was reachable", y.expiredMinutes)
		}
		if y.published < 365 || y.published > 3*365 {
			t.Fatalf("%d tokens published in a year of 24h tokens", y.published)
		}
		y.settle()
	})
	t.Run("Facebook 60-day system-user tokens", func(t *testing.T) {
		y := newYearRun(t, 2, amocrmfake.Options{}, facebookfake.Options{})
		h := y.h
		y.failNext = func(k int) {
			op := []string{facebookfake.OpRefresh, facebookfake.OpDebugToken}[y.rng.Intn(2)]
			switch k {
			case 0:
				h.fb.FailNext(op, 1, http.StatusInternalServerError, `{"error":{"message":"An unexpected error has occurred. Please retry your request later.","type":"OAuthException","is_transient":true,"code":2,"fbtrace_id":"A1"}}`, nil)
			case 1:
				h.fb.FailNext(op, 1, http.StatusBadRequest, `{"error":{"message":"(#4) Application request limit reached","type":"OAuthException","is_transient":true,"code":4,"fbtrace_id":"A2"}}`, nil)
			case 2:
				h.fb.FailNext(op, 1, http.StatusOK, `{"data":{"app_id":`, nil)
			}
		}
		h.fbSetup(h.fb.IssueToken(facebookfake.KindSystemUserExpiring, h.clk.Now().Add(60*24*time.Hour)))
		mt := h.get()
		mt.Spec.CheckInterval = &metav1.Duration{Duration: 12 * time.Hour}
		if err := k8sClient.Update(h.ctx, mt); err != nil {
			t.Fatal(err)
		}
		y.run(15)
		refreshes := h.fb.Calls("refresh")
		fmt.Printf("measured: simulated year, Facebook 60-day tokens: %d reconciles, %d reconcile errors, %d injected API write faults, %d refresh calls (injected failures queue up at the fake) and %d new tokens published, %.0f minutes with an expired token published\n",
			y.reconciles, y.errors, y.writes.failed, refreshes, y.published, y.expiredMinutes)
		if y.expiredMinutes > 0 {
			t.Fatalf("an expired token was published for %.0f minutes while the provider was reachable", y.expiredMinutes)
		}
		if y.published < 6 || y.published > 14 {
			t.Fatalf("%d tokens published in a year of 60-day tokens", y.published)
		}
		y.settle()
	})
}
