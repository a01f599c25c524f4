package amocrm

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

func wantKeywords(t *testing.T, pe *provider.Error, keywords ...string) {
	t.Helper()
	for _, k := range keywords {
		if !strings.Contains(pe.Message, k) {
			t.Errorf("%s: message lacks %q: %s", pe.Reason, k, pe.Message)
		}
	}
}

// TestRecordedAccountAnswers is the table of real-world AmoCRM answers the
// client used to misread (docs/providers.md, "AmoCRM / Kommo"): one row per
// case, in both body shapes where the shape is unconfirmed.
func TestRecordedAccountAnswers(t *testing.T) {
	cases := []struct {
		name     string
		set      func(f *amocrmfake.Server)
		kind     provider.Kind
		reason   string
		keywords []string
	}{
		{"plain token 401", func(f *amocrmfake.Server) { f.RevokeAll() }, provider.KindTokenRejected, "AccessTokenRejected", []string{"401"}},
		{"101 account not found", func(f *amocrmfake.Server) { f.SetAccountError(amocrmfake.ErrAccountNotFound) }, provider.KindConfiguration, "AccountNotFound",
			[]string{"spec.amocrm.domain", "example.amocrm.ru", "kommo.com", "account 31234567 on amocrm.ru"}},
		{"call another server", func(f *amocrmfake.Server) { f.SetAccountError(amocrmfake.ErrAnotherServer) }, provider.KindConfiguration, "AccountOnAnotherServer",
			[]string{"spec.amocrm.domain", "another server"}},
		{"110 authorization error", func(f *amocrmfake.Server) { f.SetAccountError(amocrmfake.ErrAuthorization) }, provider.KindReauthorize, "AuthorizationFailed",
			[]string{"code 110", "authorization_code"}},
		{"111 captcha", func(f *amocrmfake.Server) { f.SetAccountError(amocrmfake.ErrCaptcha) }, provider.KindBlocked, "CaptchaRequired",
			[]string{"captcha", "browser", "kubectl tokenkeeper refresh"}},
		{"112 user disabled", func(f *amocrmfake.Server) { f.SetAccountError(amocrmfake.ErrUserDisabled) }, provider.KindReauthorize, "UserDisabled",
			[]string{"disabled", "authorization_code"}},
		{"403 code 113 IP allow-list", func(f *amocrmfake.Server) { f.SetIPAllowList(true) }, provider.KindBlocked, "IPNotAllowed",
			[]string{"allow-list", "127.0.0.1", "egress"}},
		{"403 nginx page", func(f *amocrmfake.Server) { f.SetBlocked(true) }, provider.KindBlocked, "ProviderBlocked",
			[]string{"IP block", "allow-list"}},
	}
	for _, shape := range []amocrmfake.ErrorShape{amocrmfake.ShapeResponse, amocrmfake.ShapeProblem} {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				h := newHarness(t, func(o *amocrmfake.Options) { o.ErrorShape = shape }, nil)
				tok := h.bootstrap()
				tc.set(h.fake)
				refreshes := h.fake.Calls("refresh_token")
				_, err := h.client.Probe(context.Background(), request(), tok)
				pe := asProviderError(t, err)
				if pe.Kind != tc.kind || pe.Reason != tc.reason {
					t.Fatalf("shape %d: got %v/%s (%v), want %v/%s", shape, pe.Kind, pe.Reason, err, tc.kind, tc.reason)
				}
				wantKeywords(t, pe, tc.keywords...)
				if h.fake.Calls("refresh_token") != refreshes {
					t.Fatal("a probe must never refresh")
				}
				checkNoLeak(t, []error{err}, h.fake.Secrets())
			})
		}
	}
}

// TestBadClientNamesAllThree: "Некорректный клиент" is what the server
// answers most often for a redirect_uri mismatch; the hint exists too
// (unconfirmed): both are covered.
func TestBadClientNamesAllThree(t *testing.T) {
	for _, mode := range []amocrmfake.RedirectMismatch{amocrmfake.RedirectMismatchBadClient, amocrmfake.RedirectMismatchHint} {
		h := newHarness(t, func(o *amocrmfake.Options) { o.RedirectMismatch = mode }, nil)
		req := request("refresh_token", h.fake.IssueRefreshToken())
		req.Spec.AmoCRM.RedirectURI = testRedirectURI + "/"
		_, err := h.client.Bootstrap(context.Background(), req, GrantRefreshToken)
		pe := asProviderError(t, err)
		if mode == amocrmfake.RedirectMismatchBadClient {
			if pe.Kind != provider.KindConfiguration || pe.Reason != "InvalidClient" {
				t.Fatalf("bad client: %+v", pe)
			}
			wantKeywords(t, pe, "spec.amocrm.redirectURI", "client_id", "client_secret", "character for character", "trailing slash", "Settings > Integrations")
		} else if pe.Reason != "RedirectURIMismatch" {
			t.Fatalf("hint: %+v", pe)
		}
	}
}

