package facebook_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

const (
	testAppID     = "634974688087057"
	testAppSecret = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
	day           = 24 * time.Hour
)

var t0 = time.Date(2026, time.August, 3, 10, 0, 0, 0, time.UTC)

type observation struct {
	provider, op string
	code         int
}

type harness struct {
	t      *testing.T
	clk    *testingclock.FakeClock
	fake   *facebookfake.Server
	srv    *httptest.Server
	client *facebook.Client

	mu       sync.Mutex
	observed []observation
}

// newHarness starts the fake behind an httptest.Server. wrap, when set,
// wraps the fake's handler.
func newHarness(t *testing.T, o facebookfake.Options, wrap func(http.Handler) http.Handler) *harness {
	t.Helper()
	h := &harness{t: t, clk: testingclock.NewFakeClock(t0)}
	if o.AppID == "" {
		o.AppID = testAppID
	}
	if o.AppSecret == "" {
		o.AppSecret = testAppSecret
	}
	o.Clock = h.clk
	h.fake = facebookfake.New(o)
	var handler http.Handler = h.fake
	if wrap != nil {
		handler = wrap(handler)
	}
	h.srv = httptest.NewServer(handler)
	t.Cleanup(h.srv.Close)
	h.client = facebook.New(facebook.Options{
		HTTPClient: h.srv.Client(),
		BaseURL:    h.srv.URL,
		Clock:      h.clk,
		Observe:    h.observe,
	})
	return h
}

func (h *harness) observe(p, op string, code int, _ time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.observed = append(h.observed, observation{p, op, code})
}

func (h *harness) observations() []observation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.observed)
}

func request(token string) provider.Request {
	return provider.Request{
		Spec: &tokensv1alpha1.ManagedTokenSpec{Provider: tokensv1alpha1.ProviderFacebook},
		Credentials: provider.Credentials{
			"app_id":       []byte(testAppID),
			"app_secret":   []byte(testAppSecret + "\n"),
			"access_token": []byte(token),
		},
	}
}

// checkNoLeak fails when err's text holds any token the fake issued, the app
// secret, the app access token or a client_secret parameter.
func (h *harness) checkNoLeak(err error) {
	h.t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	forbidden := append(h.fake.Secrets(), testAppSecret, testAppID+"|"+testAppSecret, "client_secret=", "fb_exchange_token=", "input_token=")
	for _, s := range forbidden {
		if s != "" && strings.Contains(msg, s) {
			h.t.Errorf("error text leaks a secret (%.12q...): %s", s, msg)
		}
	}
}

func wantProviderError(t *testing.T, err error, kind provider.Kind, reason string) *provider.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v/%s", kind, reason)
	}
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %T (%v) is not a *provider.Error", err, err)
	}
	if pe.Kind != kind || pe.Reason != reason {
		t.Fatalf("got %v/%s (%v), want %v/%s", pe.Kind, pe.Reason, err, kind, reason)
	}
	return pe
}

func TestBootstrapTokenKinds(t *testing.T) {
	tests := []struct {
		name            string
		kind            facebookfake.Kind
		expiresAt       time.Time
		wantType        string
		wantExpires     bool
		wantExpiresAt   time.Time
		wantDataAccess  time.Time
		wantRefreshable bool
		wantExchanges   int
		wantDebugs      int
		wantNewToken    bool
	}{
		{name: "short-lived user token is exchanged", kind: facebookfake.KindUserShort,
			wantType: facebook.TypeUserLongLived, wantExpires: true, wantExpiresAt: t0.Add(60 * day), wantDataAccess: t0.Add(90 * day),
			wantExchanges: 1, wantDebugs: 2, wantNewToken: true},
		{name: "long-lived user token is adopted", kind: facebookfake.KindUserLong, expiresAt: t0.Add(50 * day),
			wantType: facebook.TypeUserLongLived, wantExpires: true, wantExpiresAt: t0.Add(50 * day), wantDataAccess: t0.Add(90 * day),
			wantDebugs: 1},
		{name: "user token within 24h of issued_at counts as short-lived", kind: facebookfake.KindUserLong, expiresAt: t0.Add(23 * time.Hour),
			// The fake (like Facebook) answers the same string: no extension.
			wantType: facebook.TypeUserLongLived, wantExpires: true, wantExpiresAt: t0.Add(23 * time.Hour), wantDataAccess: t0.Add(90 * day),
			wantExchanges: 1, wantDebugs: 2},
		{name: "expiring system-user token", kind: facebookfake.KindSystemUserExpiring, expiresAt: t0.Add(30 * day),
			wantType: facebook.TypeSystemUserExpiring, wantExpires: true, wantExpiresAt: t0.Add(30 * day), wantRefreshable: true, wantDebugs: 1},
		{name: "non-expiring system-user token", kind: facebookfake.KindSystemUserNonExpiring, expiresAt: t0.Add(time.Hour),
			wantType: facebook.TypeSystemUserNonExpiring, wantDebugs: 1},
		{name: "non-expiring page token", kind: facebookfake.KindPage,
			wantType: facebook.TypePage, wantDataAccess: t0.Add(90 * day), wantDebugs: 1},
		{name: "expiring page token", kind: facebookfake.KindPage, expiresAt: t0.Add(59 * day),
			wantType: facebook.TypePage, wantExpires: true, wantExpiresAt: t0.Add(59 * day), wantDataAccess: t0.Add(90 * day), wantDebugs: 1},
		{name: "app token", kind: facebookfake.KindApp,
			wantType: facebook.TypeApp, wantDebugs: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{}, nil)
			in := h.fake.IssueToken(tc.kind, tc.expiresAt)
			tok, err := h.client.Bootstrap(context.Background(), request(in), "access_token")
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			if tok.Type != tc.wantType || tok.Expires != tc.wantExpires || tok.Refreshable != tc.wantRefreshable {
				t.Errorf("got type %s expires %v refreshable %v, want %s %v %v", tok.Type, tok.Expires, tok.Refreshable, tc.wantType, tc.wantExpires, tc.wantRefreshable)
			}
			if !tok.ExpiresAt.Equal(tc.wantExpiresAt) {
				t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt, tc.wantExpiresAt)
			}
			if !tok.DataAccessExpiresAt.Equal(tc.wantDataAccess) {
				t.Errorf("DataAccessExpiresAt = %v, want %v", tok.DataAccessExpiresAt, tc.wantDataAccess)
			}
			if !tok.ObtainedAt.Equal(t0) {
				t.Errorf("ObtainedAt = %v, want %v", tok.ObtainedAt, t0)
			}
			if tc.kind != facebookfake.KindApp && len(tok.Scopes) == 0 {
				t.Errorf("no scopes")
			}
			if got := tok.AccessToken != in; got != tc.wantNewToken {
				t.Errorf("new token = %v, want %v", got, tc.wantNewToken)
			}
			if got, ok := h.fake.TokenInfo(tok.AccessToken); !ok || !got.Equal(tc.wantExpiresAt) {
				t.Errorf("fake holds expiry %v (known %v), want %v", got, ok, tc.wantExpiresAt)
			}
			if got := h.fake.Calls("exchange"); got != tc.wantExchanges {
				t.Errorf("exchange calls = %d, want %d", got, tc.wantExchanges)
			}
			if got := h.fake.Calls("debug_token"); got != tc.wantDebugs {
				t.Errorf("debug_token calls = %d, want %d", got, tc.wantDebugs)
			}
			if got := h.fake.Calls("refresh"); got != 0 {
				t.Errorf("refresh calls = %d, want 0", got)
			}
		})
	}
}

