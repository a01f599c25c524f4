package facebook_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// A redirect URI with characters an encoder might change: it must reach the
// token endpoint byte for byte.
const testRedirectURI = "https://operator.example.com/callback/facebook?x=a%2Fb&y=<1>"

func codeRequest(code string) provider.Request {
	return provider.Request{
		Spec: &tokensv1alpha1.ManagedTokenSpec{Provider: tokensv1alpha1.ProviderFacebook,
			Facebook: &tokensv1alpha1.FacebookSpec{RedirectURI: testRedirectURI, Scopes: []string{"ads_read", "pages_show_list"}}},
		Credentials: provider.Credentials{
			"app_id":             []byte(testAppID),
			"app_secret":         []byte(testAppSecret + "\n"),
			"authorization_code": []byte(code + "\n"),
		},
	}
}

// recordQueries wraps the fake and keeps the raw query of every request.
type queryLog struct {
	mu   sync.Mutex
	raws []string
}

func (l *queryLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.raws = append(l.raws, r.URL.Path+"?"+r.URL.RawQuery)
		l.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// TestBootstrapFromAuthorizationCode: the dialog's code gives the same
// Token as a pasted short-lived user token of the same grant.
func TestBootstrapFromAuthorizationCode(t *testing.T) {
	for _, omit := range []bool{false, true} {
		t.Run(map[bool]string{false: "expires_in present", true: "expires_in absent"}[omit], func(t *testing.T) {
			log := &queryLog{}
			h := newHarness(t, facebookfake.Options{RedirectURIs: []string{testRedirectURI}, OmitExpiresIn: omit}, log.wrap)
			req := codeRequest("")
			consent, err := facebook.ConsentURL(h.srv.URL, req.Spec, testAppID)
			if err != nil {
				t.Fatal(err)
			}
			noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := noFollow.Get(consent + "&state=st")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			loc, _ := url.Parse(resp.Header.Get("Location"))
			if resp.StatusCode != http.StatusFound || loc.Query().Get("state") != "st" {
				t.Fatalf("dialog: %d, state %q", resp.StatusCode, loc.Query().Get("state"))
			}
			code := loc.Query().Get("code")
			req.Credentials["authorization_code"] = []byte(code)

			tok, err := h.client.Bootstrap(context.Background(), req, facebook.KeyAuthorizationCode)
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			// What a pasted short-lived token gives (TestBootstrapTokenKinds).
			if tok.Type != facebook.TypeUserLongLived || !tok.Expires || !tok.ExpiresAt.Equal(t0.Add(60*day)) || tok.Refreshable ||
				!tok.DataAccessExpiresAt.Equal(t0.Add(90*day)) || !tok.ObtainedAt.Equal(t0) || tok.PublishedAccessToken != "" {
				t.Errorf("token: type %s expires %v at %v refreshable %v data %v", tok.Type, tok.Expires, tok.ExpiresAt, tok.Refreshable, tok.DataAccessExpiresAt)
			}
			if !slices.Equal(tok.Scopes, []string{"ads_read", "pages_show_list"}) {
				t.Errorf("scopes %v", tok.Scopes)
			}
			if exp, ok := h.fake.TokenInfo(tok.AccessToken); !ok || !exp.Equal(tok.ExpiresAt) {
				t.Errorf("the fake does not hold the token as long-lived: %v %v", exp, ok)
			}
			for op, want := range map[string]int{facebookfake.OpAuthorizationCode: 1, facebookfake.OpExchange: 1, facebookfake.OpDebugToken: 2, facebookfake.OpDialog: 1} {
				if got := h.fake.Calls(op); got != want {
					t.Errorf("%s calls = %d, want %d", op, got, want)
				}
			}
			// redirect_uri went out byte for byte, in the dialog and the exchange.
			var sent []string
			for _, raw := range log.raws {
				u, _ := url.Parse(raw)
				if v := u.Query().Get("redirect_uri"); v != "" {
					sent = append(sent, v)
				}
			}
			if len(sent) != 2 || sent[0] != testRedirectURI || sent[1] != testRedirectURI {
				t.Errorf("redirect_uri sent %q", sent)
			}
			if obs := h.observations(); len(obs) == 0 || obs[0] != (observation{"Facebook", facebook.OpAuthorizationCode, 200}) {
				t.Errorf("observations %v", obs)
			}
			// The code is spent: a second bootstrap needs a human.
			_, err = h.client.Bootstrap(context.Background(), req, facebook.KeyAuthorizationCode)
			h.checkNoLeak(err)
			wantProviderError(t, err, provider.KindReauthorize, "AuthorizationCodeUsed")
		})
	}
}

func TestAuthorizationCodeErrors(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(h *harness) provider.Request
		wantKind   provider.Kind
		wantReason string
		wantCalls  int // code exchange requests
	}{
		{"used", func(h *harness) provider.Request {
			c := h.fake.IssueAuthorizationCode(testRedirectURI)
			if _, err := h.client.Bootstrap(context.Background(), codeRequest(c), facebook.KeyAuthorizationCode); err != nil {
				h.t.Fatal(err)
			}
			return codeRequest(c)
		}, provider.KindReauthorize, "AuthorizationCodeUsed", 2},
		{"expired", func(h *harness) provider.Request {
			c := h.fake.IssueAuthorizationCode(testRedirectURI)
			h.clk.Step(facebookfake.DefaultCodeTTL + time.Second)
			return codeRequest(c)
		}, provider.KindReauthorize, "AuthorizationCodeExpired", 1},
		{"redirect URI differs from the dialog's", func(h *harness) provider.Request {
			return codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI + "/"))
		}, provider.KindConfiguration, "RedirectURIMismatch", 1},
		{"unknown code", func(h *harness) provider.Request {
			return codeRequest("AQ" + strings.Repeat("k", 80))
		}, provider.KindReauthorize, "AuthorizationCodeInvalid", 1},
		{"recorded body without subcode", func(h *harness) provider.Request {
			h.fake.FailNext(facebookfake.OpAuthorizationCode, 1, 400, `{"error":{"message":"This authorization code has expired.","type":"OAuthException","code":100}}`,
				http.Header{"Www-Authenticate": {`OAuth "Facebook Platform" "invalid_code" "This authorization code has expired."`}})
			return codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI))
		}, provider.KindReauthorize, "AuthorizationCodeInvalid", 1},
		{"wrong app secret", func(h *harness) provider.Request {
			r := codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI))
			r.Credentials["app_secret"] = []byte(testAppSecret + "x")
			return r
		}, provider.KindConfiguration, "InvalidAppSecret", 1},
		{"wrong app ID", func(h *harness) provider.Request {
			r := codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI))
			r.Credentials["app_id"] = []byte("42")
			return r
		}, provider.KindConfiguration, "InvalidAppID", 1},
		{"server error", func(h *harness) provider.Request {
			h.fake.FailNext(facebookfake.OpAuthorizationCode, 1, 503, "<html>unavailable</html>", nil)
			return codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI))
		}, provider.KindTransient, "ServerError", 1},
		{"no redirect URI in the spec", func(h *harness) provider.Request {
			r := codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI))
			r.Spec.Facebook.RedirectURI = ""
			return r
		}, provider.KindConfiguration, "RedirectURIMissing", 0},
		{"no spec.facebook", func(h *harness) provider.Request {
			r := codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI))
			r.Spec.Facebook = nil
			return r
		}, provider.KindConfiguration, "RedirectURIMissing", 0},
		{"empty code key", func(h *harness) provider.Request {
			r := codeRequest("")
			r.Credentials["access_token"] = []byte(h.fake.IssueToken(facebookfake.KindUserShort, time.Time{}))
			r.Credentials["authorization_code"] = []byte(" ")
			return r
		}, provider.KindConfiguration, "CredentialsKeyMissing", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{}, nil)
			req := tc.setup(h)
			_, err := h.client.Bootstrap(context.Background(), req, facebook.KeyAuthorizationCode)
			h.checkNoLeak(err)
			pe := wantProviderError(t, err, tc.wantKind, tc.wantReason)
			if got := h.fake.Calls(facebookfake.OpAuthorizationCode); got != tc.wantCalls {
				t.Errorf("code exchange requests = %d, want %d", got, tc.wantCalls)
			}
			if code := req.Credentials.Get("authorization_code"); len(code) > 4 && strings.Contains(pe.Error(), code) {
				t.Error("the error holds the code")
			}
			if strings.Contains(pe.Error(), "code=") || strings.Contains(pe.Error(), h.srv.URL) {
				t.Errorf("the error holds a request URL: %v", pe)
			}
			if tc.wantReason == "RedirectURIMissing" && !strings.Contains(pe.Message, "spec.facebook.redirectURI") {
				t.Errorf("message %q does not name spec.facebook.redirectURI", pe.Message)
			}
		})
	}
}