// TestCrossChecksAndClientUUID: X-Client-UUID on every API call; a token
// of another integration (JWT aud) and a long-lived token of an account on
// another base domain are named.
func TestCrossChecksAndClientUUID(t *testing.T) {
	h := newHarness(t, nil, nil)
	tok := h.bootstrap()
	if _, err := h.client.Probe(context.Background(), request(), tok); err != nil {
		t.Fatal(err)
	}
	if u := h.fake.ClientUUIDs(); len(u) != 1 || u[0] != testClientID {
		t.Fatalf("X-Client-UUID %v", u)
	}
	_, err := h.client.Probe(context.Background(), request("client_id", "another-integration"), tok)
	pe := asProviderError(t, err)
	if pe.Reason != "TokenClientMismatch" || pe.Kind != provider.KindConfiguration {
		t.Fatalf("aud mismatch: %+v", pe)
	}
	wantKeywords(t, pe, "client_id", "aud")

	k := newHarness(t, func(o *amocrmfake.Options) { o.Domain = "example.kommo.com" }, nil)
	ll := k.fake.IssueLongLivedToken(t0.Add(365 * 24 * time.Hour))
	_, err = k.client.Bootstrap(context.Background(), request("client_id", "", "client_secret", "", "access_token", ll), GrantAccessToken)
	pe = asProviderError(t, err)
	if pe.Reason != "AccountDomainMismatch" {
		t.Fatalf("base_domain mismatch: %+v", pe)
	}
	wantKeywords(t, pe, "kommo.com", "spec.amocrm.domain", "example.amocrm.ru")
	if k.fake.Calls("account") != 0 {
		t.Fatal("a mismatched long-lived token must not be sent to the wrong host")
	}
}

// TestDomainMoveIsFollowed: after amocrm.ru -> kommo.com, the old host
// refuses; the probe looks the new host up with the refresh token (not
// consumed), checks the token there and returns it with APIDomain; later
// refreshes and probes go to the new host.
func TestDomainMoveIsFollowed(t *testing.T) {
	for _, notFound := range []bool{false, true} {
		h := newHarness(t, nil, nil)
		tok := h.bootstrap()
		h.fake.MoveAccount("example.kommo.com", notFound)
		got, err := h.client.Probe(context.Background(), request(), tok)
		if err != nil {
			t.Fatalf("notFound=%v: %v", notFound, err)
		}
		if got.APIDomain != "example.kommo.com" || got.RefreshToken != tok.RefreshToken || h.fake.Calls("subdomain") != 1 {
			t.Fatalf("APIDomain %q, subdomain calls %d", got.APIDomain, h.fake.Calls("subdomain"))
		}
		if h.fake.CurrentRefreshToken() != tok.RefreshToken {
			t.Fatal("the lookup must not consume the refresh token")
		}
		next, err := h.client.Refresh(context.Background(), request(), got)
		if err != nil {
			t.Fatalf("refresh on the new host: %v", err)
		}
		if next.APIDomain != "example.kommo.com" {
			t.Fatalf("the refreshed token must keep the new host: %q", next.APIDomain)
		}
		old := h.fake.Calls("old_host")
		if _, err := h.client.Probe(context.Background(), request(), next); err != nil || h.fake.Calls("old_host") != old {
			t.Fatalf("probe after the move: %v (old host calls %d -> %d)", err, old, h.fake.Calls("old_host"))
		}
		if h.fake.ReusedRefreshTokens() != 0 {
			t.Fatal("a refresh token was reused")
		}
	}
}

