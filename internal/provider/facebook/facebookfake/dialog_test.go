package facebookfake_test

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

const callbackURI = "https://operator.example.com/callback/facebook"

var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// dialog calls the login dialog without following the redirect.
func (e *env) dialog(q url.Values) (*http.Response, result) {
	e.t.Helper()
	resp, err := noFollow.Get(e.srv.URL + "/v26.0/dialog/oauth?" + q.Encode())
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, read(e.t, resp)
}

func dialogQuery(redirectURI, state, scope string) url.Values {
	q := url.Values{"client_id": {appID}, "redirect_uri": {redirectURI}, "response_type": {"code"}}
	if state != "" {
		q.Set("state", state)
	}
	if scope != "" {
		q.Set("scope", scope)
	}
	return q
}

func (e *env) codeGrant(code, redirectURI string) result {
	return e.get("/v26.0/oauth/access_token", url.Values{"client_id": {appID}, "redirect_uri": {redirectURI}, "client_secret": {appSecret}, "code": {code}})
}

func TestDialogApprovesAndCodeExchanges(t *testing.T) {
	tests := []struct {
		name         string
		opts         facebookfake.Options
		redirectURI  string
		state, scope string
		wantScopes   []string
		wantFragment bool
	}{
		{"listed URI", facebookfake.Options{RedirectURIs: []string{callbackURI}}, callbackURI, "c3Q", "ads_read,pages_show_list", []string{"ads_read", "pages_show_list"}, false},
		{"any https, space separated", facebookfake.Options{}, "https://x.example/cb?keep=1", "s", "ads_read pages_show_list", []string{"ads_read", "pages_show_list"}, false},
		{"loopback http, no scope", facebookfake.Options{}, "http://127.0.0.1:8443/callback/facebook", "s", "", []string{"public_profile"}, false},
		{"no state, fragment", facebookfake.Options{AppendHashFragment: true}, "http://localhost:1/cb", "", "email", []string{"email"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts)
			resp, _ := e.dialog(dialogQuery(tc.redirectURI, tc.state, tc.scope))
			loc := resp.Header.Get("Location")
			if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, tc.redirectURI) {
				t.Fatalf("dialog: %d, Location of %d bytes", resp.StatusCode, len(loc))
			}
			if strings.HasSuffix(loc, "#_=_") != tc.wantFragment {
				t.Errorf("fragment: Location ends with #_=_ is %v", strings.HasSuffix(loc, "#_=_"))
			}
			u, _ := url.Parse(loc)
			q := u.Query()
			if _, has := q["state"]; has != (tc.state != "") || q.Get("state") != tc.state {
				t.Errorf("state %q", q.Get("state"))
			}
			if strings.Contains(tc.redirectURI, "keep=1") && q.Get("keep") != "1" {
				t.Error("the redirect URI's own query is lost")
			}
			code := q.Get("code")
			if code == "" || !slices.Contains(e.fake.Secrets(), code) {
				t.Fatal("no code, or the code is not in Secrets")
			}
			r := e.codeGrant(code, tc.redirectURI)
			tok, _ := r.json["access_token"].(string)
			if r.status != 200 || tok == "" || r.json["token_type"] != "bearer" || num(r.json["expires_in"]) != int64(facebookfake.DefaultShortLivedTTL.Seconds()) {
				t.Fatalf("code grant: %d %s", r.status, r.body)
			}
			d := data(t, e.debug(tok))
			if d["type"] != "USER" || d["issued_at"] != nil || d["is_valid"] != true {
				t.Errorf("the token is not a short-lived user token: %v", d)
			}
			var scopes []string
			for _, s := range d["scopes"].([]any) {
				scopes = append(scopes, s.(string))
			}
			if !slices.Equal(scopes, tc.wantScopes) {
				t.Errorf("scopes %v, want %v", scopes, tc.wantScopes)
			}
			if !slices.Contains(e.fake.Secrets(), tok) {
				t.Error("the token is not in Secrets")
			}
			if e.fake.Calls(facebookfake.OpDialog) != 1 || e.fake.Calls(facebookfake.OpAuthorizationCode) != 1 || e.fake.Calls(facebookfake.OpExchange) != 0 {
				t.Errorf("calls: dialog %d code %d exchange %d", e.fake.Calls(facebookfake.OpDialog), e.fake.Calls(facebookfake.OpAuthorizationCode), e.fake.Calls(facebookfake.OpExchange))
			}
			// The short-lived token exchanges like any other.
			if r := e.exchange(tok, false); r.status != 200 {
				t.Fatalf("exchange: %d %s", r.status, r.body)
			}
		})
	}
}

