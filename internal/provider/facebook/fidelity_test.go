package facebook_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// TestRecordedAnswers is the table of real-world Graph answers that the
// client used to misread (docs/providers.md, "Facebook"): one row per
// case, asserting kind, reason, wait and the keywords a human needs.
func TestRecordedAnswers(t *testing.T) {
	C, Th := provider.KindConfiguration, provider.KindThrottled
	cases := []struct {
		name       string
		op         string // "refresh" or "debug_token"
		status     int
		body       string
		header     http.Header
		kind       provider.Kind
		reason     string
		retryAfter time.Duration
		keywords   []string
	}{
		{name: "100 missing appsecret_proof (Require App Secret)", status: 400,
			body: `{"error":{"message":"API calls from the server require an appsecret_proof argument","type":"GraphMethodException","code":100,"fbtrace_id":"A"}}`,
			kind: C, reason: "AppSecretProofRejected", keywords: []string{"app_secret", "Require App Secret", "App settings > Basic"}},
		{name: "100 invalid appsecret_proof", op: "debug_token", status: 400,
			body: `{"error":{"message":"Invalid appsecret_proof provided in the API argument","type":"GraphMethodException","code":100,"fbtrace_id":"A"}}`,
			kind: C, reason: "AppSecretProofRejected", keywords: []string{"app_secret", "credentials Secret"}},
		{name: "100 other invalid parameter", status: 400, body: envelope(100, 0, ""),
			kind: C, reason: "GraphInvalidRequest", keywords: []string{"app_id", "app_secret", "code 100"}},
		{name: "100/33 unknown object", status: 400, body: envelope(100, 33, ""),
			kind: C, reason: "PageNotFound", keywords: []string{"spec.facebook.pageID", "role on the Page"}},
		{name: "101 wrong app ID", status: 400,
			body: `{"error":{"message":"Error validating application. Invalid application ID.","type":"OAuthException","code":101,"fbtrace_id":"A"}}`,
			kind: C, reason: "InvalidAppID", keywords: []string{"app_id", "App ID"}},
		{name: "3 capability", status: 400, body: `{"error":{"message":"(#3) Application does not have the capability to make this API call.","type":"OAuthException","code":3,"fbtrace_id":"A"}}`,
			kind: C, reason: "AppCapabilityMissing", keywords: []string{"capability", "Meta App Dashboard"}},
		{name: "4 app limit, X-App-Usage without regain time", status: 403, body: envelope(4, 0, ""),
			header: http.Header{"X-App-Usage": {`{"call_count":100,"total_cputime":12,"total_time":20}`}},
			kind:   Th, reason: "RateLimited", retryAfter: time.Hour, keywords: []string{"hourly call limit", "debug_token"}},
		{name: "4 app limit, no header", op: "debug_token", status: 403, body: envelope(4, 0, ""),
			kind: Th, reason: "RateLimited", retryAfter: 15 * time.Minute, keywords: []string{"hourly call limit"}},
		{name: "368 temporarily blocked", status: 400, body: envelope(368, 0, ""),
			kind: Th, reason: "TemporarilyBlocked", retryAfter: time.Hour, keywords: []string{"policy", "an hour"}},
		{name: `debug_token {"data":[]}`, op: "debug_token", status: 200, body: `{"data":[]}`,
			kind: C, reason: "DebugTokenEmpty", keywords: []string{"development mode", "app_id", "access_token"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{}, nil)
			tok := h.fake.IssueToken(facebookfake.KindSystemUserExpiring, t0.Add(10*day))
			op := tc.op
			if op == "" {
				op = "refresh"
			}
			h.fake.FailNext(op, 1, tc.status, tc.body, tc.header)
			cur := &provider.Token{AccessToken: tok, Type: facebook.TypeSystemUserExpiring, Expires: true, ExpiresAt: t0.Add(10 * day), Refreshable: true}
			var err error
			if op == "refresh" {
				_, err = h.client.Refresh(context.Background(), request(tok), cur)
			} else {
				_, err = h.client.Probe(context.Background(), request(tok), cur)
			}
			pe := wantProviderError(t, err, tc.kind, tc.reason)
			if pe.RetryAfter != tc.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", pe.RetryAfter, tc.retryAfter)
			}
			for _, k := range tc.keywords {
				if !strings.Contains(pe.Message, k) {
					t.Errorf("message lacks %q: %s", k, pe.Message)
				}
			}
			h.checkNoLeak(err)
		})
	}
}

