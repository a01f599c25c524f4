package amocrmfake

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"
)

const (
	clientID     = "b0c8e9a2-6d1f-4c3e-9a7b-2f4e6d8c0a1b"
	clientSecret = "cs-Xq7WnV3pL9kR2tY6uH8jM4bN1cZ5dF0gS7aE3rT9yU2iO6pQ"
	redirectURI  = "https://example.com/amocrm/callback?a=1&b=2"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type env struct {
	fake *Server
	srv  *httptest.Server
	clk  *testingclock.FakeClock
}

func newEnv(t *testing.T, mod func(*Options)) *env {
	t.Helper()
	clk := testingclock.NewFakeClock(t0)
	opts := Options{ClientID: clientID, ClientSecret: clientSecret, RedirectURI: redirectURI, Clock: clk}
	if mod != nil {
		mod(&opts)
	}
	f := New(opts)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return &env{fake: f, srv: srv, clk: clk}
}

type answer struct {
	status int
	header http.Header
	raw    string
	json   map[string]any
}

func (e *env) postForm(t *testing.T, v url.Values) answer {
	t.Helper()
	resp, err := http.PostForm(e.srv.URL+TokenPath, v)
	if err != nil {
		t.Fatal(err)
	}
	return readAnswer(t, resp)
}

func (e *env) postJSON(t *testing.T, v map[string]string) answer {
	t.Helper()
	b, _ := json.Marshal(v)
	resp, err := http.Post(e.srv.URL+TokenPath, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return readAnswer(t, resp)
}

func (e *env) account(t *testing.T, token string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+AccountPath, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return readAnswer(t, resp)
}

func readAnswer(t *testing.T, resp *http.Response) answer {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	_ = json.Unmarshal(b, &a.json)
	return a
}

func refreshParams(rt string) map[string]string {
	return map[string]string{
		"client_id": clientID, "client_secret": clientSecret, "grant_type": "refresh_token",
		"refresh_token": rt, "redirect_uri": redirectURI,
	}
}

func codeParams(code string) map[string]string {
	return map[string]string{
		"client_id": clientID, "client_secret": clientSecret, "grant_type": "authorization_code",
		"code": code, "redirect_uri": redirectURI,
	}
}

func toValues(m map[string]string) url.Values {
	v := url.Values{}
	for k, s := range m {
		v.Set(k, s)
	}
	return v
}

func decodePart(t *testing.T, part string) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatalf("JWT part is not base64url: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("JWT part is not JSON: %v", err)
	}
	return m
}

func TestFormAndJSONBodies(t *testing.T) {
	for _, form := range []bool{true, false} {
		name := "json"
		if form {
			name = "form"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			code := e.fake.IssueAuthorizationCode()
			var a answer
			if form {
				a = e.postForm(t, toValues(codeParams(code)))
			} else {
				a = e.postJSON(t, codeParams(code))
			}
			if a.status != http.StatusOK {
				t.Fatalf("status %d, body %s", a.status, a.raw)
			}
			if a.json["token_type"] != "Bearer" || a.json["expires_in"] != float64(86400) {
				t.Fatalf("unexpected body %s", a.raw)
			}
			if _, ok := a.json["server_time"]; ok {
				t.Fatalf("server_time present without IncludeServerTime: %s", a.raw)
			}
			at, _ := a.json["access_token"].(string)
			rt, _ := a.json["refresh_token"].(string)
			if at != e.fake.CurrentAccessToken() || rt != e.fake.CurrentRefreshToken() || at == "" || rt == "" {
				t.Fatalf("tokens do not match Current*: %s", a.raw)
			}
			// Refresh with a form body too: the rotated token works.
			var b answer
			if form {
				b = e.postForm(t, toValues(refreshParams(rt)))
			} else {
				b = e.postJSON(t, refreshParams(rt))
			}
			if b.status != http.StatusOK {
				t.Fatalf("refresh: status %d, body %s", b.status, b.raw)
			}
			if e.fake.Calls("authorization_code") != 1 || e.fake.Calls("refresh_token") != 1 || e.fake.Calls("token") != 2 {
				t.Fatalf("calls: code=%d refresh=%d token=%d", e.fake.Calls("authorization_code"), e.fake.Calls("refresh_token"), e.fake.Calls("token"))
			}
		})
	}
}

