package amocrm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

// Every error body of the reference, served verbatim by the fake's FailNext.
func TestTokenEndpointErrorClassification(t *testing.T) {
	pb := amocrmfake.ProblemBody
	cases := []struct {
		name       string
		code       bool // use the authorization_code grant
		status     int
		body       string
		header     http.Header
		kind       provider.Kind
		reason     string
		wantCode   string
		retryAfter time.Duration
		msgHas     string
	}{
		{name: "revoked", status: 401, body: `{"hint":"Token has been revoked","title":"Некорректный запрос","type":"https://developers.amocrm.ru/v3/errors/OAuthProblemJson","status":401,"detail":"В запросе отсутствует ряд параметров или параметры невалидны"}`,
			kind: provider.KindReauthorize, reason: "RefreshTokenRevoked", wantCode: "hint: Token has been revoked", msgHas: "credentials Secret"},
		{name: "revoked 400", status: 400, body: pb(400, "Token has been revoked"), kind: provider.KindReauthorize, reason: "RefreshTokenRevoked", wantCode: "hint: Token has been revoked"},
		{name: "expired", status: 401, body: pb(401, "Token has expired"), kind: provider.KindReauthorize, reason: "RefreshTokenExpired", wantCode: "hint: Token has expired"},
		{name: "cannot decrypt", status: 400, body: pb(400, "Cannot decrypt the refresh token"), kind: provider.KindReauthorize, reason: "RefreshTokenInvalid", wantCode: "hint: Cannot decrypt the refresh token"},
		{name: "not linked", status: 401, body: pb(401, "Token is not linked to client"), kind: provider.KindReauthorize, reason: "RefreshTokenInvalid", wantCode: "hint: Token is not linked to client"},
		{name: "code expired", code: true, status: 400, body: pb(400, "Authorization code has expired"), kind: provider.KindReauthorize, reason: "AuthorizationCodeInvalid", wantCode: "hint: Authorization code has expired", msgHas: "authorization code"},
		{name: "code revoked", code: true, status: 400, body: pb(400, "Authorization code has been revoked"), kind: provider.KindReauthorize, reason: "AuthorizationCodeInvalid", wantCode: "hint: Authorization code has been revoked"},
		{name: "client_id", status: 401, body: pb(401, "Check the `client_id` parameter"), kind: provider.KindConfiguration, reason: "InvalidClient", wantCode: "hint: Check the `client_id` parameter", msgHas: "client_id in the credentials Secret"},
		{name: "client_secret", status: 400, body: pb(400, "Check the `client_secret` parameter"), kind: provider.KindConfiguration, reason: "InvalidClient", wantCode: "hint: Check the `client_secret` parameter", msgHas: "client_secret in the credentials Secret"},
		{name: "bad client", status: 401, body: `{"title":"Некорректный клиент","type":"https://developers.amocrm.ru/v3/errors/OAuthProblemJson","status":401,"detail":"Авторизация клиента не прошла"}`,
			kind: provider.KindConfiguration, reason: "InvalidClient", wantCode: "title: Некорректный клиент", msgHas: "client_secret"},
		{name: "redirect URI", code: true, status: 400, body: pb(400, "Redirect URI is not associated with client"), kind: provider.KindConfiguration, reason: "RedirectURIMismatch", wantCode: "hint: Redirect URI is not associated with client", msgHas: "spec.amocrm.redirectURI"},
		{name: "invalid account", status: 400, body: pb(400, "Invalid account"), kind: provider.KindReauthorize, reason: "InvalidAccount", wantCode: "hint: Invalid account"},
		{name: "other hint", status: 400, body: pb(400, "Check the `grant_type` parameter"), kind: provider.KindReauthorize, reason: "ReauthorizationRequired", wantCode: "hint: Check the `grant_type` parameter"},
		{name: "429 seconds", status: 429, body: `{"title":"Too Many Requests"}`, header: http.Header{"Retry-After": {"30"}}, kind: provider.KindThrottled, reason: "RateLimited", retryAfter: 30 * time.Second},
		{name: "429 date", status: 429, body: ``, header: http.Header{"Retry-After": {t0.Add(2 * time.Minute).Format(http.TimeFormat)}}, kind: provider.KindThrottled, reason: "RateLimited", retryAfter: 2 * time.Minute},
		{name: "429 no header", status: 429, body: `{}`, kind: provider.KindThrottled, reason: "RateLimited"},
		{name: "403 nginx", status: 403, body: amocrmfake.BlockedBody, kind: provider.KindBlocked, reason: "ProviderBlocked", msgHas: "IP block"},
		{name: "500", status: 500, body: `{"title":"Internal Server Error"}`, kind: provider.KindTransient, reason: "ProviderUnavailable"},
		{name: "502 html", status: 502, body: "<html>bad gateway</html>", kind: provider.KindTransient, reason: "ProviderUnavailable"},
		{name: "400 not JSON", status: 400, body: "<html>bad request</html>", kind: provider.KindTransient, reason: "UnexpectedResponse"},
		{name: "401 JSON without title or hint", status: 401, body: `{"foo":1}`, kind: provider.KindTransient, reason: "UnexpectedResponse"},
		{name: "404", status: 404, body: "not found", kind: provider.KindTransient, reason: "UnexpectedResponse"},
		{name: "200 malformed JSON", status: 200, body: `{"token_type":"Bearer","expires_in":`, kind: provider.KindTransient, reason: "MalformedResponse"},
		{name: "200 empty", status: 200, body: ``, kind: provider.KindTransient, reason: "MalformedResponse"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, nil)
			rt := h.fake.IssueRefreshToken()
			h.fake.FailNext(1, tc.status, tc.body, tc.header)
			var err error
			op := "refresh_token"
			if tc.code {
				op = "authorization_code"
				_, err = h.client.Bootstrap(context.Background(), request("authorization_code", h.fake.IssueAuthorizationCode()), GrantAuthorizationCode)
			} else {
				_, err = h.client.Refresh(context.Background(), request(), &provider.Token{RefreshToken: rt, Refreshable: true})
			}
			pe := asProviderError(t, err)
			if pe.Kind != tc.kind || pe.Reason != tc.reason {
				t.Fatalf("got %v/%s, want %v/%s (%v)", pe.Kind, pe.Reason, tc.kind, tc.reason, pe)
			}
			if pe.HTTPStatus != tc.status || pe.Op != op || pe.Code != tc.wantCode || pe.RetryAfter != tc.retryAfter {
				t.Errorf("status=%d op=%s code=%q retryAfter=%v", pe.HTTPStatus, pe.Op, pe.Code, pe.RetryAfter)
			}
			if tc.msgHas != "" && !strings.Contains(pe.Message, tc.msgHas) {
				t.Errorf("message %q lacks %q", pe.Message, tc.msgHas)
			}
			if tc.wantCode != "" && strings.HasPrefix(tc.wantCode, "hint: ") && !strings.Contains(pe.Message, strings.TrimPrefix(tc.wantCode, "hint: ")) {
				t.Errorf("message %q lacks the hint", pe.Message)
			}
			if h.obs[len(h.obs)-1] != (observation{"AmoCRM", op, tc.status}) {
				t.Errorf("observation %v", h.obs[len(h.obs)-1])
			}
		})
	}
}

