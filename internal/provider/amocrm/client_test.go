package amocrm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

const (
	testClientID     = "b0c8e9a2-6d1f-4c3e-9a7b-2f4e6d8c0a1b"
	testClientSecret = "cs-Xq7WnV3pL9kR2tY6uH8jM4bN1cZ5dF0gS7aE3rT9yU2iO6pQ"
	// Characters that JSON encoders like to escape, to check byte-for-byte.
	testRedirectURI = "https://example.com/amocrm/callback?a=1&b=<2>"
	testDomain      = "example.amocrm.ru"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type recorded struct {
	method, path, contentType string
	host                      string
	raw                       string
	params                    map[string]string
}

type observation struct {
	provider, op string
	code         int
}

type harness struct {
	t      *testing.T
	clk    *testingclock.FakeClock
	fake   *amocrmfake.Server
	srv    *httptest.Server
	client *Client

	mu   sync.Mutex
	reqs []recorded
	obs  []observation
}

// newHarness wires a Client to the fake through an httptest.Server that
// records every request. BaseURL gets a trailing slash to check trimming.
func newHarness(t *testing.T, fakeMod func(*amocrmfake.Options), clientMod func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, clk: testingclock.NewFakeClock(t0)}
	fo := amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI, Clock: h.clk}
	if fakeMod != nil {
		fakeMod(&fo)
	}
	h.fake = amocrmfake.New(fo)
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		rec := recorded{method: r.Method, path: r.URL.Path, contentType: r.Header.Get("Content-Type"), host: r.Host, raw: string(raw)}
		_ = json.Unmarshal(raw, &rec.params)
		h.mu.Lock()
		h.reqs = append(h.reqs, rec)
		h.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(raw))
		h.fake.ServeHTTP(w, r)
	}))
	t.Cleanup(h.srv.Close)
	co := Options{
		BaseURL:           h.srv.URL + "/",
		Clock:             h.clk,
		RequestsPerSecond: 1000,
		Observe: func(p, op string, code int, _ time.Duration) {
			h.mu.Lock()
			h.obs = append(h.obs, observation{p, op, code})
			h.mu.Unlock()
		},
	}
	if clientMod != nil {
		clientMod(&co)
	}
	h.client = New(co)
	return h
}

func (h *harness) requests() []recorded {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.reqs)
}

func (h *harness) lastRequest() recorded {
	r := h.requests()
	if len(r) == 0 {
		h.t.Fatal("no request recorded")
	}
	return r[len(r)-1]
}

func spec() *tokensv1alpha1.ManagedTokenSpec {
	return &tokensv1alpha1.ManagedTokenSpec{
		Provider: tokensv1alpha1.ProviderAmoCRM,
		AmoCRM:   &tokensv1alpha1.AmoCRMSpec{Domain: testDomain, RedirectURI: testRedirectURI},
	}
}

func request(kv ...string) provider.Request {
	creds := provider.Credentials{"client_id": []byte(testClientID), "client_secret": []byte(testClientSecret)}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(creds, kv[i])
			continue
		}
		creds[kv[i]] = []byte(kv[i+1])
	}
	return provider.Request{Spec: spec(), Credentials: creds}
}

// bootstrap exchanges a fresh authorization code.
func (h *harness) bootstrap() *provider.Token {
	h.t.Helper()
	tok, err := h.client.Bootstrap(context.Background(), request("authorization_code", h.fake.IssueAuthorizationCode()), GrantAuthorizationCode)
	if err != nil {
		h.t.Fatalf("bootstrap: %v", err)
	}
	return tok
}

func asProviderError(t *testing.T, err error) *provider.Error {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got nil")
	}
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %T is not a *provider.Error: %v", err, err)
	}
	return pe
}

func makeJWT(claims map[string]any) string {
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT"})
	c, _ := json.Marshal(claims)
	return enc.EncodeToString(h) + "." + enc.EncodeToString(c) + "." + enc.EncodeToString([]byte("not-a-real-signature"))
}