func TestAccessTokenIsJWT(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AccessTokenTTL = 2 * time.Hour; o.IncludeServerTime = true })
	a := e.postJSON(t, codeParams(e.fake.IssueAuthorizationCode()))
	if a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.raw)
	}
	if a.json["expires_in"] != float64(7200) || a.json["server_time"] != float64(t0.Unix()) {
		t.Fatalf("expires_in/server_time wrong: %s", a.raw)
	}
	parts := strings.Split(a.json["access_token"].(string), ".")
	if len(parts) != 3 {
		t.Fatalf("access token has %d parts", len(parts))
	}
	h := decodePart(t, parts[0])
	if h["alg"] != "RS256" || h["typ"] != "JWT" {
		t.Fatalf("header %v", h)
	}
	c := decodePart(t, parts[1])
	if c["exp"] != float64(t0.Add(2*time.Hour).Unix()) || c["iat"] != float64(t0.Unix()) {
		t.Fatalf("exp/iat wrong: %v", c)
	}
	for _, k := range []string{"account_id", "base_domain", "api_domain", "scopes", "jti"} {
		if _, ok := c[k]; !ok {
			t.Errorf("claim %s missing", k)
		}
	}
	// Each access token is unique (random jti).
	b := e.postJSON(t, codeParams(e.fake.IssueAuthorizationCode()))
	c2 := decodePart(t, strings.Split(b.json["access_token"].(string), ".")[1])
	if c2["jti"] == c["jti"] || b.json["access_token"] == a.json["access_token"] {
		t.Fatal("two access tokens share a jti")
	}
	if rt := a.json["refresh_token"].(string); len(rt) < 64 {
		t.Fatalf("refresh token too short: %d", len(rt))
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	for _, used := range []int{400, 401} {
		e := newEnv(t, func(o *Options) { o.UsedTokenStatus = used })
		rt := e.fake.IssueRefreshToken()
		if a := e.postJSON(t, refreshParams(rt)); a.status != 200 {
			t.Fatalf("first refresh: %d %s", a.status, a.raw)
		}
		code := e.fake.IssueAuthorizationCode()
		if a := e.postJSON(t, codeParams(code)); a.status != 200 {
			t.Fatalf("code: %d %s", a.status, a.raw)
		}
		staleCode := e.fake.IssueAuthorizationCode()
		cases := []struct {
			name   string
			params map[string]string
			prep   func()
			status int
			hint   string
			title  string
		}{
			{"consumed refresh token", refreshParams(rt), nil, used, HintTokenRevoked, TitleBadRequest},
			{"unknown refresh token", refreshParams("def50200deadbeef"), nil, used, HintCannotDecrypt, TitleBadRequest},
			{"used code", codeParams(code), nil, 400, HintCodeRevoked, TitleBadRequest},
			{"expired code", codeParams(staleCode), func() { e.clk.Step(21 * time.Minute) }, 400, HintCodeExpired, TitleBadRequest},
			{"unknown client", func() map[string]string {
				p := refreshParams(e.fake.CurrentRefreshToken())
				p["client_id"] = "nope"
				return p
			}(), nil, 401, HintCheckClientID, TitleBadRequest},
			{"bad secret", func() map[string]string {
				p := refreshParams(e.fake.CurrentRefreshToken())
				p["client_secret"] = "nope"
				return p
			}(), nil, 401, "", TitleBadClient},
			{"missing redirect", func() map[string]string {
				p := refreshParams(e.fake.CurrentRefreshToken())
				delete(p, "redirect_uri")
				return p
			}(), nil, 401, "", TitleBadClient},
			{"other redirect", func() map[string]string {
				p := refreshParams(e.fake.CurrentRefreshToken())
				p["redirect_uri"] = redirectURI + "/"
				return p
			}(), nil, 401, "", TitleBadClient},
		}
		for _, tc := range cases {
			if tc.prep != nil {
				tc.prep()
			}
			a := e.postJSON(t, tc.params)
			if a.status != tc.status {
				t.Errorf("used=%d %s: status %d, want %d (%s)", used, tc.name, a.status, tc.status, a.raw)
			}
			hint, _ := a.json["hint"].(string)
			if hint != tc.hint || a.json["title"] != tc.title || a.json["type"] != ProblemType || a.json["status"] != float64(tc.status) {
				t.Errorf("used=%d %s: body %s", used, tc.name, a.raw)
			}
			if _, ok := a.json["error"]; ok {
				t.Errorf("%s: problem JSON must not have an RFC error field", tc.name)
			}
		}
		if e.fake.ReusedRefreshTokens() != 1 {
			t.Errorf("used=%d: ReusedRefreshTokens = %d, want 1", used, e.fake.ReusedRefreshTokens())
		}
		// Failed requests consumed nothing: the current token still works.
		if a := e.postJSON(t, refreshParams(e.fake.CurrentRefreshToken())); a.status != 200 {
			t.Errorf("used=%d: current refresh token no longer works: %d %s", used, a.status, a.raw)
		}
	}
}