func TestTransportFailures(t *testing.T) {
	slow := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // lets the server notice the client hanging up
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}
	stalledBody := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, `{"access_token":"`)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}
	cases := []struct {
		name       string
		handler    http.HandlerFunc
		ctxTimeout time.Duration
		clientTO   time.Duration
		closed     bool
		msg        string
	}{
		{name: "context deadline", handler: slow, ctxTimeout: 150 * time.Millisecond, msg: "request timed out"},
		{name: "client timeout", handler: slow, clientTO: 150 * time.Millisecond, msg: "request timed out"},
		{name: "stalled body", handler: stalledBody, ctxTimeout: 150 * time.Millisecond, msg: "timed out"},
		{name: "connection refused", handler: slow, closed: true, msg: "network error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			hc := &http.Client{Timeout: tc.clientTO}
			c := New(Options{BaseURL: srv.URL, HTTPClient: hc})
			if tc.closed {
				srv.Close()
			}
			ctx := context.Background()
			if tc.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctxTimeout)
				defer cancel()
			}
			start := time.Now()
			_, err := c.Refresh(ctx, request(), &provider.Token{RefreshToken: "rt-" + strings.Repeat("z", 40)})
			pe := asProviderError(t, err)
			if pe.Kind != provider.KindTransient || !strings.Contains(pe.Message, tc.msg) {
				t.Fatalf("got %v/%s %q", pe.Kind, pe.Reason, pe.Message)
			}
			if time.Since(start) > 3*time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
			if strings.Contains(err.Error(), "/oauth2") || strings.Contains(err.Error(), "http://") {
				t.Fatalf("error holds the URL: %v", err)
			}
		})
	}
}