func TestBootstrapByAuthorizationCode(t *testing.T) {
	h := newHarness(t, nil, nil)
	code := h.fake.IssueAuthorizationCode()
	tok, err := h.client.Bootstrap(context.Background(), request("authorization_code", code), GrantAuthorizationCode)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.AccessToken != h.fake.CurrentAccessToken() {
		t.Error("access token is not the one the fake issued")
	}
	if tok.RefreshToken == "" || tok.RefreshToken != h.fake.CurrentRefreshToken() {
		t.Error("refresh token is not the fake's current one")
	}
	if !tok.Expires || !tok.ExpiresAt.Equal(t0.Add(24*time.Hour)) || !tok.ObtainedAt.Equal(t0) ||
		!tok.RefreshTokenExpiresAt.Equal(t0.Add(90*24*time.Hour)) {
		t.Errorf("times: expires=%v at=%v obtained=%v rt=%v", tok.Expires, tok.ExpiresAt, tok.ObtainedAt, tok.RefreshTokenExpiresAt)
	}
	if tok.Type != TypeOAuth || !tok.Refreshable || !slices.Contains(tok.Scopes, "crm") {
		t.Errorf("type=%q refreshable=%v scopes=%v", tok.Type, tok.Refreshable, tok.Scopes)
	}
	r := h.lastRequest()
	if r.method != http.MethodPost || r.path != "/oauth2/access_token" || r.contentType != "application/json" {
		t.Errorf("request %s %s (%s)", r.method, r.path, r.contentType)
	}
	want := map[string]string{"client_id": testClientID, "client_secret": testClientSecret, "grant_type": "authorization_code", "code": code, "redirect_uri": testRedirectURI}
	for k, v := range want {
		if r.params[k] != v {
			t.Errorf("param %s = %q, want %q", k, r.params[k], v)
		}
	}
	if _, ok := r.params["refresh_token"]; ok {
		t.Error("refresh_token sent on the authorization_code grant")
	}
	if h.fake.Calls("authorization_code") != 1 {
		t.Errorf("authorization_code calls = %d", h.fake.Calls("authorization_code"))
	}
	if got := h.obs; len(got) != 1 || got[0] != (observation{"AmoCRM", "authorization_code", 200}) {
		t.Errorf("observations %v", got)
	}
}

func TestRedirectURISentOnBothGrantsByteForByte(t *testing.T) {
	h := newHarness(t, nil, nil)
	tok := h.bootstrap()
	if _, err := h.client.Refresh(context.Background(), request(), tok); err != nil {
		t.Fatal(err)
	}
	reqs := h.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	for i, grant := range []string{"authorization_code", "refresh_token"} {
		if reqs[i].params["grant_type"] != grant || reqs[i].params["redirect_uri"] != testRedirectURI {
			t.Errorf("request %d: grant %q redirect_uri %q", i, reqs[i].params["grant_type"], reqs[i].params["redirect_uri"])
		}
		// Not even JSON-escaped: the exact bytes are on the wire.
		if !strings.Contains(reqs[i].raw, `"redirect_uri":"`+testRedirectURI+`"`) {
			t.Errorf("request %d: redirect_uri not byte-for-byte in %d-byte body", i, len(reqs[i].raw))
		}
	}
}

func TestSeveralRotations(t *testing.T) {
	h := newHarness(t, nil, nil)
	rt := h.fake.IssueRefreshToken()
	tok, err := h.client.Bootstrap(context.Background(), request("refresh_token", rt), GrantRefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if h.lastRequest().params["refresh_token"] != rt {
		t.Fatal("bootstrap did not send the credentials' refresh token")
	}
	seen := map[string]bool{rt: true, tok.RefreshToken: true}
	for i := range 5 {
		h.clk.Step(23 * time.Hour)
		prev := tok
		// The credentials Secret still holds the original, consumed token:
		// Refresh must use current.RefreshToken.
		tok, err = h.client.Refresh(context.Background(), request("refresh_token", rt), prev)
		if err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if sent := h.lastRequest().params["refresh_token"]; sent != prev.RefreshToken {
			t.Fatalf("rotation %d sent a stale refresh token", i)
		}
		if seen[tok.RefreshToken] || tok.RefreshToken != h.fake.CurrentRefreshToken() {
			t.Fatalf("rotation %d: refresh token not rotated to the fake's newest", i)
		}
		seen[tok.RefreshToken] = true
		if !tok.ObtainedAt.Equal(h.clk.Now()) || !tok.ExpiresAt.Equal(h.clk.Now().Add(24*time.Hour)) {
			t.Fatalf("rotation %d: obtained %v expires %v", i, tok.ObtainedAt, tok.ExpiresAt)
		}
	}
	if h.fake.ReusedRefreshTokens() != 0 || h.fake.Calls("refresh_token") != 6 {
		t.Fatalf("reused=%d refresh calls=%d", h.fake.ReusedRefreshTokens(), h.fake.Calls("refresh_token"))
	}
	if _, err := h.client.Probe(context.Background(), request(), tok); err != nil {
		t.Fatalf("probe of the newest token: %v", err)
	}
}

func TestReusingConsumedRefreshToken(t *testing.T) {
	for _, status := range []int{400, 401} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			h := newHarness(t, func(o *amocrmfake.Options) { o.UsedTokenStatus = status }, nil)
			old := h.bootstrap()
			if _, err := h.client.Refresh(context.Background(), request(), old); err != nil {
				t.Fatal(err)
			}
			_, err := h.client.Refresh(context.Background(), request(), old)
			pe := asProviderError(t, err)
			if pe.Kind != provider.KindReauthorize || pe.Reason != "RefreshTokenRevoked" || pe.HTTPStatus != status ||
				pe.Code != "hint: Token has been revoked" || pe.Op != "refresh_token" {
				t.Fatalf("got %+v", pe)
			}
			if !strings.Contains(pe.Message, "Token has been revoked") || !strings.Contains(pe.Message, "credentials Secret") {
				t.Errorf("message lacks the hint or the human action: %s", pe.Message)
			}
			if h.fake.ReusedRefreshTokens() != 1 {
				t.Errorf("ReusedRefreshTokens = %d", h.fake.ReusedRefreshTokens())
			}
		})
	}
}

