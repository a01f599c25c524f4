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
	want := state.Status{RefreshGrants: 3, ReusedRefreshTokens: 1, FacebookExchanges: 1}
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