// For every error path, no secret and no URL reaches the error text.
func TestErrorsLeakNoSecrets(t *testing.T) {
	h := newHarness(t, nil, nil)
	ctx := context.Background()
	var errs []error
	add := func(_ any, err error) {
		if err == nil {
			t.Fatalf("expected an error on path #%d", len(errs))
		}
		errs = append(errs, err)
	}
	probe := func(tok *provider.Token) (any, error) { return h.client.Probe(ctx, request(), tok) }
	refresh := func(tok *provider.Token) (any, error) { return h.client.Refresh(ctx, request(), tok) }

	tok := h.bootstrap()
	next, err := h.client.Refresh(ctx, request(), tok)
	if err != nil {
		t.Fatal(err)
	}
	add(refresh(tok)) // consumed
	add(refresh(&provider.Token{RefreshToken: "def50200" + strings.Repeat("9f", 60)}))
	code := h.fake.IssueAuthorizationCode()
	add(h.client.Bootstrap(ctx, request("authorization_code", code, "client_secret", "wrong-"+testClientSecret), GrantAuthorizationCode))
	add(h.client.Bootstrap(ctx, request("authorization_code", code, "client_id", "nobody"), GrantAuthorizationCode))
	badRedirect := request("authorization_code", code)
	badRedirect.Spec.AmoCRM.RedirectURI = "https://elsewhere.example/cb"
	add(h.client.Bootstrap(ctx, badRedirect, GrantAuthorizationCode))
	if _, err := h.client.Bootstrap(ctx, request("authorization_code", code), GrantAuthorizationCode); err != nil {
		t.Fatal(err)
	}
	add(h.client.Bootstrap(ctx, request("authorization_code", code), GrantAuthorizationCode)) // used code
	stale := h.fake.IssueAuthorizationCode()
	h.clk.Step(21 * time.Minute)
	add(h.client.Bootstrap(ctx, request("authorization_code", stale), GrantAuthorizationCode)) // expired code
	cur := &provider.Token{AccessToken: h.fake.CurrentAccessToken(), RefreshToken: h.fake.CurrentRefreshToken()}
	for _, f := range []struct {
		status int
		body   string
	}{{429, "{}"}, {403, amocrmfake.BlockedBody}, {500, "x"}, {200, "{"}, {200, `{"expires_in":1}`}} {
		h.fake.FailNext(1, f.status, f.body, nil)
		add(refresh(cur))
		if f.status != 200 { // a probe only reads the status
			h.fake.FailAccountNext(1, f.status, f.body)
			add(probe(cur))
		}
	}
	h.clk.Step(25 * time.Hour)
	add(probe(next)) // expired access token
	add(h.client.Bootstrap(ctx, provider.Request{Spec: spec(), Credentials: provider.Credentials{"access_token": []byte("opaque-long-lived-" + testClientSecret)}}, GrantAccessToken))
	expiredLL := h.fake.IssueLongLivedToken(h.clk.Now().Add(-time.Minute))
	add(h.client.Bootstrap(ctx, provider.Request{Spec: spec(), Credentials: provider.Credentials{"access_token": []byte(expiredLL)}}, GrantAccessToken))
	h.fake.SetBlocked(true)
	add(refresh(cur))
	add(probe(cur))
	h.fake.SetBlocked(false)
	revokedLL := h.fake.IssueLongLivedToken(h.clk.Now().Add(time.Hour))
	h.fake.RevokeAll()
	add(refresh(cur))
	add(h.client.Bootstrap(ctx, provider.Request{Spec: spec(), Credentials: provider.Credentials{"access_token": []byte(revokedLL)}}, GrantAccessToken))
	ctxT, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	_, err = h.client.Refresh(ctxT, request(), cur)
	add(nil, err)

	forbidden := append(h.fake.Secrets(), testClientSecret, h.srv.URL, strings.TrimPrefix(h.srv.URL, "http://"), "/oauth2/", "/api/v4")
	if len(h.fake.Secrets()) < 10 {
		t.Fatalf("only %d secrets known; the test exercises too little", len(h.fake.Secrets()))
	}
	checkNoLeak(t, errs, forbidden)
}