// Responses from the fake's own logic, not canned bodies.
func TestFakeDrivenErrors(t *testing.T) {
	cases := []struct {
		name   string
		run    func(h *harness) error
		kind   provider.Kind
		reason string
		status int
	}{
		{"unknown refresh token", func(h *harness) error {
			_, err := h.client.Refresh(context.Background(), request(), &provider.Token{RefreshToken: "def50200" + strings.Repeat("ab", 40), Refreshable: true})
			return err
		}, provider.KindReauthorize, "RefreshTokenInvalid", 401},
		{"expired refresh token", func(h *harness) error {
			tok := h.bootstrap()
			h.clk.Step(91 * 24 * time.Hour)
			_, err := h.client.Refresh(context.Background(), request(), tok)
			return err
		}, provider.KindReauthorize, "RefreshTokenExpired", 401},
		{"integration revoked", func(h *harness) error {
			tok := h.bootstrap()
			h.fake.RevokeAll()
			_, err := h.client.Refresh(context.Background(), request(), tok)
			return err
		}, provider.KindReauthorize, "RefreshTokenRevoked", 401},
		{"used code", func(h *harness) error {
			code := h.fake.IssueAuthorizationCode()
			req := request("authorization_code", code)
			if _, err := h.client.Bootstrap(context.Background(), req, GrantAuthorizationCode); err != nil {
				return err
			}
			_, err := h.client.Bootstrap(context.Background(), req, GrantAuthorizationCode)
			return err
		}, provider.KindReauthorize, "AuthorizationCodeInvalid", 400},
		{"expired code", func(h *harness) error {
			code := h.fake.IssueAuthorizationCode()
			h.clk.Step(21 * time.Minute)
			_, err := h.client.Bootstrap(context.Background(), request("authorization_code", code), GrantAuthorizationCode)
			return err
		}, provider.KindReauthorize, "AuthorizationCodeInvalid", 400},
		{"wrong client_id", func(h *harness) error {
			_, err := h.client.Bootstrap(context.Background(), request("client_id", "someone-else", "refresh_token", h.fake.IssueRefreshToken()), GrantRefreshToken)
			return err
		}, provider.KindConfiguration, "InvalidClient", 401},
		{"wrong client_secret", func(h *harness) error {
			_, err := h.client.Bootstrap(context.Background(), request("client_secret", "wrong-secret-value", "refresh_token", h.fake.IssueRefreshToken()), GrantRefreshToken)
			return err
		}, provider.KindConfiguration, "InvalidClient", 401},
		{"wrong redirect URI", func(h *harness) error {
			req := request("refresh_token", h.fake.IssueRefreshToken())
			req.Spec.AmoCRM.RedirectURI = testRedirectURI + "/"
			_, err := h.client.Bootstrap(context.Background(), req, GrantRefreshToken)
			return err
		}, provider.KindConfiguration, "InvalidClient", 401},
		{"blocked", func(h *harness) error {
			tok := h.bootstrap()
			h.fake.SetBlocked(true)
			_, err := h.client.Refresh(context.Background(), request(), tok)
			return err
		}, provider.KindBlocked, "ProviderBlocked", 403},
		{"blocked probe", func(h *harness) error {
			tok := h.bootstrap()
			h.fake.SetBlocked(true)
			_, err := h.client.Probe(context.Background(), request(), tok)
			return err
		}, provider.KindBlocked, "ProviderBlocked", 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, nil)
			pe := asProviderError(t, tc.run(h))
			if pe.Kind != tc.kind || pe.Reason != tc.reason || pe.HTTPStatus != tc.status {
				t.Fatalf("got kind=%v reason=%s status=%d (%v), want %v %s %d", pe.Kind, pe.Reason, pe.HTTPStatus, pe, tc.kind, tc.reason, tc.status)
			}
			if h.fake.ReusedRefreshTokens() != 0 {
				t.Errorf("ReusedRefreshTokens = %d", h.fake.ReusedRefreshTokens())
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	exp := func(d time.Duration) int64 { return t0.Add(d).Unix() }
	jwt := func(claims map[string]any) string { return makeJWT(claims) }
	body := func(fields map[string]any) string {
		b, _ := json.Marshal(fields)
		return string(b)
	}
	cases := []struct {
		name   string
		body   string
		want   time.Time // zero: expect MalformedResponse
		scopes []string
	}{
		{"expires_in and exp agree", body(map[string]any{"token_type": "Bearer", "expires_in": 86400, "access_token": jwt(map[string]any{"exp": exp(24 * time.Hour), "scopes": []string{"crm"}}), "refresh_token": "r"}), t0.Add(24 * time.Hour), []string{"crm"}},
		{"within 5 minutes: expires_in wins", body(map[string]any{"expires_in": 86400, "access_token": jwt(map[string]any{"exp": exp(24*time.Hour - 4*time.Minute)}), "refresh_token": "r"}), t0.Add(24 * time.Hour), nil},
		{"exp earlier by an hour wins", body(map[string]any{"expires_in": 86400, "access_token": jwt(map[string]any{"exp": exp(23 * time.Hour)}), "refresh_token": "r"}), t0.Add(23 * time.Hour), nil},
		{"expires_in earlier wins", body(map[string]any{"expires_in": 3600, "access_token": jwt(map[string]any{"exp": exp(24 * time.Hour)}), "refresh_token": "r"}), t0.Add(time.Hour), nil},
		{"no expires_in: JWT exp", body(map[string]any{"access_token": jwt(map[string]any{"exp": exp(2 * time.Hour)}), "refresh_token": "r"}), t0.Add(2 * time.Hour), nil},
		{"opaque token: expires_in", body(map[string]any{"expires_in": 600, "access_token": "opaque", "refresh_token": "r"}), t0.Add(10 * time.Minute), nil},
		{"expires_in as a string", body(map[string]any{"expires_in": "7200", "access_token": "opaque", "refresh_token": "r"}), t0.Add(2 * time.Hour), nil},
		{"server_time present", body(map[string]any{"expires_in": 86400, "server_time": t0.Unix(), "access_token": jwt(map[string]any{"exp": exp(24 * time.Hour)}), "refresh_token": "r"}), t0.Add(24 * time.Hour), nil},
		{"scopes not strings", body(map[string]any{"expires_in": 60, "access_token": jwt(map[string]any{"scopes": []any{"crm", 5}}), "refresh_token": "r"}), t0.Add(time.Minute), nil},
		// A pair with no expiry is kept, not dropped (its refresh token was
		// spent to get it), with the documented 24 hours.
		{"expires_in 0, no JWT", body(map[string]any{"expires_in": 0, "access_token": "opaque", "refresh_token": "r"}), t0.Add(24 * time.Hour), nil},
		{"no expiry at all", body(map[string]any{"access_token": jwt(map[string]any{"iat": t0.Unix()}), "refresh_token": "r"}), t0.Add(24 * time.Hour), nil},
		{"no access_token", body(map[string]any{"expires_in": 86400, "refresh_token": "r"}), time.Time{}, nil},
		{"no refresh_token", body(map[string]any{"expires_in": 86400, "access_token": "a"}), time.Time{}, nil},
		{"not JSON", `{"access_token":`, time.Time{}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, nil)
			rt := h.fake.IssueRefreshToken()
			h.fake.FailNext(1, 200, tc.body, nil)
			tok, err := h.client.Refresh(context.Background(), request(), &provider.Token{RefreshToken: rt, Refreshable: true})
			if tc.want.IsZero() {
				pe := asProviderError(t, err)
				if pe.Kind != provider.KindTransient || pe.Reason != "MalformedResponse" {
					t.Fatalf("got %+v", pe)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tok.ExpiresAt.Equal(tc.want) || !tok.Expires {
				t.Errorf("ExpiresAt %v, want %v", tok.ExpiresAt, tc.want)
			}
			if tok.RefreshToken != "r" {
				t.Errorf("refresh token %q, want the answer's", tok.RefreshToken)
			}
			if !slices.Equal(tok.Scopes, tc.scopes) {
				t.Errorf("scopes %v, want %v", tok.Scopes, tc.scopes)
			}
		})
	}
}

func TestServerTimeFromFake(t *testing.T) {
	for _, include := range []bool{false, true} {
		h := newHarness(t, func(o *amocrmfake.Options) { o.IncludeServerTime = include; o.AccessTokenTTL = 3 * time.Hour }, nil)
		tok := h.bootstrap()
		if !tok.ExpiresAt.Equal(t0.Add(3*time.Hour)) || tok.RefreshToken != h.fake.CurrentRefreshToken() {
			t.Errorf("server_time=%v: expires %v", include, tok.ExpiresAt)
		}
	}
}

func TestLongLivedBootstrap(t *testing.T) {
	h := newHarness(t, nil, nil)
	exp := t0.Add(2 * 365 * 24 * time.Hour).Truncate(time.Second)
	ll := h.fake.IssueLongLivedToken(exp)
	req := provider.Request{Spec: spec(), Credentials: provider.Credentials{"access_token": []byte(ll)}}
	if g := h.client.BootstrapGrants(req.Credentials); !slices.Equal(g, []string{"access_token"}) {
		t.Fatalf("grants %v", g)
	}
	if err := h.client.ValidateCredentials(req.Credentials, nil); err != nil {
		t.Fatalf("long-lived credentials rejected: %v", err)
	}
	tok, err := h.client.Bootstrap(context.Background(), req, GrantAccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Type != TypeLongLived || tok.Refreshable || !tok.Expires || !tok.ExpiresAt.Equal(exp) || !tok.ObtainedAt.Equal(t0) ||
		tok.AccessToken != ll || tok.RefreshToken != "" {
		t.Fatalf("token %+v", tok)
	}
	if h.fake.Calls("account") != 1 || h.fake.Calls("token") != 0 {
		t.Fatalf("account=%d token=%d", h.fake.Calls("account"), h.fake.Calls("token"))
	}
	if r := h.lastRequest(); r.method != http.MethodGet || r.path != "/api/v4/account" {
		t.Fatalf("probe request %s %s", r.method, r.path)
	}

	bad := []struct {
		name, token string
		kind        provider.Kind
		reason      string
	}{
		{"not a JWT", "a-plain-opaque-token-value", provider.KindConfiguration, "InvalidLongLivedToken"},
		{"JWT without exp", makeJWT(map[string]any{"iat": t0.Unix()}), provider.KindConfiguration, "InvalidLongLivedToken"},
		{"payload not base64", "aaa.%%%.bbb", provider.KindConfiguration, "InvalidLongLivedToken"},
		{"expired", makeJWT(map[string]any{"exp": t0.Add(-time.Hour).Unix()}), provider.KindReauthorize, "LongLivedTokenExpired"},
		{"unknown to AmoCRM", makeJWT(map[string]any{"exp": t0.Add(time.Hour).Unix()}), provider.KindReauthorize, "AccessTokenRejected"},
	}
	for _, tc := range bad {
		before := h.fake.Calls("account")
		_, err := h.client.Bootstrap(context.Background(), provider.Request{Spec: spec(), Credentials: provider.Credentials{"access_token": []byte(tc.token)}}, GrantAccessToken)
		pe := asProviderError(t, err)
		if pe.Kind != tc.kind || pe.Reason != tc.reason {
			t.Errorf("%s: got %v/%s (%v)", tc.name, pe.Kind, pe.Reason, pe)
		}
		if tc.kind == provider.KindConfiguration && (h.fake.Calls("account") != before || !strings.Contains(pe.Message, "long-lived token")) {
			t.Errorf("%s: called AmoCRM or unclear message: %s", tc.name, pe.Message)
		}
	}
}

func TestProbe(t *testing.T) {
	for _, revoke := range []bool{false, true} {
		h := newHarness(t, func(o *amocrmfake.Options) { o.RevokeOldAccessTokenOnRefresh = revoke }, nil)
		tok := h.bootstrap()
		got, err := h.client.Probe(context.Background(), request(), tok)
		if err != nil {
			t.Fatal(err)
		}
		if got == tok || got.AccessToken != tok.AccessToken || !got.ExpiresAt.Equal(tok.ExpiresAt) || got.Type != tok.Type {
			t.Fatalf("probe must return an unchanged copy: %+v", got)
		}
		if r := h.lastRequest(); r.method != http.MethodGet || r.path != "/api/v4/account" {
			t.Fatalf("probe request %s %s", r.method, r.path)
		}
		next, err := h.client.Refresh(context.Background(), request(), tok)
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.client.Probe(context.Background(), request(), tok)
		if revoke {
			pe := asProviderError(t, err)
			if pe.Kind != provider.KindTokenRejected || pe.Reason != "AccessTokenRejected" || pe.HTTPStatus != 401 || pe.Op != "account" {
				t.Fatalf("old token after refresh: %+v", pe)
			}
		} else if err != nil {
			t.Fatalf("old token should still work: %v", err)
		}
		if _, err := h.client.Probe(context.Background(), request(), next); err != nil {
			t.Fatalf("new token: %v", err)
		}
		h.clk.Step(24*time.Hour + time.Second)
		pe := asProviderError(t, func() error { _, err := h.client.Probe(context.Background(), request(), next); return err }())
		if pe.Kind != provider.KindTokenRejected {
			t.Fatalf("expired token: %+v", pe)
		}
	}
}

func TestProbeStatuses(t *testing.T) {
	cases := []struct {
		status int
		body   string
		kind   provider.Kind
		reason string
	}{
		{401, `{"title":"Unauthorized","type":"https://httpstatus.es/401","status":401,"detail":"x"}`, provider.KindTokenRejected, "AccessTokenRejected"},
		{429, `{}`, provider.KindThrottled, "RateLimited"},
		{403, amocrmfake.BlockedBody, provider.KindBlocked, "ProviderBlocked"},
		{500, "internal", provider.KindTransient, "ProviderUnavailable"},
		{503, "", provider.KindTransient, "ProviderUnavailable"},
	}
	h := newHarness(t, nil, nil)
	tok := h.bootstrap()
	for _, tc := range cases {
		h.fake.FailAccountNext(1, tc.status, tc.body)
		_, err := h.client.Probe(context.Background(), request(), tok)
		pe := asProviderError(t, err)
		if pe.Kind != tc.kind || pe.Reason != tc.reason || pe.HTTPStatus != tc.status {
			t.Errorf("%d: got %v/%s/%d", tc.status, pe.Kind, pe.Reason, pe.HTTPStatus)
		}
	}
	if _, err := h.client.Probe(context.Background(), request(), tok); err != nil {
		t.Fatalf("after failures: %v", err)
	}
	obs := h.obs[len(h.obs)-1]
	if obs != (observation{"AmoCRM", "account", 200}) {
		t.Fatalf("observation %v", obs)
	}
}

func TestDefaultBaseURLUsesDomain(t *testing.T) {
	var mu sync.Mutex
	var urls []string
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		urls = append(urls, r.URL.String())
		mu.Unlock()
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(`{"id":1}`)), Header: http.Header{}, Request: r}, nil
	})
	c := New(Options{HTTPClient: &http.Client{Transport: rt}, Clock: testingclock.NewFakeClock(t0)})
	if _, err := c.Probe(context.Background(), request(), &provider.Token{AccessToken: "x"}); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Refresh(context.Background(), request(), &provider.Token{RefreshToken: "y"})
	want := []string{"https://example.amocrm.ru/api/v4/account", "https://example.amocrm.ru/oauth2/access_token"}
	if !slices.Equal(urls, want) {
		t.Fatalf("urls %v, want %v", urls, want)
	}
	req := request()
	req.Spec.AmoCRM.Domain = "evil.example/path?x="
	pe := asProviderError(t, func() error {
		_, err := c.Probe(context.Background(), req, &provider.Token{AccessToken: "x"})
		return err
	}())
	if pe.Kind != provider.KindConfiguration || len(urls) != 2 {
		t.Fatalf("bad domain: %+v, %d calls", pe, len(urls))
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestRedirectsAreNotFollowed(t *testing.T) {
	var hits int
	var mu sync.Mutex
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
	}))
	defer other.Close()
	redir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redir.Close()
	// Even a client that is told to follow redirects does not.
	hc := redir.Client()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return nil }
	c := New(Options{BaseURL: redir.URL, HTTPClient: hc})
	_, err := c.Refresh(context.Background(), request(), &provider.Token{RefreshToken: "rt-value"})
	pe := asProviderError(t, err)
	if pe.Kind != provider.KindTransient || pe.Reason != "UnexpectedRedirect" || pe.HTTPStatus != http.StatusTemporaryRedirect ||
		strings.Contains(pe.Error(), other.URL) {
		t.Fatalf("got %+v", pe)
	}
	_, err = c.Probe(context.Background(), request(), &provider.Token{AccessToken: "at-value"})
	if pe := asProviderError(t, err); pe.Reason != "UnexpectedRedirect" {
		t.Fatalf("probe: got %+v", pe)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 0 {
		t.Fatal("the redirect was followed: the POST body went to another host")
	}
}

