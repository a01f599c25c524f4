package facebookfake_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

const (
	appID     = "634974688087057"
	appSecret = "00112233445566778899aabbccddeeff"
	day       = 24 * time.Hour
)

var t0 = time.Date(2026, time.August, 3, 10, 0, 0, 0, time.UTC)

type env struct {
	t    *testing.T
	clk  *testingclock.FakeClock
	fake *facebookfake.Server
	srv  *httptest.Server
}

func newEnv(t *testing.T, o facebookfake.Options) *env {
	t.Helper()
	clk := testingclock.NewFakeClock(t0)
	o.AppID, o.AppSecret, o.Clock = appID, appSecret, clk
	e := &env{t: t, clk: clk, fake: facebookfake.New(o)}
	e.srv = httptest.NewServer(e.fake)
	t.Cleanup(e.srv.Close)
	return e
}

type result struct {
	status int
	header http.Header
	body   string
	json   map[string]any
}

func (e *env) get(path string, q url.Values) result {
	e.t.Helper()
	resp, err := e.srv.Client().Get(e.srv.URL + path + "?" + q.Encode())
	if err != nil {
		e.t.Fatal(err)
	}
	return read(e.t, resp)
}

func read(t *testing.T, resp *http.Response) result {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := result{status: resp.StatusCode, header: resp.Header, body: string(b)}
	_ = json.Unmarshal(b, &r.json)
	return r
}

func exchangeQuery(tok string, refresh bool) url.Values {
	q := url.Values{"grant_type": {"fb_exchange_token"}, "client_id": {appID}, "client_secret": {appSecret}, "fb_exchange_token": {tok}}
	if refresh {
		q.Set("set_token_expires_in_60_days", "true")
	}
	return q
}

func (e *env) exchange(tok string, refresh bool) result {
	return e.get("/v26.0/oauth/access_token", exchangeQuery(tok, refresh))
}

func (e *env) debug(tok string) result {
	return e.get("/v26.0/debug_token", url.Values{"input_token": {tok}, "access_token": {appID + "|" + appSecret}})
}

func data(t *testing.T, r result) map[string]any {
	t.Helper()
	d, ok := r.json["data"].(map[string]any)
	if !ok {
		t.Fatalf("no data object in %s", r.body)
	}
	return d
}

func errObj(t *testing.T, r result) map[string]any {
	t.Helper()
	o, ok := r.json["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error envelope in %s", r.body)
	}
	return o
}

func num(v any) int64 {
	f, _ := v.(float64)
	return int64(f)
}

func TestExchangeShortLivedUserToken(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	short := e.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
	if len(short) < 100 {
		t.Errorf("token too short for leak tests: %d", len(short))
	}
	r := e.exchange(short, false)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	long, _ := r.json["access_token"].(string)
	if long == "" || long == short {
		t.Fatalf("no new token: %s", r.body)
	}
	if r.json["token_type"] != "bearer" || num(r.json["expires_in"]) != int64(60*day/time.Second) {
		t.Errorf("body %s", r.body)
	}
	if exp, ok := e.fake.TokenInfo(long); !ok || !exp.Equal(t0.Add(60*day)) {
		t.Errorf("TokenInfo = %v %v", exp, ok)
	}
	d := data(t, e.debug(long))
	if d["type"] != "USER" || d["is_valid"] != true || num(d["issued_at"]) != t0.Unix() ||
		num(d["expires_at"]) != t0.Add(60*day).Unix() || num(d["data_access_expires_at"]) != t0.Add(90*day).Unix() || d["app_id"] != appID {
		t.Errorf("debug_token of long-lived token: %v", d)
	}
	ds := data(t, e.debug(short))
	if _, has := ds["issued_at"]; has {
		t.Errorf("short-lived token has issued_at: %v", ds)
	}
	if num(ds["expires_at"]) != t0.Add(facebookfake.DefaultShortLivedTTL).Unix() {
		t.Errorf("short-lived expires_at %v", ds["expires_at"])
	}
	if got := e.fake.Calls("exchange"); got != 1 {
		t.Errorf("exchange calls %d", got)
	}
	if got := e.fake.Calls("debug_token"); got != 2 {
		t.Errorf("debug_token calls %d", got)
	}
}

