package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/hack/sandbox/state"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testConfig(stateFile string) config {
	return config{
		amocrmListen: "127.0.0.1:0", facebookListen: "127.0.0.1:0",
		accessTokenTTL: 3 * time.Minute, longLivedTTL: 60 * 24 * time.Hour, systemUserExpiresIn: 72 * time.Hour,
		clientID: DefaultClientID, clientSecret: DefaultClientSecret, redirect: DefaultRedirectURI,
		appID: DefaultAppID, appSecret: DefaultAppSecret, stateFile: stateFile, extraRefreshTokens: 2,
	}
}

func TestSandbox(t *testing.T) {
	stateFile := filepath.Join(t.TempDir(), "sandbox.json")
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readyc := make(chan *state.State, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, testConfig(stateFile), log.New(logs, "", 0), func(s *state.State) { readyc <- s })
	}()
	var st *state.State
	select {
	case st = <-readyc:
	case err := <-done:
		t.Fatalf("run returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("sandbox not ready after 10s")
	}

	// The state file is complete and private.
	fi, err := os.Stat(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	fromFile, err := state.Read(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromFile, st) {
		t.Errorf("state file differs from the state handed to ready")
	}
	creds := st.Credentials
	for name, v := range map[string]string{
		"amocrm refresh token": creds.AmoCRM.RefreshToken,
		"fb user":              creds.FacebookUserShort.AccessToken,
		"fb system user":       creds.FacebookSystemUserExpiring.AccessToken,
		"fb never expires":     creds.FacebookSystemUserNonExpiring.AccessToken,
		"fb Page user":         creds.FacebookPageUser.AccessToken,
		"fb Page ID":           creds.FacebookPageID,
	} {
		if v == "" {
			t.Errorf("%s missing from the state", name)
		}
	}

	// One AmoCRM refresh, then a reuse of the consumed refresh token.
	form := url.Values{
		"client_id": {creds.AmoCRM.ClientID}, "client_secret": {creds.AmoCRM.ClientSecret},
		"grant_type": {"refresh_token"}, "refresh_token": {creds.AmoCRM.RefreshToken},
		"redirect_uri": {creds.AmoCRM.RedirectURI},
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	resp, err := http.PostForm(st.AmoCRMURL+"/oauth2/access_token", form)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("AmoCRM refresh: HTTP %d", resp.StatusCode)
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if tok.ExpiresIn != 180 {
		t.Errorf("expires_in = %d, want 180", tok.ExpiresIn)
	}
	resp, err = http.PostForm(st.AmoCRMURL+"/oauth2/access_token", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("a consumed refresh token was accepted")
	}

	// The extra refresh tokens are distinct and each works once.
	extra := creds.AmoCRMRefreshTokens
	if len(extra) != 2 || extra[0] == extra[1] || extra[0] == creds.AmoCRM.RefreshToken || extra[1] == creds.AmoCRM.RefreshToken {
		t.Fatalf("want 2 distinct extra refresh tokens, got %d", len(extra))
	}
	form.Set("refresh_token", extra[1])
	resp, err = http.PostForm(st.AmoCRMURL+"/oauth2/access_token", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("AmoCRM refresh with an extra refresh token: HTTP %d", resp.StatusCode)
	}

	// A Facebook exchange of the short-lived user token.
	q := url.Values{
		"grant_type": {"fb_exchange_token"}, "client_id": {creds.FacebookUserShort.AppID},
		"client_secret": {creds.FacebookUserShort.AppSecret}, "fb_exchange_token": {creds.FacebookUserShort.AccessToken},
	}
	resp, err = http.Get(st.FacebookURL + "/v26.0/oauth/access_token?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	var fbTok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&fbTok)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || fbTok.ExpiresIn < 59*24*3600 {
		t.Fatalf("Facebook exchange: HTTP %d, expires_in %d", resp.StatusCode, fbTok.ExpiresIn)
	}

	// The long-lived user token has a role on the Page: its Page token can
	// be derived; the short-lived user token has none.
	derive := func(parent string) (int, string) {
		q := url.Values{"fields": {"access_token"}, "access_token": {parent}}
		resp, err := http.Get(st.FacebookURL + "/v26.0/" + creds.FacebookPageID + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var page struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&page)
		return resp.StatusCode, page.AccessToken
	}
	code, pageTok := derive(creds.FacebookPageUser.AccessToken)
	if code != http.StatusOK || pageTok == "" || pageTok == creds.FacebookPageUser.AccessToken {
		t.Fatalf("Page token from the Page user: HTTP %d, a token: %t", code, pageTok != "")
	}
	if code, other := derive(creds.FacebookSystemUserNonExpiring.AccessToken); code != http.StatusOK || other != "" {
		t.Errorf("a token without a role on the Page: HTTP %d, a Page token: %t (want 200, none)", code, other != "")
	}

	resp, err = http.Get(st.StatusURL)
	if err != nil {
		t.Fatal(err)
	}
	raw := new(bytes.Buffer)
	_, _ = raw.ReadFrom(resp.Body)
	resp.Body.Close()
	var s state.Status
	if err := json.Unmarshal(raw.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	want := state.Status{RefreshGrants: 3, ReusedRefreshTokens: 1, FacebookExchanges: 1, PageTokenCalls: 2}
	if s != want {
		t.Errorf("status = %+v, want %+v", s, want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sandbox did not stop within 10s")
	}
	if _, err := os.Stat(stateFile); !os.IsNotExist(err) {
		t.Errorf("state file left behind after stop: %v", err)
	}

	out := logs.String()
	if !strings.Contains(out, "amocrm POST /oauth2/access_token 200") || !strings.Contains(out, "facebook GET /v26.0/oauth/access_token 200") {
		t.Errorf("request lines missing from the log:\n%s", out)
	}
	secrets := []string{
		creds.AmoCRM.ClientSecret, creds.AmoCRM.RefreshToken, extra[0], extra[1], tok.AccessToken, fbTok.AccessToken,
		creds.FacebookUserShort.AppSecret, creds.FacebookUserShort.AccessToken,
		creds.FacebookSystemUserExpiring.AccessToken, creds.FacebookSystemUserNonExpiring.AccessToken,
		creds.FacebookPageUser.AccessToken, pageTok,
	}
	for _, sec := range secrets {
		if strings.Contains(out, sec) || strings.Contains(raw.String(), sec) {
			t.Errorf("a secret value leaked into the log or the status")
		}
	}
	if strings.Contains(out, "?") {
		t.Errorf("a query string reached the log:\n%s", out)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	c := testConfig("")
	c.amocrmListen = "0.0.0.0:0"
	err := run(context.Background(), c, log.New(&bytes.Buffer{}, "", 0), nil)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("run with a non-loopback address: %v", err)
	}
}

// startSandbox runs the sandbox until the test ends and returns its state.
func startSandbox(t *testing.T, c config, logs *syncBuf) *state.State {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan *state.State, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, c, log.New(logs, "", 0), func(s *state.State) { readyc <- s })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("sandbox did not stop within 10s")
		}
	})
	select {
	case st := <-readyc:
		return st
	case err := <-done:
		t.Fatalf("run returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("sandbox not ready after 10s")
	}
	return nil
}

// TestSandboxConsent drives both consent pages with the redirect URIs
// pointed at a (not running) operator callback on loopback, as make demo
// does, and exchanges the codes they hand out.
func TestSandboxConsent(t *testing.T) {
	const amoCallback = "http://127.0.0.1:18443/callback/amocrm"
	const fbCallback = "http://127.0.0.1:18443/callback/facebook"
	c := testConfig("")
	c.redirect, c.facebookRedirectURI = amoCallback, fbCallback
	logs := &syncBuf{}
	st := startSandbox(t, c, logs)
	if st.AmoCRMConsentURL != st.AmoCRMURL+"/oauth" || st.FacebookDialogURL != st.FacebookURL || st.FacebookRedirectURI != fbCallback {
		t.Fatalf("consent URLs in the state: %q %q %q", st.AmoCRMConsentURL, st.FacebookDialogURL, st.FacebookRedirectURI)
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	redirect := func(u string) *url.URL {
		t.Helper()
		resp, err := noFollow.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || err != nil {
			t.Fatalf("consent page: HTTP %d", resp.StatusCode)
		}
		return loc
	}

	// AmoCRM: the OAuth page, then the code at the token endpoint.
	amo := st.Credentials.AmoCRM
	loc := redirect(st.AmoCRMConsentURL + "?client_id=" + url.QueryEscape(amo.ClientID) + "&mode=post_message&state=s1")
	q := loc.Query()
	if !strings.HasPrefix(loc.String(), amoCallback+"?") || q.Get("state") != "s1" || q.Get("referer") == "" || q.Get("client_id") != amo.ClientID {
		t.Fatalf("AmoCRM callback: state %q referer %q", q.Get("state"), q.Get("referer"))
	}
	amoCode := q.Get("code")
	resp, err := http.PostForm(st.AmoCRMURL+"/oauth2/access_token", url.Values{
		"client_id": {amo.ClientID}, "client_secret": {amo.ClientSecret}, "grant_type": {"authorization_code"},
		"code": {amoCode}, "redirect_uri": {amo.RedirectURI},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || amo.RedirectURI != amoCallback {
		t.Fatalf("AmoCRM code exchange: HTTP %d", resp.StatusCode)
	}

	// Facebook: the dialog, then the code at the Graph token endpoint.
	fb := st.Credentials.FacebookUserShort
	loc = redirect(st.FacebookDialogURL + "/v26.0/dialog/oauth?" + url.Values{
		"client_id": {fb.AppID}, "redirect_uri": {fbCallback}, "response_type": {"code"}, "state": {"s2"}, "scope": {"ads_read"},
	}.Encode())
	q = loc.Query()
	if !strings.HasPrefix(loc.String(), fbCallback+"?") || q.Get("state") != "s2" {
		t.Fatalf("Facebook callback: state %q", q.Get("state"))
	}
	fbCode := q.Get("code")
	resp, err = http.Get(st.FacebookURL + "/v26.0/oauth/access_token?" + url.Values{
		"client_id": {fb.AppID}, "redirect_uri": {fbCallback}, "client_secret": {fb.AppSecret}, "code": {fbCode},
	}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	var fbTok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&fbTok)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || fbTok.AccessToken == "" {
		t.Fatalf("Facebook code exchange: HTTP %d", resp.StatusCode)
	}
	// Another redirect URI is blocked: no redirect.
	resp, err = noFollow.Get(st.FacebookDialogURL + "/v26.0/dialog/oauth?" + url.Values{
		"client_id": {fb.AppID}, "redirect_uri": {"https://elsewhere.example/cb"}, "response_type": {"code"},
	}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
		t.Fatalf("unlisted redirect URI: HTTP %d", resp.StatusCode)
	}

	resp, err = http.Get(st.StatusURL)
	if err != nil {
		t.Fatal(err)
	}
	var s state.Status
	_ = json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	want := state.Status{AuthorizationCodeGrants: 1, AmoCRMConsents: 1, FacebookDialogs: 2, FacebookCodeGrants: 1}
	if s != want {
		t.Errorf("status = %+v, want %+v", s, want)
	}
	out := logs.String()
	for _, sec := range []string{amoCode, fbCode, fbTok.AccessToken, amo.ClientSecret, fb.AppSecret} {
		if strings.Contains(out, sec) {
			t.Error("a code, token or secret reached the log")
		}
	}
	if strings.Contains(out, "?") || !strings.Contains(out, "amocrm GET /oauth 302") || !strings.Contains(out, "facebook GET /v26.0/dialog/oauth 302") {
		t.Errorf("request lines: want the consent pages, without query strings:\n%s", out)
	}
}

func TestValidateRedirectURIs(t *testing.T) {
	tests := []struct {
		name, amo, fb string
		ok            bool
	}{
		{"defaults", DefaultRedirectURI, "", true},
		{"loopback callbacks", "http://127.0.0.1:8443/callback/amocrm", "http://localhost:8443/callback/facebook", true},
		{"IPv6 loopback", "http://[::1]:8443/callback/amocrm", "https://op.example.com/callback/facebook", true},
		{"plain http elsewhere", "http://op.example.com/callback/amocrm", "", false},
		{"facebook plain http elsewhere", DefaultRedirectURI, "http://op.example.com/callback/facebook", false},
		{"relative", "/callback/amocrm", "", false},
	}
	for _, tc := range tests {
		c := testConfig("")
		c.redirect, c.facebookRedirectURI = tc.amo, tc.fb
		if err := c.validate(); (err == nil) != tc.ok {
			t.Errorf("%s: validate() = %v", tc.name, err)
		}
	}
}