func TestRefreshTokenExpires(t *testing.T) {
	e := newEnv(t, nil)
	rt := e.fake.IssueRefreshToken()
	e.clk.Step(RefreshTokenTTL + time.Second)
	if e.fake.CurrentRefreshToken() != "" {
		t.Fatal("expired refresh token still current")
	}
	a := e.postJSON(t, refreshParams(rt))
	if a.status != 401 || a.json["hint"] != HintTokenExpired {
		t.Fatalf("got %d %s", a.status, a.raw)
	}
}

func TestAccountEndpoint(t *testing.T) {
	for _, revoke := range []bool{false, true} {
		e := newEnv(t, func(o *Options) { o.RevokeOldAccessTokenOnRefresh = revoke })
		a := e.postJSON(t, codeParams(e.fake.IssueAuthorizationCode()))
		at1, rt1 := a.json["access_token"].(string), a.json["refresh_token"].(string)
		if r := e.account(t, at1); r.status != 200 || r.json["id"] != float64(AccountID) || r.json["subdomain"] != Subdomain {
			t.Fatalf("account: %d %s", r.status, r.raw)
		}
		b := e.postJSON(t, refreshParams(rt1))
		at2 := b.json["access_token"].(string)
		r := e.account(t, at1)
		if want := map[bool]int{false: 200, true: 401}[revoke]; r.status != want {
			t.Errorf("revoke=%v: old token got %d, want %d", revoke, r.status, want)
		}
		if r := e.account(t, at2); r.status != 200 {
			t.Errorf("revoke=%v: new token got %d", revoke, r.status)
		}
		e.clk.Step(24 * time.Hour)
		r = e.account(t, at2)
		if r.status != 401 || r.json["title"] != "Unauthorized" || r.json["type"] != "https://httpstatus.es/401" || r.json["status"] != float64(401) {
			t.Errorf("expired token: %d %s", r.status, r.raw)
		}
		if r := e.account(t, "garbage"); r.status != 401 {
			t.Errorf("garbage token: %d", r.status)
		}
		if e.fake.Calls("account") != 5 {
			t.Errorf("account calls = %d, want 5", e.fake.Calls("account"))
		}
	}
}

func TestLongLivedToken(t *testing.T) {
	e := newEnv(t, nil)
	exp := t0.Add(365 * 24 * time.Hour).Truncate(time.Second)
	tok := e.fake.IssueLongLivedToken(exp)
	c := decodePart(t, strings.Split(tok, ".")[1])
	if c["exp"] != float64(exp.Unix()) {
		t.Fatalf("exp claim %v", c["exp"])
	}
	if r := e.account(t, tok); r.status != 200 {
		t.Fatalf("long-lived token rejected: %d", r.status)
	}
	if e.fake.CurrentAccessToken() != "" || e.fake.CurrentRefreshToken() != "" {
		t.Fatal("a long-lived token must not change the token endpoint's current tokens")
	}
	e.clk.SetTime(exp)
	if r := e.account(t, tok); r.status != 401 {
		t.Fatalf("expired long-lived token accepted: %d", r.status)
	}
}