func TestExchangeLongLivedUserTokenIsNotExtended(t *testing.T) {
	for _, refresh := range []bool{false, true} {
		e := newEnv(t, facebookfake.Options{})
		long := e.fake.IssueToken(facebookfake.KindUserLong, t0.Add(30*day))
		e.clk.Step(day)
		r := e.exchange(long, refresh)
		if r.status != 200 || r.json["access_token"] != long {
			t.Fatalf("refresh=%v: want the same token, got %s", refresh, r.body)
		}
		if got := num(r.json["expires_in"]); got != int64(29*day/time.Second) {
			t.Errorf("refresh=%v: expires_in %d, want the remaining lifetime", refresh, got)
		}
		if exp, _ := e.fake.TokenInfo(long); !exp.Equal(t0.Add(30 * day)) {
			t.Errorf("expiry moved to %v", exp)
		}
	}
}

func TestRefreshExpiringSystemUserToken(t *testing.T) {
	e := newEnv(t, facebookfake.Options{LongLivedTTL: 60 * day})
	old := e.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(5*day))
	e.clk.Step(2 * day)
	r := e.exchange(old, true)
	next, _ := r.json["access_token"].(string)
	if r.status != 200 || next == "" || next == old {
		t.Fatalf("want a new token: %s", r.body)
	}
	if num(r.json["expires_in"]) != int64(60*day/time.Second) {
		t.Errorf("expires_in %v", r.json["expires_in"])
	}
	if exp, _ := e.fake.TokenInfo(next); !exp.Equal(t0.Add(62 * day)) {
		t.Errorf("new expiry %v", exp)
	}
	d := data(t, e.debug(next))
	if d["type"] != "SYSTEM_USER" || num(d["data_access_expires_at"]) != 0 || num(d["expires_at"]) != t0.Add(62*day).Unix() {
		t.Errorf("debug of new token %v", d)
	}
	// The old token keeps working until its own expiry.
	if d := data(t, e.debug(old)); d["is_valid"] != true {
		t.Errorf("old token invalid too early: %v", d)
	}
	e.clk.Step(3 * day)
	if d := data(t, e.debug(old)); d["is_valid"] != false {
		t.Errorf("old token still valid after its expiry: %v", d)
	}
	if e.fake.Calls("refresh") != 1 || e.fake.Calls("exchange") != 0 {
		t.Errorf("calls: refresh %d exchange %d", e.fake.Calls("refresh"), e.fake.Calls("exchange"))
	}
}

func TestOmitExpiresIn(t *testing.T) {
	e := newEnv(t, facebookfake.Options{OmitExpiresIn: true, LongLivedTTL: 45 * day})
	short := e.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
	r := e.exchange(short, false)
	if _, has := r.json["expires_in"]; has || r.json["access_token"] == nil {
		t.Fatalf("body %s", r.body)
	}
	if d := data(t, e.debug(r.json["access_token"].(string))); num(d["expires_at"]) != t0.Add(45*day).Unix() {
		t.Errorf("debug expires_at %v", d["expires_at"])
	}
}

func TestExpiredTokenRecorded463(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	tok := e.fake.IssueToken(facebookfake.KindUserShort, t0.Add(time.Hour))
	e.clk.Step(2 * time.Hour)
	r := e.exchange(tok, false)
	if r.status != 400 || r.body != facebookfake.Recorded463Body {
		t.Errorf("status %d body %s", r.status, r.body)
	}
	if got := r.header.Get("WWW-Authenticate"); got != facebookfake.Recorded463WWWAuthenticate {
		t.Errorf("WWW-Authenticate %q", got)
	}
	d := data(t, e.debug(tok))
	de, _ := d["error"].(map[string]any)
	if d["is_valid"] != false || num(de["code"]) != 190 || num(de["subcode"]) != 463 || de["message"] == "" {
		t.Errorf("debug_token of expired token: %v", d)
	}
	if _, wrong := de["error_subcode"]; wrong {
		t.Errorf("data.error uses error_subcode, want subcode")
	}
}