func TestDialogRefusals(t *testing.T) {
	tests := []struct {
		name string
		opts facebookfake.Options
		q    url.Values
	}{
		{"unknown app", facebookfake.Options{}, func() url.Values {
			q := dialogQuery(callbackURI, "s", "")
			q.Set("client_id", "999")
			return q
		}()},
		{"URI not listed", facebookfake.Options{RedirectURIs: []string{callbackURI}}, dialogQuery(callbackURI+"/", "s", "")},
		{"no redirect_uri", facebookfake.Options{}, dialogQuery("", "s", "")},
		{"plain http elsewhere", facebookfake.Options{}, dialogQuery("http://operator.example.com/cb", "s", "")},
		{"relative URI", facebookfake.Options{}, dialogQuery("/callback/facebook", "s", "")},
		{"token flow", facebookfake.Options{}, func() url.Values {
			q := dialogQuery(callbackURI, "s", "")
			q.Set("response_type", "token")
			return q
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts)
			resp, _ := e.dialog(tc.q)
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Fatalf("got %d, Location %q, %s", resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Content-Type"))
			}
			if len(e.fake.Secrets()) != 1 {
				t.Error("a refused dialog minted a code")
			}
		})
	}
}

func TestDialogDenied(t *testing.T) {
	e := newEnv(t, facebookfake.Options{AppendHashFragment: true})
	e.fake.SetConsent(true)
	resp, _ := e.dialog(dialogQuery(callbackURI, "st", "ads_read"))
	want := callbackURI + "?error=access_denied&error_code=200&error_description=Permissions+error&error_reason=user_denied&state=st#_=_"
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != want {
		t.Fatalf("got %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestCodeGrantErrors(t *testing.T) {
	e := newEnv(t, facebookfake.Options{})
	fresh := func() string { return e.fake.IssueAuthorizationCode(callbackURI, "ads_read") }
	used := fresh()
	if r := e.codeGrant(used, callbackURI); r.status != 200 {
		t.Fatalf("first use: %d %s", r.status, r.body)
	}
	expired := fresh()
	e.clk.Step(facebookfake.DefaultCodeTTL)
	tests := []struct {
		name, code, redirectURI, secret string
		wantCode, wantSub               int64
		wantMessage                     string
	}{
		{"used", used, callbackURI, appSecret, 100, facebookfake.SubcodeCodeUsed, facebookfake.CodeUsedMessage},
		{"expired", expired, callbackURI, appSecret, 100, facebookfake.SubcodeCodeExpired, facebookfake.CodeExpiredMessage},
		{"redirect mismatch", fresh(), callbackURI + "/", appSecret, 100, facebookfake.SubcodeRedirectURIMismatch, facebookfake.RedirectMismatchMessage},
		{"unknown code", "AQnotacode", callbackURI, appSecret, 100, 0, facebookfake.InvalidCodeMessage},
		{"wrong secret", fresh(), callbackURI, "nope", 1, 0, facebookfake.ClientSecretErrorMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.get("/v26.0/oauth/access_token", url.Values{"client_id": {appID}, "redirect_uri": {tc.redirectURI}, "client_secret": {tc.secret}, "code": {tc.code}})
			o := errObj(t, r)
			if r.status != 400 || num(o["code"]) != tc.wantCode || num(o["error_subcode"]) != tc.wantSub || o["message"] != tc.wantMessage || o["type"] != "OAuthException" {
				t.Fatalf("got %d %s", r.status, r.body)
			}
			if tc.wantCode == 100 && !strings.Contains(r.header.Get("WWW-Authenticate"), `"invalid_code"`) {
				t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}
	// A mismatch does not consume the code.
	c := fresh()
	_ = e.codeGrant(c, "https://other.example/cb")
	if r := e.codeGrant(c, callbackURI); r.status != 200 {
		t.Fatalf("after a mismatch: %d %s", r.status, r.body)
	}
	if n := e.fake.Calls(facebookfake.OpAuthorizationCode); n != 8 {
		t.Errorf("authorization_code calls = %d", n)
	}
}