func TestRevokeAll(t *testing.T) {
	e := newEnv(t, nil)
	a := e.postJSON(t, codeParams(e.fake.IssueAuthorizationCode()))
	at, rt := a.json["access_token"].(string), a.json["refresh_token"].(string)
	e.fake.RevokeAll()
	if e.fake.CurrentRefreshToken() != "" {
		t.Fatal("CurrentRefreshToken after RevokeAll")
	}
	if r := e.account(t, at); r.status != 401 {
		t.Fatalf("revoked access token: %d", r.status)
	}
	if r := e.postJSON(t, refreshParams(rt)); r.status != 401 || r.json["hint"] != HintTokenRevoked {
		t.Fatalf("revoked refresh token: %d %s", r.status, r.raw)
	}
	if e.fake.ReusedRefreshTokens() != 0 {
		t.Fatal("a revoked (not consumed) token counted as reused")
	}
	// A human authorizes again.
	if r := e.postJSON(t, refreshParams(e.fake.IssueRefreshToken())); r.status != 200 {
		t.Fatalf("new refresh token after RevokeAll: %d", r.status)
	}
}

func TestFailNextBlockedAndSecrets(t *testing.T) {
	e := newEnv(t, nil)
	rt := e.fake.IssueRefreshToken()
	e.fake.FailNext(2, http.StatusTooManyRequests, `{"title":"Too Many Requests"}`, http.Header{"Retry-After": {"7"}})
	for i := 0; i < 2; i++ {
		a := e.postJSON(t, refreshParams(rt))
		if a.status != 429 || a.header.Get("Retry-After") != "7" || a.header.Get("Content-Type") != "application/json" {
			t.Fatalf("FailNext #%d: %d %v", i, a.status, a.header)
		}
	}
	a := e.postJSON(t, refreshParams(rt)) // not consumed by the failures
	if a.status != 200 {
		t.Fatalf("after FailNext: %d %s", a.status, a.raw)
	}
	at := a.json["access_token"].(string)
	e.fake.FailAccountNext(1, http.StatusInternalServerError, "oops")
	if r := e.account(t, at); r.status != 500 || r.raw != "oops" {
		t.Fatalf("FailAccountNext: %d %q", r.status, r.raw)
	}
	if r := e.account(t, at); r.status != 200 {
		t.Fatalf("after FailAccountNext: %d", r.status)
	}
	e.fake.SetBlocked(true)
	if r := e.account(t, at); r.status != 403 || !strings.Contains(r.raw, "nginx") {
		t.Fatalf("blocked account: %d %q", r.status, r.raw)
	}
	if r := e.postJSON(t, refreshParams(e.fake.CurrentRefreshToken())); r.status != 403 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
		t.Fatalf("blocked token: %d", r.status)
	}
	e.fake.SetBlocked(false)
	if e.fake.CurrentRefreshToken() == "" {
		t.Fatal("blocked request consumed the refresh token")
	}
	if e.fake.Calls("token") != 4 || e.fake.Calls("refresh_token") != 4 || e.fake.Calls("account") != 3 {
		t.Fatalf("calls token=%d refresh=%d account=%d", e.fake.Calls("token"), e.fake.Calls("refresh_token"), e.fake.Calls("account"))
	}
	code := e.fake.IssueAuthorizationCode()
	ll := e.fake.IssueLongLivedToken(t0.Add(time.Hour))
	secrets := strings.Join(e.fake.Secrets(), "\n")
	for _, s := range []string{clientSecret, rt, at, e.fake.CurrentRefreshToken(), code, ll} {
		if !strings.Contains(secrets, s) {
			t.Errorf("Secrets() lacks a value it issued or knows (%d chars)", len(s))
		}
	}
}

// Refresh tokens are single-use even under concurrency: of many parallel
// exchanges of one token exactly one wins.
func TestConcurrentRefreshSingleUse(t *testing.T) {
	e := newEnv(t, nil)
	rt := e.fake.IssueRefreshToken()
	const n = 8
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = e.postJSON(t, refreshParams(rt)).status
		}()
	}
	wg.Wait()
	ok := 0
	for _, s := range statuses {
		if s == 200 {
			ok++
		}
	}
	if ok != 1 || e.fake.ReusedRefreshTokens() != n-1 {
		t.Fatalf("successes=%d reused=%d, want 1 and %d", ok, e.fake.ReusedRefreshTokens(), n-1)
	}
}

func (e *env) get(t *testing.T, host, path string, header map[string]string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return readAnswer(t, resp)
}