func TestRevokeAndSetTokenError(t *testing.T) {
	for _, status := range []int{200, 400} {
		e := newEnv(t, facebookfake.Options{InvalidTokenStatus: status})
		revoked := e.fake.IssueToken(facebookfake.KindPage, time.Time{})
		e.fake.Revoke(revoked)
		r := e.debug(revoked)
		d := data(t, r)
		de, _ := d["error"].(map[string]any)
		if r.status != status || d["is_valid"] != false || num(de["code"]) != 190 || num(de["subcode"]) != 467 {
			t.Errorf("status %d: revoked token: %d %s", status, r.status, r.body)
		}
		r = e.debug("EAAunknown")
		if d := data(t, r); r.status != status || d["is_valid"] != false {
			t.Errorf("unknown token: %d %s", r.status, r.body)
		}

		tok := e.fake.IssueToken(facebookfake.KindUserLong, time.Time{})
		e.fake.SetTokenError(tok, 190, 493)
		r = e.exchange(tok, false)
		eo := errObj(t, r)
		if r.status != 400 || num(eo["code"]) != 190 || num(eo["error_subcode"]) != 493 || eo["type"] != "OAuthException" || eo["fbtrace_id"] == "" {
			t.Errorf("exchange with a set error: %d %s", r.status, r.body)
		}
		if d := data(t, e.debug(tok)); d["is_valid"] != false || num(d["error"].(map[string]any)["subcode"]) != 493 {
			t.Errorf("debug with a set error: %v", d)
		}
		e.fake.SetTokenError(tok, 0, 0)
		if d := data(t, e.debug(tok)); d["is_valid"] != true {
			t.Errorf("clearing the error did not work: %v", d)
		}
	}
}

func TestAppCredentialChecks(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	tok := e.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
	for _, tc := range []struct {
		mutate func(url.Values)
		code   int64
		msg    string
	}{
		{func(q url.Values) { q.Set("client_secret", "wrong") }, 1, "Error validating client secret."},
		// A wrong app ID is code 101, not code 1.
		{func(q url.Values) { q.Set("client_id", "42") }, 101, "Error validating application. Invalid application ID."},
	} {
		q := exchangeQuery(tok, false)
		tc.mutate(q)
		r := e.get("/v25.0/oauth/access_token", q)
		eo := errObj(t, r)
		if r.status != 400 || eo["message"] != tc.msg || num(eo["code"]) != tc.code || eo["type"] != "OAuthException" || eo["fbtrace_id"] == "" {
			t.Errorf("wrong app credentials: %d %s", r.status, r.body)
		}
	}
	r := e.get("/v26.0/debug_token", url.Values{"input_token": {tok}, "access_token": {appID + "|nope"}})
	if eo := errObj(t, r); r.status != 400 || num(eo["code"]) != 190 {
		t.Errorf("debug_token with a wrong app token: %d %s", r.status, r.body)
	}
	if v := e.fake.Versions(); !slices.Equal(v, []string{"v25.0", "v26.0"}) {
		t.Errorf("versions %v", v)
	}
}

func TestFailNextCallsAndPaths(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	tok := e.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, t0.Add(day))
	e.fake.FailNext("debug_token", 2, 503, "<html>busy</html>", http.Header{"Retry-After": {"9"}})
	for i := 0; i < 2; i++ {
		r := e.debug(tok)
		if r.status != 503 || r.body != "<html>busy</html>" || r.header.Get("Retry-After") != "9" {
			t.Errorf("failure %d: %d %s", i, r.status, r.body)
		}
	}
	r := e.debug(tok)
	d := data(t, r)
	if r.status != 200 || d["is_valid"] != true || num(d["expires_at"]) != 0 || d["type"] != "SYSTEM_USER" {
		t.Errorf("after failures: %d %s", r.status, r.body)
	}
	if e.fake.Calls("debug_token") != 3 {
		t.Errorf("calls %d", e.fake.Calls("debug_token"))
	}
	if exp, ok := e.fake.TokenInfo(tok); !ok || !exp.IsZero() {
		t.Errorf("non-expiring TokenInfo %v %v", exp, ok)
	}
	if _, ok := e.fake.TokenInfo("nope"); ok {
		t.Errorf("unknown token known")
	}

	r = e.get("/v26.0/me", nil)
	if eo := errObj(t, r); r.status != 400 || num(eo["code"]) != 2500 {
		t.Errorf("unknown path: %d %s", r.status, r.body)
	}
	// POST of the exchange is accepted; POST of debug_token is not.
	resp, err := e.srv.Client().PostForm(e.srv.URL+"/v26.0/oauth/access_token", exchangeQuery(tok, false))
	if err != nil {
		t.Fatal(err)
	}
	if r := read(t, resp); r.status != 200 || r.json["access_token"] != tok {
		t.Errorf("POST exchange: %d %s", r.status, r.body)
	}
	resp, err = e.srv.Client().PostForm(e.srv.URL+"/v26.0/debug_token", url.Values{"input_token": {tok}, "access_token": {appID + "|" + appSecret}})
	if err != nil {
		t.Fatal(err)
	}
	if r := read(t, resp); r.status != 400 {
		t.Errorf("POST debug_token: %d %s", r.status, r.body)
	}

	secrets := e.fake.Secrets()
	if !slices.Contains(secrets, tok) || !slices.Contains(secrets, appSecret) {
		t.Errorf("Secrets() = %d values, missing the token or the app secret", len(secrets))
	}
}