func TestBootstrapExchangeWithAndWithoutExpiresIn(t *testing.T) {
	// A lifetime that is neither 60 days nor "never": the client must learn
	// it from expires_in, or from debug_token when expires_in is absent.
	const ttl = 45 * day
	for _, omit := range []bool{false, true} {
		t.Run(map[bool]string{false: "expires_in present", true: "expires_in absent"}[omit], func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{OmitExpiresIn: omit, LongLivedTTL: ttl}, nil)
			h.clk.Step(90 * time.Minute)
			in := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
			tok, err := h.client.Bootstrap(context.Background(), request(in), "access_token")
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			now := t0.Add(90 * time.Minute)
			if !tok.Expires || !tok.ExpiresAt.Equal(now.Add(ttl)) {
				t.Fatalf("Expires %v ExpiresAt %v, want %v", tok.Expires, tok.ExpiresAt, now.Add(ttl))
			}
			if tok.Type != facebook.TypeUserLongLived || tok.Refreshable {
				t.Errorf("type %s refreshable %v", tok.Type, tok.Refreshable)
			}
			if tok.AccessToken == in {
				t.Errorf("exchange returned the short-lived token")
			}
			if want, _ := h.fake.TokenInfo(tok.AccessToken); !want.Equal(tok.ExpiresAt) {
				t.Errorf("fake believes %v, client %v", want, tok.ExpiresAt)
			}
		})
	}
}

// failSecondDebug makes the second debug_token request answer HTTP 502.
func failSecondDebug(next http.Handler) http.Handler {
	var mu sync.Mutex
	n := 0
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/debug_token") {
			mu.Lock()
			n++
			cur := n
			mu.Unlock()
			if cur == 2 {
				http.Error(w, "<html>Bad Gateway</html>", http.StatusBadGateway)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func TestBootstrapDebugTokenFailsAfterExchange(t *testing.T) {
	t.Run("expires_in present: the token is kept", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, failSecondDebug)
		in := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
		tok, err := h.client.Bootstrap(context.Background(), request(in), "access_token")
		if err != nil {
			t.Fatalf("Bootstrap: %v", err)
		}
		if tok.AccessToken == in || !tok.ExpiresAt.Equal(t0.Add(60*day)) || !tok.DataAccessExpiresAt.Equal(t0.Add(90*day)) {
			t.Errorf("got %+v", tok)
		}
	})
	t.Run("expires_in absent: transient error, no guess", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{OmitExpiresIn: true}, failSecondDebug)
		in := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
		tok, err := h.client.Bootstrap(context.Background(), request(in), "access_token")
		pe := wantProviderError(t, err, provider.KindTransient, "ServerError")
		if tok != nil || pe.HTTPStatus != http.StatusBadGateway || pe.Op != "debug_token" {
			t.Errorf("tok %v, error %+v", tok, pe)
		}
		h.checkNoLeak(err)
	})
}

func TestRefreshExpiringSystemUserToken(t *testing.T) {
	for _, omit := range []bool{false, true} {
		t.Run(map[bool]string{false: "expires_in present", true: "expires_in absent"}[omit], func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{OmitExpiresIn: omit}, nil)
			old := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(10*day))
			req := request(old)
			cur, err := h.client.Bootstrap(context.Background(), req, "access_token")
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			h.clk.Step(3 * day)
			now := t0.Add(3 * day)
			debugsBefore := h.fake.Calls("debug_token")
			next, err := h.client.Refresh(context.Background(), req, cur)
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			if next.AccessToken == old || next.AccessToken == "" {
				t.Fatalf("refresh did not yield a new token")
			}
			if !next.Expires || !next.ExpiresAt.Equal(now.Add(60*day)) {
				t.Errorf("ExpiresAt = %v, want %v", next.ExpiresAt, now.Add(60*day))
			}
			if next.Type != facebook.TypeSystemUserExpiring || !next.Refreshable || !next.ObtainedAt.Equal(now) {
				t.Errorf("got %+v", next)
			}
			if got := h.fake.Calls("refresh"); got != 1 {
				t.Errorf("refresh calls = %d, want 1", got)
			}
			if got := h.fake.Calls("exchange"); got != 0 {
				t.Errorf("plain exchange calls = %d, want 0", got)
			}
			wantDebugs := 0
			if omit {
				wantDebugs = 1
			}
			if got := h.fake.Calls("debug_token") - debugsBefore; got != wantDebugs {
				t.Errorf("debug_token calls during refresh = %d, want %d", got, wantDebugs)
			}
			if cur.AccessToken != old {
				t.Errorf("Refresh modified current")
			}
			// The old token keeps working until its own expiry.
			if _, err := h.client.Probe(context.Background(), req, cur); err != nil {
				t.Errorf("old token no longer valid: %v", err)
			}
			probed, err := h.client.Probe(context.Background(), req, next)
			if err != nil || !probed.ExpiresAt.Equal(now.Add(60*day)) {
				t.Errorf("probe of new token: %v, %v", probed, err)
			}
		})
	}
}