// TestAuthorizationCodeThenPassingFailure: after the code is spent, a
// passing debug_token failure does not lose the user token; a transient
// failure of the long-lived exchange or of the Page token is tried again;
// one that lasts says the code is spent.
func TestAuthorizationCodeThenPassingFailure(t *testing.T) {
	t.Run("debug_token fails once", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, nil)
		h.fake.FailNext(facebookfake.OpDebugToken, 1, 502, "<html>Bad Gateway</html>", nil)
		tok, err := h.client.Bootstrap(context.Background(), codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI, "ads_read")), facebook.KeyAuthorizationCode)
		if err != nil {
			t.Fatalf("Bootstrap: %v", err)
		}
		if tok.Type != facebook.TypeUserLongLived || !tok.ExpiresAt.Equal(t0.Add(60*day)) || !slices.Equal(tok.Scopes, []string{"ads_read"}) {
			t.Errorf("token: %s %v %v", tok.Type, tok.ExpiresAt, tok.Scopes)
		}
	})
	t.Run("the exchange fails once", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, nil)
		h.fake.FailNext(facebookfake.OpExchange, 1, 502, "<html>Bad Gateway</html>", nil)
		tok, err := h.client.Bootstrap(context.Background(), codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI)), facebook.KeyAuthorizationCode)
		if err != nil || tok.Type != facebook.TypeUserLongLived || h.fake.Calls(facebookfake.OpExchange) != 2 {
			t.Fatalf("Bootstrap: %v (exchange calls %d), want the long-lived token on the second try", err, h.fake.Calls(facebookfake.OpExchange))
		}
	})
	t.Run("the Page token fails once", func(t *testing.T) {
		h := newPageRoleHarness(t)
		h.fake.FailNext(facebookfake.OpPage, 1, 502, "<html>Bad Gateway</html>", nil)
		req := codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI, "pages_show_list"))
		req.Spec.Facebook.PageID = "1234567890"
		tok, err := h.client.Bootstrap(context.Background(), req, facebook.KeyAuthorizationCode)
		if err != nil || tok.PublishedAccessToken == "" || h.fake.Calls(facebookfake.OpPage) != 2 {
			t.Fatalf("Bootstrap: %v (Page calls %d), want the Page token on the second try", err, h.fake.Calls(facebookfake.OpPage))
		}
	})
	t.Run("the exchange keeps failing", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, nil)
		h.fake.FailNext(facebookfake.OpExchange, 10, 502, "<html>Bad Gateway</html>", nil)
		_, err := h.client.Bootstrap(context.Background(), codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI)), facebook.KeyAuthorizationCode)
		h.checkNoLeak(err)
		pe := wantProviderError(t, err, provider.KindTransient, "ServerError")
		if !strings.Contains(pe.Message, "works only once") {
			t.Errorf("message %q", pe.Message)
		}
	})
	t.Run("a code of another app's token is refused as usual", func(t *testing.T) {
		h := newHarness(t, facebookfake.Options{}, nil)
		h.fake.FailNext(facebookfake.OpDebugToken, 1, 200, `{"data":{"app_id":"111","type":"USER","is_valid":true,"expires_at":1,"scopes":[]}}`, nil)
		_, err := h.client.Bootstrap(context.Background(), codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI)), facebook.KeyAuthorizationCode)
		wantProviderError(t, err, provider.KindConfiguration, "AppMismatch")
	})
}