func TestBootstrapGrants(t *testing.T) {
	c := New(Options{})
	cases := []struct {
		creds map[string]string
		want  []string
	}{
		{map[string]string{"authorization_code": "c", "refresh_token": "r", "access_token": "a"}, []string{"authorization_code", "refresh_token"}},
		{map[string]string{"refresh_token": "r", "access_token": "a"}, []string{"refresh_token"}},
		{map[string]string{"authorization_code": "c"}, []string{"authorization_code"}},
		{map[string]string{"access_token": "a"}, []string{"access_token"}},
		{map[string]string{"access_token": "  \n"}, nil},
		{map[string]string{"client_id": "x"}, nil},
	}
	for _, tc := range cases {
		creds := provider.Credentials{}
		for k, v := range tc.creds {
			creds[k] = []byte(v)
		}
		if got := c.BootstrapGrants(creds); !slices.Equal(got, tc.want) {
			t.Errorf("%v: got %v, want %v", tc.creds, got, tc.want)
		}
	}
}

func TestValidateCredentials(t *testing.T) {
	c := New(Options{})
	const missingKey, authorize = "CredentialsKeyMissing", provider.ReasonAuthorizationRequired
	cases := []struct {
		name   string
		creds  map[string]string
		stored *provider.Token
		reason string   // "": valid
		named  []string // keys the message names
	}{
		{"oauth with refresh token", map[string]string{"client_id": "i", "client_secret": "s", "refresh_token": "r"}, nil, "", nil},
		{"oauth with code", map[string]string{"client_id": "i", "client_secret": "s", "authorization_code": "c"}, nil, "", nil},
		{"long-lived alone", map[string]string{"access_token": "a"}, nil, "", nil},
		{"oauth plus access token", map[string]string{"client_id": "i", "client_secret": "s", "refresh_token": "r", "access_token": "a"}, nil, "", nil},
		{"no client_secret", map[string]string{"client_id": "i", "refresh_token": "r"}, nil, missingKey, []string{"client_secret"}},
		{"no client", map[string]string{"authorization_code": "c", "access_token": "a"}, nil, missingKey, []string{"client_id", "client_secret"}},
		{"blank client_id", map[string]string{"client_id": " ", "client_secret": "s", "refresh_token": "r"}, nil, missingKey, []string{"client_id"}},
		{"nothing", map[string]string{}, nil, missingKey, []string{"refresh_token", "authorization_code", "access_token", "client_id", "client_secret"}},
		{"client_id only", map[string]string{"client_id": "i"}, nil, missingKey, []string{"client_secret", "authorization_code"}},
		// The integration is set up and only its authorization is missing.
		{"client only", map[string]string{"client_id": "i", "client_secret": "s"}, nil, authorize, []string{"kubectl tokenkeeper authorize", "authorization_code", "refresh_token", "access_token"}},
		{"client and blank grants", map[string]string{"client_id": "i", "client_secret": "s", "authorization_code": " \n", "refresh_token": ""}, nil, authorize, []string{"authorization_code"}},
		// A stored pair needs only the client keys; a stored long-lived token nothing.
		{"stored pair, client only", map[string]string{"client_id": "i", "client_secret": "s"}, &provider.Token{Refreshable: true}, "", nil},
		{"stored pair, no client", map[string]string{}, &provider.Token{Refreshable: true}, missingKey, []string{"client_id", "client_secret"}},
		{"stored long-lived, nothing", map[string]string{}, &provider.Token{}, "", nil},
	}
	for _, tc := range cases {
		creds := provider.Credentials{}
		for k, v := range tc.creds {
			creds[k] = []byte(v)
		}
		err := c.ValidateCredentials(creds, tc.stored)
		if tc.reason == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		pe := asProviderError(t, err)
		if pe.Kind != provider.KindConfiguration || pe.Reason != tc.reason {
			t.Errorf("%s: got %v/%s, want Configuration/%s", tc.name, pe.Kind, pe.Reason, tc.reason)
		}
		for _, k := range tc.named {
			if !strings.Contains(pe.Message, k) {
				t.Errorf("%s: message %q does not name %s", tc.name, pe.Message, k)
			}
		}
		for k, v := range tc.creds {
			if len(v) > 1 && strings.Contains(pe.Message, v) {
				t.Errorf("%s: message holds the value of %s", tc.name, k)
			}
		}
	}
	// A refresh needs only the client credentials.
	h := newHarness(t, nil, nil)
	_, err := h.client.Refresh(context.Background(), provider.Request{Spec: spec(), Credentials: provider.Credentials{"client_id": []byte(testClientID)}}, &provider.Token{RefreshToken: h.fake.IssueRefreshToken()})
	if pe := asProviderError(t, err); pe.Reason != "CredentialsKeyMissing" || !strings.Contains(pe.Message, "client_secret") || h.fake.Calls("token") != 0 {
		t.Fatalf("refresh without client_secret: %+v", pe)
	}
}