func TestRefreshLongLivedUserTokenCannotBeExtended(t *testing.T) {
	for _, omit := range []bool{false, true} {
		t.Run(map[bool]string{false: "expires_in present", true: "expires_in absent"}[omit], func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{OmitExpiresIn: omit}, nil)
			in := h.fake.IssueToken(facebookfake.KindUserLong, t0.Add(40*day))
			req := request(in)
			cur, err := h.client.Bootstrap(context.Background(), req, "access_token")
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			h.clk.Step(day)
			tok, err := h.client.Refresh(context.Background(), req, cur)
			if tok != nil {
				t.Errorf("got a token: %+v", tok)
			}
			wantProviderError(t, err, provider.KindReauthorize, "CannotExtendUserToken")
			if got := h.fake.Calls("refresh"); got != 1 {
				t.Errorf("refresh calls = %d, want exactly 1 (no loop)", got)
			}
			if exp, _ := h.fake.TokenInfo(in); !exp.Equal(t0.Add(40 * day)) {
				t.Errorf("fake extended the token to %v", exp)
			}
			h.checkNoLeak(err)
		})
	}
}

func TestProbe(t *testing.T) {
	t.Run("valid token: metadata updated, ObtainedAt kept", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, nil)
		in := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(20*day))
		obtained := t0.Add(-5 * day)
		cur := &provider.Token{AccessToken: in, Type: "stale", ObtainedAt: obtained}
		h.clk.Step(time.Hour)
		got, err := h.client.Probe(context.Background(), request(in), cur)
		if err != nil {
			t.Fatalf("Probe: %v", err)
		}
		if got.AccessToken != in || got.Type != facebook.TypeSystemUserExpiring || !got.Refreshable || !got.Expires ||
			!got.ExpiresAt.Equal(t0.Add(20*day)) || !got.ObtainedAt.Equal(obtained) || len(got.Scopes) == 0 {
			t.Errorf("got %+v", got)
		}
		if cur.Type != "stale" {
			t.Errorf("Probe modified current")
		}
	})

	errCases := []struct {
		name       string
		setup      func(h *harness) string
		kind       provider.Kind
		reason     string
		code       string
		statusFrom int // 0: use InvalidTokenStatus
	}{
		{name: "expired", setup: func(h *harness) string {
			tok := h.fake.IssueToken(facebookfake.KindUserLong, t0.Add(day))
			h.clk.Step(2 * day)
			return tok
		}, kind: provider.KindReauthorize, reason: "TokenExpired", code: "190/463"},
		{name: "revoked", setup: func(h *harness) string {
			tok := h.fake.IssueToken(facebookfake.KindPage, time.Time{})
			h.fake.Revoke(tok)
			return tok
		}, kind: provider.KindReauthorize, reason: "TokenInvalid", code: "190/467"},
		{name: "data access expired", setup: func(h *harness) string {
			tok := h.fake.IssueToken(facebookfake.KindUserLong, time.Time{})
			h.fake.SetTokenError(tok, 190, 493)
			return tok
		}, kind: provider.KindReauthorize, reason: "DataAccessExpired", code: "190/493"},
		{name: "password changed", setup: func(h *harness) string {
			tok := h.fake.IssueToken(facebookfake.KindUserLong, time.Time{})
			h.fake.SetTokenError(tok, 190, 460)
			return tok
		}, kind: provider.KindReauthorize, reason: "PasswordChanged", code: "190/460"},
		{name: "unknown token", setup: func(h *harness) string {
			return "EAAnotatokenthefakeeverissued0123456789"
		}, kind: provider.KindReauthorize, reason: "TokenInvalid", code: "190"},
	}
	for _, status := range []int{http.StatusOK, http.StatusBadRequest} {
		for _, tc := range errCases {
			t.Run(tc.name+"/status "+http.StatusText(status), func(t *testing.T) {
				h := newHarness(t, facebookfake.Options{InvalidTokenStatus: status}, nil)
				tok := tc.setup(h)
				got, err := h.client.Probe(context.Background(), request(tok), &provider.Token{AccessToken: tok})
				if got != nil {
					t.Errorf("got a token for an invalid one")
				}
				pe := wantProviderError(t, err, tc.kind, tc.reason)
				if pe.Code != tc.code || pe.HTTPStatus != status || pe.Op != "debug_token" {
					t.Errorf("code %q status %d op %q, want %q %d debug_token", pe.Code, pe.HTTPStatus, pe.Op, tc.code, status)
				}
				if !strings.Contains(pe.Message, "access_token") {
					t.Errorf("message does not say what to do: %q", pe.Message)
				}
				h.checkNoLeak(err)
			})
		}
	}
}