// newPageRoleHarness is a harness whose Page 1234567890 gives a role to
// every token that asks for it: the user behind a code has a role there.
func newPageRoleHarness(t *testing.T) *harness {
	return newHarness(t, facebookfake.Options{}, func(next http.Handler) http.Handler {
		fake := next.(*facebookfake.Server)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/1234567890") {
				fake.AddPage("1234567890", r.URL.Query().Get("access_token"))
			}
			fake.ServeHTTP(w, r)
		})
	})
}

func TestAuthorizationCodeWithPage(t *testing.T) {
	h := newPageRoleHarness(t)
	req := codeRequest(h.fake.IssueAuthorizationCode(testRedirectURI, "pages_show_list"))
	req.Spec.Facebook.PageID = "1234567890"
	tok, err := h.client.Bootstrap(context.Background(), req, facebook.KeyAuthorizationCode)
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	if tok.Type != facebook.TypeUserLongLived || tok.PublishedAccessToken == "" || tok.PublishedAccessToken != h.fake.PageToken(tok.AccessToken, "1234567890") {
		t.Fatalf("type %s, page token set %v", tok.Type, tok.PublishedAccessToken != "")
	}
}

func TestConsentURL(t *testing.T) {
	spec := func(redirectURI, version string, scopes ...string) *tokensv1alpha1.ManagedTokenSpec {
		return &tokensv1alpha1.ManagedTokenSpec{Provider: tokensv1alpha1.ProviderFacebook,
			Facebook: &tokensv1alpha1.FacebookSpec{RedirectURI: redirectURI, GraphAPIVersion: version, Scopes: scopes}}
	}
	const cb = "https://op.example.com/callback/facebook"
	encCB := url.QueryEscape(cb)
	tests := []struct {
		name, base string
		spec       *tokensv1alpha1.ManagedTokenSpec
		appID      string
		want       string // "": an error
		wantReason string
	}{
		{"default base and version", "", spec(cb, ""), testAppID,
			"https://www.facebook.com/" + tokensv1alpha1.DefaultGraphAPIVersion + "/dialog/oauth?client_id=" + testAppID + "&redirect_uri=" + encCB + "&response_type=code", ""},
		{"scopes", "", spec(cb, "v25.0", "ads_read", "pages_show_list"), testAppID,
			"https://www.facebook.com/v25.0/dialog/oauth?client_id=" + testAppID + "&redirect_uri=" + encCB + "&response_type=code&scope=ads_read%2Cpages_show_list", ""},
		{"sandbox base with path", "http://127.0.0.1:9000/graph/", spec("http://127.0.0.1:8443/callback/facebook?a=1&b=2", "v26.0"), testAppID,
			"http://127.0.0.1:9000/graph/v26.0/dialog/oauth?client_id=" + testAppID + "&redirect_uri=" + url.QueryEscape("http://127.0.0.1:8443/callback/facebook?a=1&b=2") + "&response_type=code", ""},
		{"no redirect URI", "", spec("", ""), testAppID, "", "RedirectURIMissing"},
		{"no spec.facebook", "", &tokensv1alpha1.ManagedTokenSpec{}, testAppID, "", "RedirectURIMissing"},
		{"no app ID", "", spec(cb, ""), " ", "", "CredentialsKeyMissing"},
		{"app token as app ID", "", spec(cb, ""), testAppID + "|" + testAppSecret, "", "InvalidAppID"},
		{"bad version", "", spec(cb, "26"), testAppID, "", "InvalidGraphAPIVersion"},
		{"base with query", "https://www.facebook.com/?x=1", spec(cb, ""), testAppID, "", "InvalidDialogURL"},
		{"relative base", "www.facebook.com", spec(cb, ""), testAppID, "", "InvalidDialogURL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := facebook.ConsentURL(tc.base, tc.spec, tc.appID)
			if tc.want == "" {
				pe := wantProviderError(t, err, provider.KindConfiguration, tc.wantReason)
				if got != "" || strings.Contains(pe.Error(), testAppSecret) {
					t.Fatalf("got %q, %v", got, pe)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v\nwant %q", got, err, tc.want)
			}
			u, err := url.Parse(got + "&state=eyJ0IjoxfQ_-x")
			if err != nil {
				t.Fatal(err)
			}
			q := u.Query()
			if q.Get("state") != "eyJ0IjoxfQ_-x" || q.Get("redirect_uri") != tc.spec.Facebook.RedirectURI || q.Get("client_id") != testAppID {
				t.Errorf("query after appending state: %v", q)
			}
			if want := strings.Join(tc.spec.Facebook.Scopes, ","); q.Get("scope") != want {
				t.Errorf("scope %q, want %q", q.Get("scope"), want)
			}
		})
	}
}