func TestRequestValidation(t *testing.T) {
	h := newHarness(t, nil, nil)
	noSpec := request()
	noSpec.Spec.AmoCRM = nil
	noRedirect := request()
	noRedirect.Spec.AmoCRM.RedirectURI = ""
	cur := &provider.Token{RefreshToken: "r", AccessToken: "a"}
	cases := []struct {
		name   string
		err    error
		kind   provider.Kind
		reason string
	}{
		{"no spec.amocrm", func() error { _, err := h.client.Refresh(context.Background(), noSpec, cur); return err }(), provider.KindConfiguration, "AmoCRMSpecMissing"},
		{"no redirectURI", func() error { _, err := h.client.Refresh(context.Background(), noRedirect, cur); return err }(), provider.KindConfiguration, "RedirectURIMissing"},
		{"no refresh token", func() error {
			_, err := h.client.Refresh(context.Background(), request(), &provider.Token{AccessToken: "a"})
			return err
		}(), provider.KindReauthorize, "RefreshTokenMissing"},
		{"unknown grant", func() error { _, err := h.client.Bootstrap(context.Background(), request(), "password"); return err }(), provider.KindConfiguration, "UnsupportedGrant"},
		{"grant key absent", func() error {
			_, err := h.client.Bootstrap(context.Background(), request(), GrantAuthorizationCode)
			return err
		}(), provider.KindConfiguration, "CredentialsKeyMissing"},
	}
	for _, tc := range cases {
		pe := asProviderError(t, tc.err)
		if pe.Kind != tc.kind || pe.Reason != tc.reason {
			t.Errorf("%s: got %v/%s", tc.name, pe.Kind, pe.Reason)
		}
	}
	if n := len(h.requests()); n != 0 {
		t.Fatalf("%d requests sent for invalid input", n)
	}
}