func TestWrongAppCredentials(t *testing.T) {
	h := newHarness(t, facebookfake.Options{}, nil)
	in := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(10*day))
	req := request(in)
	req.Credentials["app_secret"] = []byte("ffffffffffffffffffffffffffffffff")
	ctx := context.Background()

	// debug_token: the top-level envelope is about the app access token.
	_, err := h.client.Bootstrap(ctx, req, "access_token")
	pe := wantProviderError(t, err, provider.KindConfiguration, "InvalidAppCredentials")
	if !strings.Contains(pe.Message, "app_secret") {
		t.Errorf("message does not name app_secret: %q", pe.Message)
	}
	h.checkNoLeak(err)
	if strings.Contains(err.Error(), "ffffffffffffffffffffffffffffffff") {
		t.Errorf("wrong secret leaked: %v", err)
	}

	// token endpoint: code 1 "Error validating client secret.".
	_, err = h.client.Refresh(ctx, req, &provider.Token{AccessToken: in, Type: facebook.TypeSystemUserExpiring, Refreshable: true, Expires: true, ExpiresAt: t0.Add(10 * day)})
	pe = wantProviderError(t, err, provider.KindConfiguration, "InvalidAppSecret")
	if !strings.Contains(pe.Message, "app_secret") || pe.Code != "1" {
		t.Errorf("got %+v", pe)
	}
	h.checkNoLeak(err)
	if strings.Contains(err.Error(), "ffffffffffffffffffffffffffffffff") {
		t.Errorf("wrong secret leaked: %v", err)
	}
}

func TestAppMismatch(t *testing.T) {
	h := newHarness(t, facebookfake.Options{}, nil)
	in := h.fake.IssueToken(facebookfake.KindUserLong, time.Time{})
	h.fake.FailNext("debug_token", 1, http.StatusOK,
		`{"data":{"app_id":"111222333","type":"USER","application":"Other","expires_at":1893456000,"is_valid":true,"issued_at":1788000000,"scopes":["email"],"user_id":"1"}}`, nil)
	_, err := h.client.Bootstrap(context.Background(), request(in), "access_token")
	pe := wantProviderError(t, err, provider.KindConfiguration, "AppMismatch")
	if !strings.Contains(pe.Message, "111222333") || !strings.Contains(pe.Message, testAppID) {
		t.Errorf("message should name both app IDs: %q", pe.Message)
	}
	if h.fake.Calls("exchange") != 0 {
		t.Errorf("exchanged a token of another app")
	}
}

type classCase struct {
	name       string
	op         string // "refresh" (token endpoint) or "debug_token"
	status     int
	body       string // {TOKEN} and {SECRET} are replaced
	header     http.Header
	kind       provider.Kind
	reason     string
	code       string
	retryAfter time.Duration
}