func TestConcurrentUse(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	const n = 16
	var wg sync.WaitGroup
	toks := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks[i] = e.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
			resp, err := e.srv.Client().Get(e.srv.URL + "/v26.0/oauth/access_token?" + exchangeQuery(toks[i], false).Encode())
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if got := e.fake.Calls("exchange"); got != n {
		t.Errorf("exchange calls %d, want %d", got, n)
	}
	seen := map[string]bool{}
	for _, s := range e.fake.Secrets() {
		if seen[s] {
			t.Errorf("duplicate token")
		}
		seen[s] = true
	}
	if len(seen) != 2*n+1 {
		t.Errorf("%d secrets, want %d", len(seen), 2*n+1)
	}
	if !strings.HasPrefix(toks[0], "EAA") {
		t.Errorf("token %q does not look like a Facebook token", toks[0][:8])
	}
}

// TestRequireAppSecret: with "Require App Secret", a call with a user token
// and no proof, or a wrong proof, is refused with code 100; the app-token
// call (debug_token) needs one only under the unconfirmed switch.
func TestRequireAppSecret(t *testing.T) {
	for _, appTokenNeedsProof := range []bool{false, true} {
		e := newEnv(t, facebookfake.Options{RequireAppSecret: true, AppTokenCallsNeedProof: appTokenNeedsProof})
		user := e.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
		e.fake.AddPage("1234567890", user)
		page := func(proof string) result {
			q := url.Values{"fields": {"access_token"}, "access_token": {user}}
			if proof != "" {
				q.Set("appsecret_proof", proof)
			}
			return e.get("/v26.0/1234567890", q)
		}
		r := page("")
		if eo := errObj(t, r); r.status != 400 || num(eo["code"]) != 100 || eo["message"] != facebookfake.MissingProofMessage || eo["type"] != "GraphMethodException" {
			t.Errorf("missing proof: %d %s", r.status, r.body)
		}
		r = page(facebookfake.Proof("wrong-secret", user))
		if eo := errObj(t, r); num(eo["code"]) != 100 || eo["message"] != facebookfake.InvalidProofMessage {
			t.Errorf("wrong proof: %d %s", r.status, r.body)
		}
		r = page(facebookfake.Proof(appSecret, user))
		if r.status != 200 || r.json["access_token"] == nil || r.json["id"] != "1234567890" {
			t.Errorf("right proof: %d %s", r.status, r.body)
		}
		if e.fake.Proofs(facebookfake.OpPage) != 1 {
			t.Errorf("proofs counted: %d", e.fake.Proofs(facebookfake.OpPage))
		}

		appToken := appID + "|" + appSecret
		r = e.debug(user)
		if appTokenNeedsProof {
			if eo := errObj(t, r); num(eo["code"]) != 100 {
				t.Errorf("debug_token without proof (switch on): %d %s", r.status, r.body)
			}
		} else if r.status != 200 {
			t.Errorf("debug_token without proof (switch off): %d %s", r.status, r.body)
		}
		r = e.get("/v26.0/debug_token", url.Values{"input_token": {user}, "access_token": {appToken}, "appsecret_proof": {facebookfake.Proof(appSecret, appToken)}})
		if r.status != 200 || data(t, r)["is_valid"] != true {
			t.Errorf("debug_token with a proof over the app token: %d %s", r.status, r.body)
		}
		// A proof over input_token instead of the app token is wrong.
		r = e.get("/v26.0/debug_token", url.Values{"input_token": {user}, "access_token": {appToken}, "appsecret_proof": {facebookfake.Proof(appSecret, user)}})
		if eo := errObj(t, r); num(eo["code"]) != 100 || eo["message"] != facebookfake.InvalidProofMessage {
			t.Errorf("debug_token with a proof over input_token: %d %s", r.status, r.body)
		}
	}
}