func TestRateLimitPerDomain(t *testing.T) {
	const rps = 10
	h := newHarness(t, nil, func(o *Options) { o.RequestsPerSecond = rps })
	ll := h.fake.IssueLongLivedToken(t0.Add(time.Hour))
	tok := &provider.Token{AccessToken: ll}
	other := request()
	other.Spec.AmoCRM.Domain = "other.amocrm.ru"

	// 8 concurrent requests to one account reserve slots up to 700 ms ahead.
	const n = 15
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := h.client.Probe(context.Background(), request(), tok)
			errs <- err
		}()
	}
	time.Sleep(30 * time.Millisecond)
	// Another account is not delayed by them.
	bStart := time.Now()
	if _, err := h.client.Probe(context.Background(), other, tok); err != nil {
		t.Fatal(err)
	}
	bElapsed := time.Since(bStart)
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if min := time.Duration(n-1) * time.Second / rps; elapsed < min-10*time.Millisecond {
		t.Errorf("%d requests to one account took %v, want at least %v", n, elapsed, min)
	}
	// Queued behind the first account it would wait about (n-1)/rps = 1.4s;
	// half of that leaves room for a loaded 2-core CI machine and still tells
	// the two cases apart.
	if bElapsed > time.Duration(n-1)*time.Second/rps/2 {
		t.Errorf("a request to another account waited %v", bElapsed)
	}
	if h.fake.Calls("account") != n+1 {
		t.Errorf("account calls %d", h.fake.Calls("account"))
	}
}