func envelope(code, subcode int, extra string) string {
	s := `{"error":{"message":"An error","type":"OAuthException","code":` + itoa(code)
	if subcode != 0 {
		s += `,"error_subcode":` + itoa(subcode)
	}
	return s + extra + `,"fbtrace_id":"AbCdEf123"}}`
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestErrorClassification(t *testing.T) {
	R, C, T, Th := provider.KindReauthorize, provider.KindConfiguration, provider.KindTransient, provider.KindThrottled
	bucHeader := http.Header{"X-Business-Use-Case-Usage": {`{"1234567890":[{"type":"pages","call_count":100,"total_cputime":25,"total_time":25,"estimated_time_to_regain_access":19},{"type":"ads_management","call_count":5,"estimated_time_to_regain_access":3}]}`}}
	appUsageHeader := http.Header{"X-App-Usage": {`{"call_count":100,"total_time":30,"total_cputime":30,"estimated_time_to_regain_access":7}`}}
	retryHeader := http.Header{"Retry-After": {"120"}}
	cases := []classCase{
		// 190 subcodes: a human must act.
		{name: "190/458", status: 400, body: envelope(190, 458, ""), kind: R, reason: "AppNotAuthorized", code: "190/458"},
		{name: "190/459", status: 400, body: envelope(190, 459, ""), kind: R, reason: "UserCheckpointed", code: "190/459"},
		{name: "190/460", status: 400, body: envelope(190, 460, ""), kind: R, reason: "PasswordChanged", code: "190/460"},
		{name: "190/463 recorded body", status: 400, body: facebookfake.Recorded463Body,
			header: http.Header{"WWW-Authenticate": {facebookfake.Recorded463WWWAuthenticate}}, kind: R, reason: "TokenExpired", code: "190/463"},
		{name: "190/464", status: 400, body: envelope(190, 464, ""), kind: R, reason: "UnconfirmedUser", code: "190/464"},
		{name: "190/467", status: 400, body: envelope(190, 467, ""), kind: R, reason: "TokenInvalid", code: "190/467"},
		{name: "190/492", status: 400, body: envelope(190, 492, ""), kind: R, reason: "NoPageRole", code: "190/492"},
		{name: "190/493", status: 400, body: envelope(190, 493, ""), kind: R, reason: "DataAccessExpired", code: "190/493"},
		{name: "190 without subcode", status: 400, body: envelope(190, 0, ""), kind: R, reason: "TokenInvalid", code: "190"},
		{name: "190 with HTTP 403", status: 403, body: envelope(190, 463, ""), kind: R, reason: "TokenExpired", code: "190/463"},
		{name: "190 with HTTP 200", status: 200, body: envelope(190, 460, ""), kind: R, reason: "PasswordChanged", code: "190/460"},
		{name: "102", status: 400, body: envelope(102, 0, ""), kind: R, reason: "SessionInvalid", code: "102"},
		{name: "10 permission", status: 403, body: envelope(10, 0, ""), kind: R, reason: "PermissionMissing", code: "10"},
		{name: "200 permission", status: 400, body: envelope(200, 0, ""), kind: R, reason: "PermissionMissing", code: "200"},
		{name: "299 permission", status: 400, body: envelope(299, 0, ""), kind: R, reason: "PermissionMissing", code: "299"},
		// Configuration.
		{name: "code 1 client secret", status: 400, body: `{"error":{"message":"Error validating client secret.","type":"OAuthException","code":1,"fbtrace_id":"A1b2C3"}}`,
			kind: C, reason: "InvalidAppSecret", code: "1"},
		// Transient.
		{name: "code 1 other", status: 500, body: `{"error":{"message":"An unknown error occurred","type":"OAuthException","code":1,"error_subcode":99,"is_transient":false}}`,
			kind: T, reason: "GraphAPITransient", code: "1/99"},
		{name: "code 2", status: 500, body: `{"error":{"message":"An unexpected error has occurred. Please retry your request later.","type":"OAuthException","code":2,"is_transient":true}}`,
			kind: T, reason: "GraphAPITransient", code: "2"},
		{name: "is_transient true", status: 400, body: envelope(100, 33, `,"is_transient":true`), kind: T, reason: "GraphAPITransient", code: "100/33"},
		{name: "is_transient as string", status: 400, body: envelope(100, 0, `,"is_transient":"true"`), kind: T, reason: "GraphAPITransient", code: "100"},
		{name: "error_data as JSON string", status: 400, body: envelope(190, 460, `,"error_data":"{\"some\":\"thing\"}","error_user_title":"Session","error_user_msg":"Log in again"`),
			kind: R, reason: "PasswordChanged", code: "190/460"},
		{name: "error_data as object", status: 400, body: envelope(190, 459, `,"error_data":{"some":"thing"}`), kind: R, reason: "UserCheckpointed", code: "190/459"},
		{name: "unknown code", status: 400, body: envelope(12345, 0, ""), kind: T, reason: "GraphAPIError", code: "12345"},
		{name: "code as string", status: 400, body: `{"error":{"message":"x","type":"OAuthException","code":"190","error_subcode":"463"}}`, kind: R, reason: "TokenExpired", code: "190/463"},
		{name: "80015 is not a throttle code", status: 400, body: envelope(80015, 0, ""), kind: T, reason: "GraphAPIError", code: "80015"},
		{name: "5xx HTML", status: 502, body: "<html><body><h1>502 Bad Gateway</h1></body></html>", header: http.Header{"Content-Type": {"text/html"}},
			kind: T, reason: "ServerError"},
		{name: "503 empty", status: 503, body: "", kind: T, reason: "ServerError"},
		{name: "malformed JSON 200", status: 200, body: `{"access_token":"abc`, kind: T, reason: "MalformedResponse"},
		{name: "200 without access_token", status: 200, body: `{"token_type":"bearer","expires_in":5183944}`, kind: T, reason: "MalformedResponse"},
		{name: "200 with empty access_token", status: 200, body: `{"access_token":"","token_type":"bearer"}`, kind: T, reason: "MalformedResponse"},
		{name: "400 HTML", status: 400, body: "<html>bad</html>", kind: T, reason: "UnexpectedResponse"},
		{name: "error as a string", status: 400, body: `{"error":"invalid"}`, kind: T, reason: "UnexpectedResponse"},
		{name: "body over 1 MiB", status: 200, body: `{"access_token":"` + strings.Repeat("a", 1<<20) + `"}`, kind: T, reason: "ResponseTooLarge"},
		// Throttling.
		{name: "4 with X-App-Usage", status: 400, body: envelope(4, 0, `,"is_transient":true`), header: appUsageHeader, kind: Th, reason: "RateLimited", code: "4", retryAfter: 7 * time.Minute},
		{name: "17 with business use case usage", status: 400, body: envelope(17, 2446079, ""), header: bucHeader, kind: Th, reason: "RateLimited", code: "17/2446079", retryAfter: 19 * time.Minute},
		{name: "32 with Retry-After", status: 403, body: envelope(32, 0, ""), header: retryHeader, kind: Th, reason: "RateLimited", code: "32", retryAfter: 2 * time.Minute},
		{name: "341 without headers", status: 400, body: envelope(341, 0, ""), kind: Th, reason: "RateLimited", code: "341", retryAfter: 15 * time.Minute},
		{name: "613", status: 400, body: envelope(613, 0, ""), header: bucHeader, kind: Th, reason: "RateLimited", code: "613", retryAfter: 19 * time.Minute},
		{name: "80000", status: 400, body: envelope(80000, 0, ""), header: bucHeader, kind: Th, reason: "RateLimited", code: "80000", retryAfter: 19 * time.Minute},
		{name: "80014 usage beats Retry-After", status: 400, body: envelope(80014, 0, ""),
			header: http.Header{"X-Business-Use-Case-Usage": bucHeader["X-Business-Use-Case-Usage"], "Retry-After": {"5"}}, kind: Th, reason: "RateLimited", code: "80014", retryAfter: 19 * time.Minute},
		{name: "unreadable usage header falls back to Retry-After", status: 400, body: envelope(4, 0, ""),
			header: http.Header{"X-App-Usage": {"not json"}, "Retry-After": {"30"}}, kind: Th, reason: "RateLimited", code: "4", retryAfter: 30 * time.Second},
		{name: "429 without body", status: 429, body: "", header: retryHeader, kind: Th, reason: "RateLimited", retryAfter: 2 * time.Minute},
		// Facebook's text is quoted, but scrubbed of what was sent.
		{name: "message echoing secrets", status: 400,
			body: `{"error":{"message":"Bad token {TOKEN} for secret {SECRET} at https://graph.facebook.com/v26.0/oauth/access_token?client_secret={SECRET}&x=1","type":"OAuthException","code":190,"error_subcode":467}}`,
			kind: R, reason: "TokenInvalid", code: "190/467"},

		// debug_token: the top-level envelope and data.error.
		{name: "debug_token throttled", op: "debug_token", status: 400, body: envelope(4, 0, ""), header: bucHeader, kind: Th, reason: "RateLimited", code: "4", retryAfter: 19 * time.Minute},
		{name: "debug_token top-level 190 is the app token", op: "debug_token", status: 400,
			body: `{"error":{"message":"Invalid OAuth access token signature.","type":"OAuthException","code":190,"fbtrace_id":"X"}}`, kind: C, reason: "InvalidAppCredentials", code: "190"},
		{name: "debug_token top-level 190/460", op: "debug_token", status: 400, body: envelope(190, 460, ""), kind: R, reason: "PasswordChanged", code: "190/460"},
		{name: "debug_token code 1 is not a client secret error", op: "debug_token", status: 400,
			body: `{"error":{"message":"Error validating client secret.","type":"OAuthException","code":1}}`, kind: T, reason: "GraphAPITransient", code: "1"},
		{name: "debug_token data.error subcode", op: "debug_token", status: 200,
			body: `{"data":{"app_id":"634974688087057","type":"USER","application":"App","expires_at":1700000000,"is_valid":false,"error":{"code":190,"message":"Error validating access token: Session has expired","subcode":463},"scopes":[]}}`,
			kind: R, reason: "TokenExpired", code: "190/463"},
		{name: "debug_token data.error with 400", op: "debug_token", status: 400,
			body: `{"data":{"error":{"code":190,"message":"Error validating access token: The user has not authorized application 1.","subcode":458},"is_valid":false,"scopes":[]}}`,
			kind: R, reason: "AppNotAuthorized", code: "190/458"},
		{name: "debug_token invalid without error", op: "debug_token", status: 200, body: `{"data":{"is_valid":false,"scopes":[]}}`, kind: R, reason: "TokenInvalid"},
		{name: "debug_token without data", op: "debug_token", status: 200, body: `{"something":"else"}`, kind: T, reason: "MalformedResponse"},
		{name: "debug_token malformed", op: "debug_token", status: 200, body: `not json`, kind: T, reason: "MalformedResponse"},
		{name: "debug_token without type", op: "debug_token", status: 200, body: `{"data":{"app_id":"634974688087057","is_valid":true,"expires_at":0}}`, kind: T, reason: "MalformedResponse"},
		{name: "debug_token 5xx HTML", op: "debug_token", status: 500, body: "<html>oops</html>", kind: T, reason: "ServerError"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{}, nil)
			tok := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(10*day))
			body := strings.NewReplacer("{TOKEN}", tok, "{SECRET}", testAppSecret).Replace(tc.body)
			op := tc.op
			if op == "" {
				op = "refresh"
			}
			h.fake.FailNext(op, 1, tc.status, body, tc.header)
			cur := &provider.Token{AccessToken: tok, Type: facebook.TypeSystemUserExpiring, Expires: true, ExpiresAt: t0.Add(10 * day), Refreshable: true}
			var got *provider.Token
			var err error
			if op == "refresh" {
				got, err = h.client.Refresh(context.Background(), request(tok), cur)
			} else {
				got, err = h.client.Probe(context.Background(), request(tok), cur)
			}
			if got != nil {
				t.Errorf("got a token: %+v", got)
			}
			pe := wantProviderError(t, err, tc.kind, tc.reason)
			if pe.Code != tc.code {
				t.Errorf("Code = %q, want %q", pe.Code, tc.code)
			}
			if pe.RetryAfter != tc.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", pe.RetryAfter, tc.retryAfter)
			}
			if pe.HTTPStatus != tc.status {
				t.Errorf("HTTPStatus = %d, want %d", pe.HTTPStatus, tc.status)
			}
			if pe.Op != op {
				t.Errorf("Op = %q, want %q", pe.Op, op)
			}
			if pe.Message == "" {
				t.Errorf("empty message")
			}
			h.checkNoLeak(err)
			if h.fake.Calls(op) != 1 {
				t.Errorf("%s calls = %d, want 1", op, h.fake.Calls(op))
			}
		})
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, nil)
		tok := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(10*day))
		h.srv.Close()
		cur := &provider.Token{AccessToken: tok, Type: facebook.TypeSystemUserExpiring, Expires: true, ExpiresAt: t0.Add(10 * day), Refreshable: true}
		_, err := h.client.Refresh(context.Background(), request(tok), cur)
		wantProviderError(t, err, provider.KindTransient, "ProviderUnreachable")
		h.checkNoLeak(err)
		if obs := h.observations(); len(obs) != 1 || obs[0] != (observation{"Facebook", "refresh", 0}) {
			t.Errorf("observed %v", obs)
		}
	})

	stall := func(release chan struct{}) func(http.Handler) http.Handler {
		return func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-release:
				}
			})
		}
	}
	t.Run("client timeout", func(t *testing.T) {
		release := make(chan struct{})
		h := newHarness(t, facebookfake.Options{}, stall(release))
		defer close(release)
		hc := h.srv.Client()
		hc.Timeout = 100 * time.Millisecond
		c := facebook.New(facebook.Options{HTTPClient: hc, BaseURL: h.srv.URL, Clock: h.clk})
		tok := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
		_, err := c.Bootstrap(context.Background(), request(tok), "access_token")
		pe := wantProviderError(t, err, provider.KindTransient, "ProviderUnreachable")
		if !strings.Contains(pe.Message, "timed out") {
			t.Errorf("message %q", pe.Message)
		}
		h.checkNoLeak(err)
	})
	t.Run("context deadline", func(t *testing.T) {
		release := make(chan struct{})
		h := newHarness(t, facebookfake.Options{}, stall(release))
		defer close(release)
		tok := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(10*day))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		cur := &provider.Token{AccessToken: tok, Type: facebook.TypeSystemUserExpiring, Expires: true, ExpiresAt: t0.Add(10 * day), Refreshable: true}
		_, err := h.client.Refresh(ctx, request(tok), cur)
		pe := wantProviderError(t, err, provider.KindTransient, "ProviderUnreachable")
		if !strings.Contains(pe.Message, "timed out") {
			t.Errorf("message %q", pe.Message)
		}
		h.checkNoLeak(err)
	})
}