// TestRequireAppSecret: an app with "Require App Secret" works end to end,
// whether or not app-token calls need a proof (unconfirmed: both switches).
func TestRequireAppSecret(t *testing.T) {
	for _, appTokenNeedsProof := range []bool{false, true} {
		h := newHarness(t, facebookfake.Options{RequireAppSecret: true, AppTokenCallsNeedProof: appTokenNeedsProof}, nil)
		short := h.fake.IssueToken(facebookfake.KindUserShort, time.Time{})
		tok, err := h.client.Bootstrap(context.Background(), request(short), "access_token")
		if err != nil {
			t.Fatalf("bootstrap (app-token proof %v): %v", appTokenNeedsProof, err)
		}
		if _, err := h.client.Probe(context.Background(), request(short), tok); err != nil {
			t.Fatalf("probe: %v", err)
		}
		if h.fake.Proofs(facebookfake.OpDebugToken) != h.fake.Calls(facebookfake.OpDebugToken) {
			t.Fatalf("every debug_token must carry a correct proof: %d of %d", h.fake.Proofs(facebookfake.OpDebugToken), h.fake.Calls(facebookfake.OpDebugToken))
		}
	}
}

func pageRequest(token, pageID string) provider.Request {
	r := request(token)
	r.Spec.Facebook = &tokensv1alpha1.FacebookSpec{PageID: pageID}
	return r
}

// TestPageToken: with spec.facebook.pageID, the Page token is derived from
// the managed token, published (PublishedAccessToken), and both are
// watched; a dead user token or Page role is named precisely.
func TestPageToken(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, facebookfake.Options{RequireAppSecret: true}, nil)
	user := h.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	h.fake.AddPage("104169029247128", user)
	req := pageRequest(user, "104169029247128")

	tok, err := h.client.Bootstrap(ctx, req, "access_token")
	if err != nil {
		t.Fatal(err)
	}
	page := h.fake.PageToken(user, "104169029247128")
	if page == "" || tok.AccessToken != user || tok.PublishedAccessToken != page || tok.Published() != page {
		t.Fatalf("bootstrap: managed %v, published %v", tok.AccessToken == user, tok.PublishedAccessToken == page)
	}
	if tok.Expires || tok.Type != facebook.TypeSystemUserNonExpiring {
		t.Fatalf("a Page token from a system-user token does not expire: %+v", tok)
	}
	if h.fake.Proofs(facebookfake.OpPage) != 1 {
		t.Fatal("the Page request must carry appsecret_proof")
	}

	// Probe: both tokens checked, nothing derived again.
	debugs := h.fake.Calls(facebookfake.OpDebugToken)
	got, err := h.client.Probe(ctx, req, tok)
	if err != nil || got.PublishedAccessToken != page {
		t.Fatalf("probe: %v", err)
	}
	if n := h.fake.Calls(facebookfake.OpDebugToken) - debugs; n != 2 || h.fake.Calls(facebookfake.OpPage) != 1 {
		t.Fatalf("probe made %d debug_token and %d page calls, want 2 and 1 in all", n, h.fake.Calls(facebookfake.OpPage))
	}

	// The Page token alone dies (say Meta invalidated it): derived again.
	h.fake.SetTokenError(page, 190, 467)
	got, err = h.client.Probe(ctx, req, tok)
	if err != nil {
		t.Fatalf("probe after the Page token died: %v", err)
	}
	newPage := h.fake.PageToken(user, "104169029247128")
	if got.PublishedAccessToken != newPage || newPage == page {
		t.Fatal("a dead Page token must be replaced by a new one derived from the user token")
	}

	// The role on the Page is removed: the Page token dies and none can
	// be derived.
	h.fake.RemovePageRole("104169029247128", user)
	_, err = h.client.Probe(ctx, req, got)
	pe := wantProviderError(t, err, provider.KindReauthorize, "PageTokenInvalid")
	for _, k := range []string{"104169029247128", "spec.facebook.pageID", "role on the Page", "access_token"} {
		if !strings.Contains(pe.Message, k) {
			t.Errorf("message lacks %q: %s", k, pe.Message)
		}
	}
	h.checkNoLeak(err)

	// The user token is revoked: the managed token's own reason, and the
	// message says the Page token dies with it.
	h.fake.AddPage("104169029247128", user)
	h.fake.Revoke(user)
	_, err = h.client.Probe(ctx, req, got)
	pe = wantProviderError(t, err, provider.KindReauthorize, "TokenInvalid")
	if !strings.Contains(pe.Message, "Page token") || !strings.Contains(pe.Message, "104169029247128") || !strings.Contains(pe.Message, "access_token") {
		t.Errorf("message: %s", pe.Message)
	}
	h.checkNoLeak(err)
}