func TestMoveAccountAndSubdomainLookup(t *testing.T) {
	e := newEnv(t, nil)
	code := e.fake.IssueAuthorizationCode()
	first := e.postJSON(t, map[string]string{"client_id": clientID, "client_secret": clientSecret, "grant_type": "authorization_code", "code": code, "redirect_uri": redirectURI})
	rt, _ := first.json["refresh_token"].(string)
	at, _ := first.json["access_token"].(string)
	e.fake.MoveAccount("example.kommo.com", false)
	if e.fake.Domain() != "example.kommo.com" {
		t.Fatal(e.fake.Domain())
	}
	a := e.get(t, "example.amocrm.ru", AccountPath, map[string]string{"Authorization": "Bearer " + at})
	resp, _ := a.json["response"].(map[string]any)
	if a.status != 401 || resp == nil || !strings.Contains(resp["error"].(string), "another server") || resp["ip"] != "127.0.0.1" {
		t.Fatalf("old host: %d %s", a.status, a.raw)
	}
	if a := e.get(t, "example.kommo.com", AccountPath, map[string]string{"Authorization": "Bearer " + at}); a.status != 200 || a.json["subdomain"] != "example" {
		t.Fatalf("new host: %d %s", a.status, a.raw)
	}
	a = e.get(t, "api-b.amocrm.ru", SubdomainPath, map[string]string{"X-Refresh-Token": rt})
	if a.status != 200 || a.json["domain"] != "example.kommo.com" || a.json["subdomain"] != "example" || a.json["top_level_domain"] != "com" || num(a.json["id"]) != AccountID {
		t.Fatalf("subdomain lookup: %d %s", a.status, a.raw)
	}
	if e.fake.CurrentRefreshToken() != rt {
		t.Fatal("the lookup must not consume the refresh token")
	}
	if a := e.get(t, "", SubdomainPath, map[string]string{"X-Refresh-Token": "nope"}); a.status != 401 {
		t.Fatalf("lookup with an unknown refresh token: %d", a.status)
	}
	// Tokens issued after the move carry the new base domain.
	next := e.postJSON(t, refreshParams(rt))
	claims := jwtClaims(t, next.json["access_token"].(string))
	if claims["base_domain"] != "kommo.com" || claims["api_domain"] != "api-b.kommo.com" {
		t.Fatalf("claims after the move: %v", claims)
	}
	e2 := newEnv(t, nil)
	e2.fake.MoveAccount("renamed.amocrm.ru", true)
	a = e2.get(t, "example.amocrm.ru", TokenPath, nil)
	if resp, _ := a.json["response"].(map[string]any); a.status != 401 || resp["error_code"] != "101" {
		t.Fatalf("old host, not found: %d %s", a.status, a.raw)
	}
}

func num(v any) int64 {
	f, _ := v.(float64)
	return int64(f)
}

func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

func TestAccountErrorsAndAllowList(t *testing.T) {
	for _, shape := range []ErrorShape{ShapeResponse, ShapeProblem} {
		e := newEnv(t, func(o *Options) { o.ErrorShape = shape })
		tok := e.fake.IssueLongLivedToken(t0.Add(time.Hour))
		for _, code := range []string{ErrAccountNotFound, ErrAuthorization, ErrCaptcha, ErrUserDisabled} {
			e.fake.SetAccountError(code)
			a := e.account(t, tok)
			got := a.json["error_code"]
			if r, ok := a.json["response"].(map[string]any); ok {
				got = r["error_code"]
			}
			if a.status != 401 || got != code {
				t.Errorf("shape %d code %s: %d %s", shape, code, a.status, a.raw)
			}
		}
		e.fake.SetAccountError("")
		if a := e.account(t, tok); a.status != 200 {
			t.Fatalf("cleared: %d", a.status)
		}
		e.fake.SetIPAllowList(true)
		a := e.account(t, tok)
		got, ip := a.json["error_code"], a.json["ip"]
		if r, ok := a.json["response"].(map[string]any); ok {
			got, ip = r["error_code"], r["ip"]
		}
		if a.status != 403 || got != "113" || ip != "127.0.0.1" {
			t.Errorf("allow-list: %d %s", a.status, a.raw)
		}
		e.fake.SetIPAllowList(false)
	}
}

func TestRedirectMismatchHintSwitch(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.RedirectMismatch = RedirectMismatchHint })
	p := refreshParams(e.fake.IssueRefreshToken())
	p["redirect_uri"] = redirectURI + "/"
	if a := e.postJSON(t, p); a.status != 400 || a.json["hint"] != HintRedirectURI {
		t.Fatalf("hint switch: %d %s", a.status, a.raw)
	}
}
