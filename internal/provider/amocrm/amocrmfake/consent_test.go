package amocrmfake

import (
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
)

// noFollow is a client that returns redirects instead of following them.
var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func (e *env) consent(t *testing.T, query string) (*http.Response, string) {
	t.Helper()
	resp, err := noFollow.Get(e.srv.URL + ConsentPath + "?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// callbackQuery parses a Location that must start with the integration's
// redirect URI (its own query kept byte for byte).
func callbackQuery(t *testing.T, loc string) url.Values {
	t.Helper()
	if !strings.HasPrefix(loc, redirectURI+"&") {
		t.Fatalf("the Location (%d bytes) does not extend the redirect URI", len(loc))
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query()
}

func TestConsentApprovesAndRedirects(t *testing.T) {
	tests := []struct {
		name, domain, query, wantPlatform string
		wantState                         bool
	}{
		{"amocrm.ru with state", "", "client_id=" + clientID + "&state=c3RhdGU_LQ&mode=post_message", "1", true},
		{"kommo.com, popup", "example.kommo.com", "client_id=" + clientID + "&state=abc&mode=popup", "2", true},
		{"amocrm.com without state", "example.amocrm.com", "client_id=" + clientID + "&mode=post_message", "2", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.Domain = tc.domain })
			resp, _ := e.consent(t, tc.query)
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("status %d", resp.StatusCode)
			}
			q := callbackQuery(t, resp.Header.Get("Location"))
			if q.Get("a") != "1" || q.Get("b") != "2" {
				t.Errorf("the redirect URI's own query is lost: %v", names(q))
			}
			if q.Get("referer") != e.fake.Domain() || q.Get("platform") != tc.wantPlatform || q.Get("client_id") != clientID {
				t.Errorf("referer %q platform %q client_id %q", q.Get("referer"), q.Get("platform"), q.Get("client_id"))
			}
			if _, has := q["state"]; has != tc.wantState || (tc.wantState && q.Get("state") != mustQuery(t, tc.query).Get("state")) {
				t.Errorf("state %q (present %v)", q.Get("state"), has)
			}
			code := q.Get("code")
			if code == "" || !contains(e.fake.Secrets(), code) {
				t.Fatal("no code, or the code is not in Secrets")
			}
			// The code is the token endpoint's: single use.
			if a := e.postJSON(t, codeParams(code)); a.status != 200 {
				t.Fatalf("exchange: %d %s", a.status, a.raw)
			}
			if a := e.postJSON(t, codeParams(code)); a.status != 400 || a.json["hint"] != HintCodeRevoked {
				t.Fatalf("second exchange: %d %s", a.status, a.raw)
			}
			if e.fake.Calls("consent") != 1 {
				t.Errorf("consent calls = %d", e.fake.Calls("consent"))
			}
		})
	}
}

func TestConsentCodeExpires(t *testing.T) {
	e := newEnv(t, nil)
	resp, _ := e.consent(t, "client_id="+clientID+"&state=s&mode=post_message")
	code := callbackQuery(t, resp.Header.Get("Location")).Get("code")
	e.clk.Step(AuthorizationCodeTTL)
	if a := e.postJSON(t, codeParams(code)); a.status != 400 || a.json["hint"] != HintCodeExpired {
		t.Fatalf("expired code: %d %s", a.status, a.raw)
	}
}

func TestConsentRefusals(t *testing.T) {
	tests := []struct {
		name, method, query string
		wantStatus          int
	}{
		{"unknown client_id", http.MethodGet, "client_id=someone-else&state=s&mode=post_message", http.StatusBadRequest},
		{"no client_id", http.MethodGet, "state=s&mode=post_message", http.StatusBadRequest},
		{"no mode", http.MethodGet, "client_id=" + clientID + "&state=s", http.StatusBadRequest},
		{"POST", http.MethodPost, "client_id=" + clientID + "&state=s&mode=post_message", http.StatusMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			req, _ := http.NewRequest(tc.method, e.srv.URL+ConsentPath+"?"+tc.query, nil)
			resp, err := noFollow.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus || resp.Header.Get("Location") != "" {
				t.Fatalf("status %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
			}
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
			}
			if len(e.fake.Secrets()) != 1 || e.fake.Calls("consent") != 1 {
				t.Errorf("a refused consent minted a code (%d secrets) or was not counted (%d)", len(e.fake.Secrets()), e.fake.Calls("consent"))
			}
		})
	}
}

func TestConsentDenied(t *testing.T) {
	e := newEnv(t, nil)
	e.fake.SetConsent(true)
	resp, _ := e.consent(t, "client_id="+clientID+"&state=xyz&mode=post_message")
	q := callbackQuery(t, resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || q.Get("error") != "access_denied" || q.Get("state") != "xyz" || q.Get("code") != "" {
		t.Fatalf("denied: %d %v", resp.StatusCode, names(q))
	}
	e.fake.SetConsent(false)
	resp, _ = e.consent(t, "client_id="+clientID+"&state=xyz&mode=post_message")
	if q := callbackQuery(t, resp.Header.Get("Location")); q.Get("code") == "" || q.Get("error") != "" {
		t.Fatalf("approved again: %v", names(q))
	}
}

// The consent page is not on the account host: a move or the account's IP
// allow-list does not affect it, and referer names the current host.
func TestConsentAfterMoveAndAllowList(t *testing.T) {
	e := newEnv(t, nil)
	e.fake.MoveAccount("example.kommo.com", false)
	e.fake.SetIPAllowList(true)
	resp, _ := e.consent(t, "client_id="+clientID+"&state=s&mode=post_message")
	q := callbackQuery(t, resp.Header.Get("Location"))
	if q.Get("referer") != "example.kommo.com" || q.Get("platform") != "2" {
		t.Fatalf("after the move: referer %q platform %q", q.Get("referer"), q.Get("platform"))
	}
}

func TestUnsolicitedCallbackURL(t *testing.T) {
	e := newEnv(t, nil)
	q := callbackQuery(t, e.fake.UnsolicitedCallbackURL())
	if _, has := q["state"]; has {
		t.Error("an unsolicited callback has no state")
	}
	// Exactly the documented parameters (code, referer, from_widget) after
	// the redirect URI's own.
	own := mustQuery(t, strings.SplitN(redirectURI, "?", 2)[1])
	for k := range own {
		q.Del(k)
	}
	if got := names(q); strings.Join(got, ",") != "code,from_widget,referer" {
		t.Errorf("callback parameters %v, want code, from_widget, referer", got)
	}
	if q.Get("referer") != DefaultDomain || q.Get("from_widget") != "1" {
		t.Errorf("callback query: referer %q from_widget %q", q.Get("referer"), q.Get("from_widget"))
	}
	code := q.Get("code")
	if !contains(e.fake.Secrets(), code) {
		t.Error("the code is not in Secrets")
	}
	if a := e.postJSON(t, codeParams(code)); a.status != 200 {
		t.Fatalf("exchange: %d %s", a.status, a.raw)
	}
	if e.fake.Calls("consent") != 0 {
		t.Error("no consent page was served")
	}
}

func mustQuery(t *testing.T, raw string) url.Values {
	t.Helper()
	q, err := url.ParseQuery(raw)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// names lists a query's parameter names: failure messages name them, never
// print their values (a code is a secret).
func names(q url.Values) []string {
	out := make([]string, 0, len(q))
	for k := range q {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