// TestPageToken: a Page token derived from a system-user token does not
// expire, reports type PAGE with profile_id = the Page, and dies with the
// user's session or Page role, not with the user token's expiry.
func TestPageToken(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	user := e.fake.IssueToken(facebookfake.KindUserLong, t0.Add(60*day))
	other := e.fake.IssueToken(facebookfake.KindUserLong, t0.Add(60*day))
	e.fake.AddPage("555", user)
	derive := func(tok string) result {
		return e.get("/v26.0/555", url.Values{"fields": {"access_token"}, "access_token": {tok}})
	}
	r := derive(user)
	pt, _ := r.json["access_token"].(string)
	if r.status != 200 || pt == "" || pt != e.fake.PageToken(user, "555") {
		t.Fatalf("derive: %d %s", r.status, r.body)
	}
	if r2 := derive(user); r2.json["access_token"] != pt {
		t.Error("deriving again must give the same Page token")
	}
	d := data(t, e.debug(pt))
	if d["type"] != "PAGE" || d["profile_id"] != "555" || num(d["expires_at"]) != 0 || d["is_valid"] != true {
		t.Errorf("page debug: %v", d)
	}
	if r := derive(other); r.status != 200 || r.json["access_token"] != nil {
		t.Errorf("a user without a role gets no access_token: %d %s", r.status, r.body)
	}
	if r := e.get("/v26.0/999", url.Values{"fields": {"access_token"}, "access_token": {user}}); num(errObj(t, r)["code"]) != 100 || num(errObj(t, r)["error_subcode"]) != 33 {
		t.Errorf("unknown page: %d %s", r.status, r.body)
	}
	// The user token's expiry does not kill the Page token.
	e.clk.Step(61 * day)
	if d := data(t, e.debug(pt)); d["is_valid"] != true {
		t.Errorf("page token after the user token expired: %v", d)
	}
	// A password change does.
	e.fake.SetTokenError(user, 190, 460)
	if d := data(t, e.debug(pt)); d["is_valid"] != false || num(d["error"].(map[string]any)["subcode"]) != 460 {
		t.Errorf("page token after password change: %v", d)
	}
	e.fake.SetTokenError(user, 0, 0)
	e.fake.RemovePageRole("555", user)
	if d := data(t, e.debug(pt)); d["is_valid"] != false || num(d["error"].(map[string]any)["subcode"]) != 492 {
		t.Errorf("page token after the role was removed: %v", d)
	}
	e.fake.AddPage("555", user)
	e.fake.Revoke(user)
	if d := data(t, e.debug(pt)); d["is_valid"] != false || num(d["error"].(map[string]any)["subcode"]) != 467 {
		t.Errorf("page token after the user token was revoked: %v", d)
	}
}

func TestUnknownTypeAndEmptyDebugData(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	tok := e.fake.IssueToken(facebookfake.KindBusinessIntegrationSystemUser, time.Time{})
	if d := data(t, e.debug(tok)); d["type"] != "BUSINESS_INTEGRATION_SYSTEM_USER" || d["is_valid"] != true || num(d["expires_at"]) != 0 {
		t.Errorf("business integration token: %v", d)
	}
	e.fake.SetEmptyDebugData(tok, true)
	if r := e.debug(tok); r.status != 200 || strings.TrimSpace(r.body) != `{"data":[]}` {
		t.Errorf("empty debug data: %d %s", r.status, r.body)
	}
}

// TestAppUsage: X-App-Usage on every answer, and the app's own budget of
// app-token calls: call_count grows with each debug_token, code 4 over it.
func TestAppUsage(t *testing.T) {
	e := newEnv(t, facebookfake.Options{AppCallsPerHour: 4})
	tok := e.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	for i, want := range []string{"25", "50", "75", "100"} {
		r := e.debug(tok)
		if r.status != 200 || !strings.Contains(r.header.Get("X-App-Usage"), `"call_count":`+want+`,`) {
			t.Fatalf("call %d: %d %q", i, r.status, r.header.Get("X-App-Usage"))
		}
	}
	r := e.debug(tok)
	if eo := errObj(t, r); num(eo["code"]) != 4 || r.header.Get("X-App-Usage") == "" {
		t.Fatalf("over budget: %d %s", r.status, r.body)
	}
	e.clk.Step(time.Hour + time.Second)
	if r := e.debug(tok); r.status != 200 {
		t.Fatalf("after an hour: %d %s", r.status, r.body)
	}

	e2 := newEnv(t, facebookfake.Options{})
	e2.fake.SetAppUsage(91, 10, 20)
	tok2 := e2.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	if h := e2.exchange(tok2, false).header.Get("X-App-Usage"); h != `{"call_count":91,"total_cputime":10,"total_time":20}` {
		t.Fatalf("X-App-Usage %q", h)
	}
	e2.fake.SetAppUsage(0, 0, 0)
	if h := e2.debug(tok2).header.Get("X-App-Usage"); h != "" {
		t.Fatalf("X-App-Usage after reset %q", h)
	}
}