func TestGraphAPIVersion(t *testing.T) {
	tests := []struct {
		name string
		spec *tokensv1alpha1.ManagedTokenSpec
		want string
	}{
		{"nil spec", nil, "v26.0"},
		{"no facebook block", &tokensv1alpha1.ManagedTokenSpec{Provider: tokensv1alpha1.ProviderFacebook}, "v26.0"},
		{"empty version", &tokensv1alpha1.ManagedTokenSpec{Facebook: &tokensv1alpha1.FacebookSpec{}}, tokensv1alpha1.DefaultGraphAPIVersion},
		{"v24.0", &tokensv1alpha1.ManagedTokenSpec{Facebook: &tokensv1alpha1.FacebookSpec{GraphAPIVersion: "v24.0"}}, "v24.0"},
		{"v25.0", &tokensv1alpha1.ManagedTokenSpec{Facebook: &tokensv1alpha1.FacebookSpec{GraphAPIVersion: "v25.0"}}, "v25.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{}, nil)
			tok := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
			req := request(tok)
			req.Spec = tc.spec
			got, err := h.client.Bootstrap(context.Background(), req, "access_token")
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			if v := h.fake.Versions(); !slices.Equal(v, []string{tc.want}) {
				t.Errorf("versions = %v, want [%s]", v, tc.want)
			}
			before := h.fake.Calls("debug_token")
			if _, err := h.client.Probe(context.Background(), req, got); err != nil {
				t.Fatalf("Probe: %v", err)
			}
			if h.fake.Calls("debug_token") != before+1 || !slices.Equal(h.fake.Versions(), []string{tc.want}) {
				t.Errorf("probe used versions %v", h.fake.Versions())
			}
		})
	}
	t.Run("invalid version", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, nil)
		tok := h.fake.IssueToken(facebookfake.KindUserLong, time.Time{})
		req := request(tok)
		req.Spec = &tokensv1alpha1.ManagedTokenSpec{Facebook: &tokensv1alpha1.FacebookSpec{GraphAPIVersion: "v26.0/../../me"}}
		_, err := h.client.Bootstrap(context.Background(), req, "access_token")
		wantProviderError(t, err, provider.KindConfiguration, "InvalidGraphAPIVersion")
		if n := h.fake.Calls("debug_token"); n != 0 {
			t.Errorf("made %d requests", n)
		}
	})
}