func TestPageTokenErrors(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, facebookfake.Options{}, nil)
	user := h.fake.IssueToken(facebookfake.KindUserLong, t0.Add(50*day))
	h.fake.AddPage("777", user)

	// No role on that Page: no access_token in the answer.
	_, err := h.client.Bootstrap(ctx, pageRequest(user, "778"), "access_token")
	wantProviderError(t, err, provider.KindConfiguration, "PageNotFound")
	other := h.fake.IssueToken(facebookfake.KindUserLong, t0.Add(50*day))
	h.fake.AddPage("779")
	_, err = h.client.Bootstrap(ctx, pageRequest(other, "779"), "access_token")
	pe := wantProviderError(t, err, provider.KindReauthorize, "PageTokenUnavailable")
	if !strings.Contains(pe.Message, "role") || !strings.Contains(pe.Message, "779") {
		t.Errorf("message: %s", pe.Message)
	}
	// The same user where Graph answers an error instead (unconfirmed
	// which): a human must act either way.
	herr := newHarness(t, facebookfake.Options{PageRoleError: true}, nil)
	other = herr.fake.IssueToken(facebookfake.KindUserLong, t0.Add(50*day))
	herr.fake.AddPage("779")
	_, err = herr.client.Bootstrap(ctx, pageRequest(other, "779"), "access_token")
	if pe := provider.AsError(err); pe == nil || pe.Kind != provider.KindReauthorize || pe.Reason != "NoPageRole" || !strings.Contains(pe.Message, "role") {
		t.Errorf("no role, answered with 190/492: %+v", pe)
	}

	// A Page token in access_token with pageID set.
	pageTok := h.fake.IssueToken(facebookfake.KindPage, time.Time{})
	_, err = h.client.Bootstrap(ctx, pageRequest(pageTok, "777"), "access_token")
	wantProviderError(t, err, provider.KindConfiguration, "PageIDNeedsUserToken")

	// A long-lived user token: Page token published, the user token's
	// expiry kept (the Page token dies with the user's session).
	tok, err := h.client.Bootstrap(ctx, pageRequest(user, "777"), "access_token")
	if err != nil || tok.PublishedAccessToken == "" || !tok.Expires || !tok.ExpiresAt.Equal(t0.Add(50*day)) {
		t.Fatalf("long-lived user token with a Page: %+v %v", tok, err)
	}
	// pageID removed: the managed token is published again.
	got, err := h.client.Probe(ctx, request(user), tok)
	if err != nil || got.PublishedAccessToken != "" || got.Published() != user {
		t.Fatalf("without pageID: %v", err)
	}
}

// TestUnknownTokenTypeIsMonitored: a Login-for-Business token is adopted,
// monitored and named, not halted as a configuration error.
func TestUnknownTokenTypeIsMonitored(t *testing.T) {
	h := newHarness(t, facebookfake.Options{}, nil)
	tok := h.fake.IssueToken(facebookfake.KindBusinessIntegrationSystemUser, time.Time{})
	got, err := h.client.Bootstrap(context.Background(), request(tok), "access_token")
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != "FacebookBusinessIntegrationSystemUser" || got.Refreshable || got.Expires || got.AccessToken != tok {
		t.Fatalf("got %+v", got)
	}
	if _, err := h.client.Probe(context.Background(), request(tok), got); err != nil {
		t.Fatal(err)
	}
	if h.fake.Calls("exchange") != 0 || h.fake.Calls("refresh") != 0 {
		t.Fatal("an unknown type must never be exchanged")
	}
	h.fake.SetEmptyDebugData(tok, true)
	_, err = h.client.Probe(context.Background(), request(tok), got)
	wantProviderError(t, err, provider.KindConfiguration, "DebugTokenEmpty")
}