func TestDefaultRateLimitIsSevenPerSecond(t *testing.T) {
	h := newHarness(t, nil, func(o *Options) { o.RequestsPerSecond = 0 })
	tok := &provider.Token{AccessToken: h.fake.IssueLongLivedToken(t0.Add(time.Hour))}
	start := time.Now()
	for range 8 {
		if _, err := h.client.Probe(context.Background(), request(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if elapsed := time.Since(start); elapsed < time.Second-10*time.Millisecond {
		t.Fatalf("8 requests at the default limit took %v, want at least 1s", elapsed)
	}
}

func TestRateLimitWaitRespectsContext(t *testing.T) {
	h := newHarness(t, nil, func(o *Options) { o.RequestsPerSecond = 0.5 })
	tok := &provider.Token{AccessToken: h.fake.IssueLongLivedToken(t0.Add(time.Hour))}
	if _, err := h.client.Probe(context.Background(), request(), tok); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.client.Probe(ctx, request(), tok)
	pe := asProviderError(t, err)
	if pe.Kind != provider.KindTransient || time.Since(start) > time.Second || h.fake.Calls("account") != 1 {
		t.Fatalf("got %+v after %v, %d calls", pe, time.Since(start), h.fake.Calls("account"))
	}
}

// TestConsumes: refresh tokens and codes are single-use; adopting a
// long-lived token uses nothing up.
func TestConsumes(t *testing.T) {
	c := New(Options{})
	for grant, want := range map[string]bool{"": true, GrantRefreshToken: true, GrantAuthorizationCode: true, GrantAccessToken: false} {
		if got := c.Consumes(grant); got != want {
			t.Errorf("Consumes(%q) = %v, want %v", grant, got, want)
		}
	}
}