// TestRefreshFollowsAMove: the account moved and a refresh falls due
// before any probe has noticed. The token endpoint of the old host answers
// a documented account-level 401 (in either body shape), which did not use
// the refresh token: the client looks the new host up and refreshes there,
// instead of asking a human to re-authorize (ShapeProblem) or retrying the
// old host forever (ShapeResponse).
func TestRefreshFollowsAMove(t *testing.T) {
	for _, shape := range []amocrmfake.ErrorShape{amocrmfake.ShapeResponse, amocrmfake.ShapeProblem} {
		for _, notFound := range []bool{false, true} {
			h := newHarness(t, func(o *amocrmfake.Options) { o.ErrorShape = shape }, nil)
			tok := h.bootstrap()
			h.fake.MoveAccount("example.kommo.com", notFound)
			next, err := h.client.Refresh(context.Background(), request(), tok)
			if err != nil {
				t.Fatalf("shape %v, notFound=%v: %v", shape, notFound, err)
			}
			if next.APIDomain != "example.kommo.com" || h.fake.Calls("subdomain") != 1 {
				t.Fatalf("shape %v, notFound=%v: APIDomain %q, subdomain calls %d", shape, notFound, next.APIDomain, h.fake.Calls("subdomain"))
			}
			if !h.fake.RefreshTokenLive(next.RefreshToken) || h.fake.ReusedRefreshTokens() != 0 {
				t.Fatalf("shape %v, notFound=%v: the new pair is not live, or a refresh token was reused", shape, notFound)
			}
		}
	}
}

// TestRefreshOnAMoveWithoutLookupIsAConfigurationError: the account moved
// and its new host cannot be looked up (a token issued before api_domain
// existed): the refresh reports the move (set spec.amocrm.domain), not a
// revoked token, and the refresh token stays live.
func TestRefreshOnAMoveWithoutLookupIsAConfigurationError(t *testing.T) {
	h := newHarness(t, func(o *amocrmfake.Options) { o.ErrorShape = amocrmfake.ShapeProblem }, nil)
	tok := h.bootstrap()
	h.fake.MoveAccount("renamed.amocrm.ru", false)
	old := *tok
	old.AccessToken = "not-a-jwt" // no api_domain claim to look the host up with
	_, err := h.client.Refresh(context.Background(), request(), &old)
	pe := asProviderError(t, err)
	if pe.Kind != provider.KindConfiguration || pe.Reason != "AccountOnAnotherServer" {
		t.Fatalf("got %+v", pe)
	}
	wantKeywords(t, pe, "spec.amocrm.domain")
	if !h.fake.RefreshTokenLive(tok.RefreshToken) {
		t.Fatal("the refresh token must still be live")
	}
}

// TestDomainMoveReportedForLongLivedTokens: no refresh token, so no lookup:
// the condition names the domain the token belongs to.
func TestDomainMoveReportedForLongLivedTokens(t *testing.T) {
	h := newHarness(t, nil, nil)
	ll := h.fake.IssueLongLivedToken(t0.Add(365 * 24 * time.Hour))
	req := request("client_id", "", "client_secret", "", "access_token", ll)
	tok, err := h.client.Bootstrap(context.Background(), req, GrantAccessToken)
	if err != nil {
		t.Fatal(err)
	}
	h.fake.MoveAccount("renamed.amocrm.ru", false)
	_, err = h.client.Probe(context.Background(), req, tok)
	pe := asProviderError(t, err)
	if pe.Reason != "AccountOnAnotherServer" || pe.Kind != provider.KindConfiguration {
		t.Fatalf("got %+v", pe)
	}
	wantKeywords(t, pe, "example.amocrm.ru", "spec.amocrm.domain", "account 31234567 on amocrm.ru")
	if h.fake.Calls("subdomain") != 0 {
		t.Fatal("a long-lived token has no refresh token to look the host up with")
	}
}

// TestFollowMoveRefusesForeignHosts: the lookup answer must name an allowed
// host of the token's own account.
func TestFollowMoveRefusesForeignHosts(t *testing.T) {
	for _, tc := range []struct{ body, reason string }{
		{`{"id":31234567,"subdomain":"x","domain":"x.evil.example","top_level_domain":"example"}`, "AccountDomainNotAllowed"},
		{`{"id":999,"subdomain":"x","domain":"x.kommo.com","top_level_domain":"com"}`, "AccountMismatch"},
	} {
		h := newHarness(t, nil, nil)
		tok := h.bootstrap()
		claims, _ := decodeJWT(tok.AccessToken)
		srvDomain := ""
		c := New(Options{BaseURL: h.srv.URL, RequestsPerSecond: 1000, HTTPClient: newStaticClient(tc.body, &srvDomain)})
		_, perr := c.followMove(context.Background(), request(), tok.RefreshToken, claims)
		if perr == nil || perr.Reason != tc.reason {
			t.Fatalf("got %+v, want %s", perr, tc.reason)
		}
		if !slices.Contains([]string{"api-b.amocrm.ru"}, srvDomain) {
			t.Fatalf("lookup sent to host %q, want the JWT api_domain", srvDomain)
		}
	}
}

// newStaticClient answers every request with 200 and body, recording the
// Host header.
func newStaticClient(body string, host *string) *http.Client {
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		*host = r.Host
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(body)), Header: http.Header{}, Request: r}, nil
	})}
}