// TestAppUsageSlowsDown: X-App-Usage at or above 90% holds every call of
// that app back (no request is made) for a time that grows with usage; the
// answer that carried the header is still returned.
func TestAppUsageSlowsDown(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, facebookfake.Options{}, nil)
	tok := h.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	cur, err := h.client.Bootstrap(ctx, request(tok), "access_token")
	if err != nil {
		t.Fatal(err)
	}
	h.fake.SetAppUsage(89, 10, 10)
	if _, err := h.client.Probe(ctx, request(tok), cur); err != nil {
		t.Fatalf("89%%: %v", err)
	}
	h.fake.SetAppUsage(20, 95, 10)
	if _, err := h.client.Probe(ctx, request(tok), cur); err != nil {
		t.Fatalf("the answer carrying 95%% must still be returned: %v", err)
	}
	calls := h.fake.Calls(facebookfake.OpDebugToken)
	_, err = h.client.Probe(ctx, request(tok), cur)
	pe := wantProviderError(t, err, provider.KindThrottled, "AppUsageHigh")
	want := 5*time.Minute + 27*time.Minute + 30*time.Second // halfway from 90% to 100%
	if pe.RetryAfter != want {
		t.Fatalf("RetryAfter %v, want %v", pe.RetryAfter, want)
	}
	if h.fake.Calls(facebookfake.OpDebugToken) != calls {
		t.Fatal("a held-back call must not reach Facebook")
	}
	h.clk.Step(want + time.Second)
	h.fake.SetAppUsage(0, 0, 0)
	if _, err := h.client.Probe(ctx, request(tok), cur); err != nil {
		t.Fatalf("after the wait: %v", err)
	}

	// The app's own budget: every debug_token counts; code 4 then holds
	// the app back too.
	h2 := newHarness(t, facebookfake.Options{AppCallsPerHour: 3}, nil)
	tok2 := h2.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
	cur2, err := h2.client.Bootstrap(ctx, request(tok2), "access_token") // 1 call: 33%
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h2.client.Probe(ctx, request(tok2), cur2); err != nil { // 66%
		t.Fatal(err)
	}
	if _, err := h2.client.Probe(ctx, request(tok2), cur2); err != nil { // 100%: returned, then held back
		t.Fatal(err)
	}
	_, err = h2.client.Probe(ctx, request(tok2), cur2)
	if pe := wantProviderError(t, err, provider.KindThrottled, "AppUsageHigh"); pe.RetryAfter != time.Hour {
		t.Fatalf("at 100%%: %v", pe.RetryAfter)
	}
	if h2.fake.Calls(facebookfake.OpDebugToken) != 3 {
		t.Fatalf("debug_token calls %d, want 3", h2.fake.Calls(facebookfake.OpDebugToken))
	}
}

// TestAppThrottleWithSubcode: Graph's code 4 (app request limit) with an
// error_subcode still holds every call of the app back; it did only
// without a subcode, as the code was compared with its subcode attached.
// A huge Retry-After holds the app back for at most the one-hour window.
func TestAppThrottleWithSubcode(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"no Retry-After", nil, 15 * time.Minute},
		{"a Retry-After of years", http.Header{"Retry-After": {"9223372037"}}, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, facebookfake.Options{}, nil)
			tok := h.fake.IssueToken(facebookfake.KindSystemUserNonExpiring, time.Time{})
			cur, err := h.client.Bootstrap(ctx, request(tok), "access_token")
			if err != nil {
				t.Fatal(err)
			}
			h.fake.FailNext(facebookfake.OpDebugToken, 1, 400,
				`{"error":{"message":"(#4) Application request limit reached","type":"OAuthException","is_transient":true,"code":4,"error_subcode":1504022,"fbtrace_id":"AbCdEf"}}`, tc.header)
			_, err = h.client.Probe(ctx, request(tok), cur)
			if pe := wantProviderError(t, err, provider.KindThrottled, "RateLimited"); pe.RetryAfter <= 0 {
				t.Fatalf("code 4 with a subcode: RetryAfter %v, want a wait", pe.RetryAfter)
			}
			calls := h.fake.Calls(facebookfake.OpDebugToken)
			_, err = h.client.Probe(ctx, request(tok), cur)
			if pe := wantProviderError(t, err, provider.KindThrottled, "AppUsageHigh"); pe.RetryAfter != tc.want {
				t.Fatalf("held back for %v, want %v", pe.RetryAfter, tc.want)
			}
			if h.fake.Calls(facebookfake.OpDebugToken) != calls {
				t.Fatal("a held-back call must not reach Facebook")
			}
		})
	}
}