// A hostile or buggy server echoes the request (and its secrets) into every
// part of its answers; none of it may reach an error.
func TestErrorsLeakNoEchoedSecrets(t *testing.T) {
	refreshToken := "def50200" + strings.Repeat("7e", 50)
	accessToken := makeJWT(map[string]any{"exp": t0.Add(time.Hour).Unix(), "jti": strings.Repeat("ac", 30)})
	echoes := []func(status *int, echo string) string{
		func(s *int, e string) string {
			*s = 400
			return mustJSON(map[string]any{"hint": e, "title": e, "detail": e})
		},
		func(s *int, e string) string {
			*s = 401
			return mustJSON(map[string]any{"hint": "Token " + e, "title": e})
		},
		func(s *int, e string) string {
			*s = 401
			return mustJSON(map[string]any{"hint": "Check the `client_id` parameter", "title": e, "detail": e})
		},
		func(s *int, e string) string { *s = 401; return mustJSON(map[string]any{"title": e, "detail": e}) },
		func(s *int, e string) string { *s = 400; return "<html>" + e + "</html>" },
		func(s *int, e string) string { *s = 403; return "<html>" + e + "</html>" },
		func(s *int, e string) string { *s = 429; return e },
		func(s *int, e string) string { *s = 500; return e },
		func(s *int, e string) string { *s = 200; return `{"access_token":"` + e },
		func(s *int, e string) string {
			*s = 200
			return mustJSON(map[string]any{"access_token": e, "expires_in": 0})
		},
		func(s *int, e string) string { *s = 200; return mustJSON(map[string]any{"refresh_token": e}) },
	}
	var errs []error
	for i, echo := range echoes {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			e := string(b) + " " + r.Header.Get("Authorization") + " " + r.URL.String()
			status := 0
			body := echo(&status, e)
			if status == 200 && r.URL.Path == "/api/v4/account" {
				status = 401
			}
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		}))
		c := New(Options{BaseURL: srv.URL, RequestsPerSecond: 1000})
		_, err := c.Refresh(context.Background(), request(), &provider.Token{RefreshToken: refreshToken})
		if err == nil {
			t.Fatalf("echo #%d: refresh succeeded", i)
		}
		errs = append(errs, err)
		_, err = c.Bootstrap(context.Background(), request("authorization_code", "code-"+strings.Repeat("c0", 30)), GrantAuthorizationCode)
		if err == nil {
			t.Fatalf("echo #%d: bootstrap succeeded", i)
		}
		errs = append(errs, err)
		_, err = c.Probe(context.Background(), request(), &provider.Token{AccessToken: accessToken})
		if err == nil {
			t.Fatalf("echo #%d: probe succeeded", i)
		}
		errs = append(errs, err)
		srv.Close()
	}
	checkNoLeak(t, errs, []string{testClientSecret, refreshToken, accessToken, "code-" + strings.Repeat("c0", 30), "127.0.0.1"})
}

func checkNoLeak(t *testing.T, errs []error, forbidden []string) {
	t.Helper()
	for i, err := range errs {
		texts := []string{err.Error(), fmt.Sprintf("%+v", err)}
		if pe := provider.AsError(err); pe != nil {
			texts = append(texts, pe.Code, pe.Reason)
		}
		for _, text := range texts {
			for _, s := range forbidden {
				if s != "" && strings.Contains(text, s) {
					t.Errorf("error #%d leaks a forbidden value (%d chars): %s", i, len(s), redact(text, forbidden))
				}
			}
		}
	}
}

func redact(s string, secrets []string) string {
	for _, x := range secrets {
		if x != "" {
			s = strings.ReplaceAll(s, x, "[SECRET]")
		}
	}
	return s
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