func TestBaseURLPrefixAndTrailingSlash(t *testing.T) {
	h := newHarness(t, facebookfake.Options{}, func(next http.Handler) http.Handler {
		return http.StripPrefix("/graph", next)
	})
	c := facebook.New(facebook.Options{HTTPClient: h.srv.Client(), BaseURL: h.srv.URL + "/graph/", Clock: h.clk})
	tok := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
	got, err := c.Bootstrap(context.Background(), request(tok), "access_token")
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	if got.Type != facebook.TypeUserLongLived || h.fake.Calls("exchange") != 1 {
		t.Errorf("got %+v, exchanges %d", got, h.fake.Calls("exchange"))
	}

	bad := facebook.New(facebook.Options{BaseURL: "::not a url", Clock: h.clk})
	_, err = bad.Probe(context.Background(), request(tok), got)
	wantProviderError(t, err, provider.KindConfiguration, "InvalidBaseURL")
}

func TestObserver(t *testing.T) {
	h := newHarness(t, facebookfake.Options{}, nil)
	tok := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
	if _, err := h.client.Bootstrap(context.Background(), request(tok), "access_token"); err != nil {
		t.Fatal(err)
	}
	h.fake.FailNext("refresh", 1, 400, envelope(190, 463, ""), nil)
	_, _ = h.client.Refresh(context.Background(), request(tok), &provider.Token{AccessToken: tok})
	want := []observation{
		{"Facebook", "debug_token", 200},
		{"Facebook", "exchange", 200},
		{"Facebook", "debug_token", 200},
		{"Facebook", "refresh", 400},
	}
	if got := h.observations(); !slices.Equal(got, want) {
		t.Errorf("observed %v, want %v", got, want)
	}
	// A nil observer is fine.
	c := facebook.New(facebook.Options{HTTPClient: h.srv.Client(), BaseURL: h.srv.URL, Clock: h.clk})
	if _, err := c.Probe(context.Background(), request(tok), &provider.Token{AccessToken: tok}); err != nil {
		t.Errorf("Probe without observer: %v", err)
	}
}

func TestValidateCredentialsAndGrants(t *testing.T) {
	c := facebook.New(facebook.Options{})
	const missingKey, authorize = "CredentialsKeyMissing", provider.ReasonAuthorizationRequired
	creds := func(kv ...string) provider.Credentials {
		out := provider.Credentials{}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = []byte(kv[i+1])
		}
		return out
	}
	tests := []struct {
		name       string
		creds      provider.Credentials
		stored     *provider.Token
		wantReason string   // "": valid
		wantNamed  []string // keys the message names
		wantGrants []string
	}{
		{"complete", creds("app_id", "1", "app_secret", "s", "access_token", "t"), nil, "", nil, []string{"access_token"}},
		{"code", creds("app_id", "1", "app_secret", "s", "authorization_code", "c"), nil, "", nil, []string{"authorization_code"}},
		{"code and token", creds("app_id", "1", "app_secret", "s", "authorization_code", "c", "access_token", "t"), nil, "", nil, []string{"authorization_code", "access_token"}},
		{"no grant", creds("app_id", "1", "app_secret", "s"), nil, authorize, []string{"kubectl tokenkeeper authorize", "authorization_code", "access_token"}, nil},
		{"blank grants", creds("app_id", "1", "app_secret", "s", "access_token", " ", "authorization_code", "\n"), nil, authorize, []string{"authorization_code"}, nil},
		{"blank app_secret", creds("app_id", "1", "app_secret", " \n", "access_token", "t"), nil, missingKey, []string{"app_secret"}, []string{"access_token"}},
		{"app_id and code only", creds("app_id", "1", "authorization_code", "c"), nil, missingKey, []string{"app_secret"}, []string{"authorization_code"}},
		{"empty", creds(), nil, missingKey, []string{"app_id", "app_secret", "access_token", "authorization_code"}, nil},
		{"stored, app keys only", creds("app_id", "1", "app_secret", "s"), &provider.Token{AccessToken: "x"}, "", nil, nil},
		{"stored, no app_secret", creds("app_id", "1"), &provider.Token{AccessToken: "x"}, missingKey, []string{"app_secret"}, nil},
		{"app token as app_id", creds("app_id", "1|s", "app_secret", "s", "authorization_code", "c"), nil, "InvalidAppID", []string{"app_id"}, []string{"authorization_code"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := c.ValidateCredentials(tc.creds, tc.stored)
			if tc.wantReason == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
			} else {
				pe := wantProviderError(t, err, provider.KindConfiguration, tc.wantReason)
				for _, k := range tc.wantNamed {
					if !strings.Contains(pe.Message, k) {
						t.Errorf("message %q does not name %s", pe.Message, k)
					}
				}
			}
			if got := c.BootstrapGrants(tc.creds); !slices.Equal(got, tc.wantGrants) {
				t.Errorf("BootstrapGrants = %v, want %v", got, tc.wantGrants)
			}
		})
	}

	h := newHarness(t, facebookfake.Options{}, nil)
	tok := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
	_, err := h.client.Bootstrap(context.Background(), request(tok), "refresh_token")
	wantProviderError(t, err, provider.KindConfiguration, "UnsupportedGrant")
	req := request(tok)
	delete(req.Credentials, "app_secret")
	_, err = h.client.Bootstrap(context.Background(), req, "access_token")
	wantProviderError(t, err, provider.KindConfiguration, "CredentialsKeyMissing")
	if n := h.fake.Calls("debug_token") + h.fake.Calls("exchange"); n != 0 {
		t.Errorf("made %d requests with bad input", n)
	}
}

// TestNoLeakOnAnyErrorPath drives every error path with real tokens of the
// fake and checks that no error text holds a secret.
func TestNoLeakOnAnyErrorPath(t *testing.T) {
	h := newHarness(t, facebookfake.Options{}, nil)
	ctx := context.Background()
	short := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
	long := h.fake.IssueToken(facebookfake.KindUserLong, t0.Add(3*day))
	sys := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(3*day))
	revoked := h.fake.IssueToken(facebookfake.KindPage, time.Time{})
	h.fake.Revoke(revoked)
	sysCur := func(tok string) *provider.Token {
		return &provider.Token{AccessToken: tok, Type: facebook.TypeSystemUserExpiring, Expires: true, ExpiresAt: t0.Add(3 * day), Refreshable: true}
	}
	wrongSecret := func(tok string) provider.Request {
		r := request(tok)
		r.Credentials["app_secret"] = []byte(testAppSecret + "x")
		return r
	}
	var errs []error
	add := func(_ *provider.Token, err error) {
		if err == nil {
			t.Errorf("scenario %d did not fail", len(errs))
		}
		errs = append(errs, err)
	}
	add(h.client.Probe(ctx, request(revoked), &provider.Token{AccessToken: revoked}))
	add(h.client.Bootstrap(ctx, request(revoked), "access_token"))
	add(h.client.Bootstrap(ctx, wrongSecret(short), "access_token"))
	add(h.client.Refresh(ctx, wrongSecret(sys), sysCur(sys)))
	add(h.client.Refresh(ctx, request(long), &provider.Token{AccessToken: long, Type: facebook.TypeUserLongLived, Expires: true, ExpiresAt: t0.Add(3 * day)}))
	h.fake.FailNext("exchange", 1, 400, `{"error":{"message":"client_secret=`+testAppSecret+` token `+short+`","code":1}}`, nil)
	add(h.client.Bootstrap(ctx, request(short), "access_token"))
	h.fake.FailNext("exchange", 1, 502, "<html>"+short+"</html>", nil)
	add(h.client.Bootstrap(ctx, request(short), "access_token"))
	h.fake.SetTokenError(long, 190, 459)
	add(h.client.Refresh(ctx, request(long), &provider.Token{AccessToken: long}))
	add(h.client.Probe(ctx, request(long), &provider.Token{AccessToken: long}))
	h.clk.Step(4 * day)
	add(h.client.Refresh(ctx, request(sys), sysCur(sys)))
	add(h.client.Probe(ctx, request(sys), sysCur(sys)))
	h.srv.Close()
	add(h.client.Refresh(ctx, request(sys), sysCur(sys)))
	add(h.client.Bootstrap(ctx, request(short), "access_token"))

	if len(errs) != 13 {
		t.Fatalf("ran %d scenarios", len(errs))
	}
	for _, err := range errs {
		h.checkNoLeak(err)
		if err != nil && strings.Contains(err.Error(), h.srv.URL+"/v") {
			t.Errorf("error holds a request URL: %v", err)
		}
	}
}

// TestRedirectsAreNotFollowed: Graph calls carry client_secret and tokens in
// the query string; a redirect must neither be followed nor leak that URL
// as Referer to its target.
func TestRedirectsAreNotFollowed(t *testing.T) {
	var mu sync.Mutex
	var hits []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits = append(hits, r.Referer())
		mu.Unlock()
	}))
	defer target.Close()
	h := newHarness(t, facebookfake.Options{}, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL+"/collect", http.StatusMovedPermanently)
		})
	})
	tok := "EAAF" + strings.Repeat("z", 60)
	cur := &provider.Token{AccessToken: tok, Type: facebook.TypeSystemUserExpiring, Expires: true, ExpiresAt: t0.Add(10 * day), Refreshable: true}
	for _, call := range []func() error{
		func() error { _, err := h.client.Refresh(context.Background(), request(tok), cur); return err },
		func() error { _, err := h.client.Probe(context.Background(), request(tok), cur); return err },
	} {
		err := call()
		var pe *provider.Error
		if !errors.As(err, &pe) || pe.Reason != "UnexpectedRedirect" || pe.HTTPStatus != http.StatusMovedPermanently ||
			!strings.Contains(pe.Message, "--facebook-url") || strings.Contains(pe.Error(), target.URL) {
			t.Fatalf("got %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hits) != 0 {
		t.Fatalf("the redirect target got %d requests", len(hits))
	}
}

// TestConsumes: only what a second send could be refused for is reported
// as used up; an unknown grant counts as used up.
func TestConsumes(t *testing.T) {
	c := facebook.New(facebook.Options{})
	for grant, want := range map[string]bool{"": false, facebook.KeyAccessToken: false, facebook.KeyAuthorizationCode: true, "something_new": true} {
		if got := c.Consumes(grant); got != want {
			t.Errorf("Consumes(%q) = %v, want %v", grant, got, want)
		}
	}
}
