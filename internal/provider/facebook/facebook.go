// Package facebook implements provider.Provider for Facebook (Meta Graph
// API) access tokens: it introspects tokens with /debug_token, exchanges
// short-lived user tokens for long-lived ones, and refreshes expiring
// system-user tokens with set_token_expires_in_60_days. For one-click
// authorization it builds the login dialog URL (ConsentURL) and exchanges
// the dialog's code for a user token (code.go).
//
// golang.org/x/oauth2 is deliberately not used: the fb_exchange_token grant
// is a non-standard GET request with the app secret in the query string,
// set_token_expires_in_60_days has no OAuth equivalent, and /debug_token is
// not OAuth at all (it takes an app access token "app_id|app_secret").
// Plain net/http keeps full control over what reaches errors and logs.
//
// Every call that carries an access token also carries appsecret_proof
// (HMAC-SHA256 of that token keyed with the app secret), as the official
// SDKs do, so apps with "Require App Secret" work. With spec.facebook.pageID
// the client derives a Page token from the managed user or system-user
// token and returns it as Token.PublishedAccessToken. The protocol facts and
// their sources are in docs/providers.md.
//
// The app secret travels in query strings, so no request URL ever reaches an
// error or a log line: transport errors go through provider.TransportError,
// and Graph API messages quoted in errors are scrubbed of the values sent.
package facebook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// ProviderName is the provider label given to the RequestObserver.
const ProviderName = "Facebook"

// DefaultBaseURL is the Graph API root (flag --facebook-url overrides it).
const DefaultBaseURL = "https://graph.facebook.com"

// Keys of the credentials Secret. KeyAuthorizationCode holds a code of the
// login dialog (kubectl tokenkeeper authorize puts one there), exchanged
// with spec.facebook.redirectURI; the same key name as AmoCRM's.
const (
	KeyAppID             = "app_id"
	KeyAppSecret         = "app_secret"
	KeyAccessToken       = "access_token"
	KeyAuthorizationCode = "authorization_code"
)

// Operation names passed to the RequestObserver and set as provider.Error.Op.
const (
	OpExchange   = "exchange"
	OpRefresh    = "refresh"
	OpDebugToken = "debug_token"
	// OpAuthorizationCode is the code exchange of the login flow:
	// GET /oauth/access_token with client_id, redirect_uri, client_secret
	// and code.
	OpAuthorizationCode = "authorization_code"
	// OpPage is GET /{page-id}?fields=access_token (Page token derivation).
	OpPage = "page"
)

// Token kinds (provider.Token.Type).
const (
	TypeUserShortLived        = "FacebookUserShortLived"
	TypeUserLongLived         = "FacebookUserLongLived"
	TypeSystemUserExpiring    = "FacebookSystemUserExpiring"
	TypeSystemUserNonExpiring = "FacebookSystemUserNonExpiring"
	TypePage                  = "FacebookPage"
	TypeApp                   = "FacebookApp"
)

// DefaultUsageThreshold is the X-App-Usage percentage (of call_count,
// total_cputime or total_time) from which the client slows down.
const DefaultUsageThreshold = 90

const (
	shortLivedThreshold          = 24 * time.Hour
	noExtensionTolerance         = time.Hour
	pathExchange                 = "/oauth/access_token"
	pathDebugToken               = "/debug_token"
	grantTypeExchange            = "fb_exchange_token"
	paramSetTokenExpiresIn60Days = "set_token_expires_in_60_days"
)

var versionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+$`)

// Options configure a Client.
type Options struct {
	// HTTPClient defaults to a client with a 30 s timeout. It is copied and
	// never follows redirects (provider.NoRedirects).
	HTTPClient *http.Client
	// BaseURL is a prefix; calls go to <BaseURL>/<version>/oauth/access_token
	// and <BaseURL>/<version>/debug_token. Defaults to DefaultBaseURL.
	BaseURL string
	// Clock defaults to the real clock.
	Clock clock.PassiveClock
	// Observe, when set, is told about every request.
	Observe provider.RequestObserver
	// UsageThreshold is the X-App-Usage percentage from which calls for that
	// app are held back (see slowDown); 0 means DefaultUsageThreshold.
	UsageThreshold float64
}

// Client talks to the Graph API. It is stateless and safe for concurrent use.
type Client struct {
	http    *http.Client
	base    *url.URL
	baseErr bool
	clock   clock.PassiveClock
	observe provider.RequestObserver
	usage   float64

	mu sync.Mutex
	// slowUntil holds calls back per app ID after a high X-App-Usage or an
	// app-level throttling answer (see slowDown).
	slowUntil map[string]time.Time
}

var _ provider.Provider = (*Client)(nil)

// New returns a Client.
func New(opts Options) *Client {
	c := &Client{http: provider.NoRedirects(opts.HTTPClient), clock: opts.Clock, observe: opts.Observe,
		usage: opts.UsageThreshold, slowUntil: map[string]time.Time{}}
	if c.usage <= 0 {
		c.usage = DefaultUsageThreshold
	}
	if c.clock == nil {
		c.clock = clock.RealClock{}
	}
	raw := strings.TrimRight(strings.TrimSpace(opts.BaseURL), "/")
	if raw == "" {
		raw = DefaultBaseURL
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		c.baseErr = true
	} else {
		c.base = u
	}
	return c
}

// ValidateCredentials implements provider.Provider. With no stored token
// the Secret needs app_id, app_secret and a grant: access_token or
// authorization_code; with app_id and app_secret but neither grant the
// error is provider.ReasonAuthorizationRequired. A stored token is checked
// and renewed with app_id and app_secret alone.
func (c *Client) ValidateCredentials(creds provider.Credentials, stored *provider.Token) error {
	var missing []string
	for _, k := range []string{KeyAppID, KeyAppSecret} {
		if !creds.Has(k) {
			missing = append(missing, k)
		}
	}
	noGrant := stored == nil && !creds.Has(KeyAccessToken) && !creds.Has(KeyAuthorizationCode)
	if len(missing) == 0 {
		if strings.Contains(creds.Get(KeyAppID), "|") {
			return &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidAppID", Op: "validate",
				Message: "credentials key app_id must be the numeric Facebook app ID"}
		}
		if noGrant {
			return provider.AuthorizationRequired(KeyAuthorizationCode + " (or " + KeyAccessToken + ")")
		}
		return nil
	}
	if noGrant {
		missing = append(missing, KeyAccessToken+" or "+KeyAuthorizationCode)
	}
	return &provider.Error{
		Kind:    provider.KindConfiguration,
		Reason:  "CredentialsKeyMissing",
		Op:      "validate",
		Message: "the credentials Secret is missing or has empty keys: " + strings.Join(missing, ", ") + " (Facebook needs app_id, app_secret and access_token or authorization_code)",
	}
}

// BootstrapGrants implements provider.Provider: [authorization_code,
// access_token], those present.
func (c *Client) BootstrapGrants(creds provider.Credentials) []string {
	var grants []string
	for _, k := range []string{KeyAuthorizationCode, KeyAccessToken} {
		if creds.Has(k) {
			grants = append(grants, k)
		}
	}
	return grants
}

// Consumes implements provider.Provider. A Refresh ("") uses nothing up:
// a refreshed system-user token keeps working until its creation plus 60
// days. Nor does a Bootstrap from access_token (a debug_token call, and the
// exchange of a short-lived user token, which is not known to revoke it).
// An authorization code is single-use, and so is any grant this client
// does not know: the safe answer.
func (c *Client) Consumes(grant string) bool {
	return grant != "" && grant != KeyAccessToken
}

// Bootstrap implements provider.Provider.
//
// With grant access_token it introspects the credentials' access_token; a
// short-lived user token is exchanged for a long-lived one, any other kind
// is adopted as is.
//
// With grant authorization_code it exchanges the login dialog's code
// (exchangeCode) for a user token and then goes on exactly as with that
// token in access_token: the result is the Token a pasted short-lived user
// token gives.
func (c *Client) Bootstrap(ctx context.Context, req provider.Request, grant string) (*provider.Token, error) {
	if err := c.ValidateCredentials(req.Credentials, nil); err != nil {
		return nil, err
	}
	var input string
	switch grant {
	case KeyAccessToken, KeyAuthorizationCode:
		if input = req.Credentials.Get(grant); input == "" {
			return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "CredentialsKeyMissing", Op: "validate",
				Message: "the credentials Secret is missing or has an empty key: " + grant}
		}
	default:
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "UnsupportedGrant", Op: "bootstrap",
			Message: fmt.Sprintf("Facebook can only bootstrap from credentials key %s or %s, not %q", KeyAuthorizationCode, KeyAccessToken, safeKey(grant))}
	}
	version, err := graphVersion(req.Spec)
	if err != nil {
		return nil, err
	}
	pageID, err := pageIDOf(req.Spec)
	if err != nil {
		return nil, err
	}
	if grant == KeyAuthorizationCode {
		redirectURI, err := redirectURIOf(req.Spec, OpAuthorizationCode)
		if err != nil {
			return nil, err
		}
		ex, err := c.exchangeCode(ctx, version, req.Credentials, input, redirectURI)
		if err != nil {
			return nil, err
		}
		tok, err := c.bootstrapToken(ctx, version, req.Credentials, pageID, ex.accessToken, true)
		if err != nil {
			return nil, codeConsumed(err)
		}
		return tok, nil
	}
	return c.bootstrapToken(ctx, version, req.Credentials, pageID, input, false)
}

// bootstrapToken is Bootstrap from the token input: debug_token, and the
// exchange of a short-lived user token for a long-lived one. fromCode says
// that input was just obtained with this app's credentials from a code
// exchange: it is a user token of this app, so when debug_token fails for
// a passing reason the client goes on as with a short-lived user token
// rather than lose it (the code cannot be exchanged twice).
func (c *Client) bootstrapToken(ctx context.Context, version string, creds provider.Credentials, pageID, input string, fromCode bool) (*provider.Token, error) {
	tok, err := c.debugToken(ctx, version, creds, input)
	if err != nil {
		if !fromCode || !passing(err) {
			return nil, err
		}
		tok = &provider.Token{Type: TypeUserShortLived, ObtainedAt: c.clock.Now()}
	}
	tok.AccessToken = input
	if pageID != "" && (tok.Type == TypePage || tok.Type == TypeApp) {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "PageIDNeedsUserToken", Op: "bootstrap",
			Message: "spec.facebook.pageID is set, so credentials key access_token must hold the user or system-user token the Page token is derived from, not a " +
				tok.Type + " token: put a long-lived user token or a system-user token with a role on the Page there, or remove spec.facebook.pageID to publish this token as is"}
	}
	withPage := func(t *provider.Token) (pt *provider.Token, err error) {
		err = c.again(ctx, fromCode, func() error {
			pt, err = c.withPage(ctx, version, creds, pageID, t, "")
			return err
		})
		return pt, err
	}
	if tok.Type != TypeUserShortLived {
		return withPage(tok)
	}

	// Short-lived user token: exchange it at once.
	var ex *exchangeResult
	if err := c.again(ctx, fromCode, func() (err error) {
		ex, err = c.exchange(ctx, OpExchange, version, creds, input)
		return err
	}); err != nil {
		return nil, err
	}
	now := c.clock.Now()
	out := &provider.Token{
		AccessToken:         ex.accessToken,
		ObtainedAt:          now,
		Type:                TypeUserLongLived,
		Refreshable:         false,
		Scopes:              tok.Scopes,
		DataAccessExpiresAt: tok.DataAccessExpiresAt,
	}
	if ex.hasExpiresIn {
		out.Expires = true
		out.ExpiresAt = now.Add(ex.expiresIn)
	}
	// Ask debug_token about the new token anyway: data access expiry and
	// scopes, and the expiry when expires_in was absent.
	var t2 *provider.Token
	derr := c.again(ctx, fromCode && !ex.hasExpiresIn, func() (err error) {
		t2, err = c.debugToken(ctx, version, creds, ex.accessToken)
		return err
	})
	if derr != nil {
		if ex.hasExpiresIn {
			// The expiry is known; the rest was learnt from the
			// short-lived token of the same user and app.
			return withPage(out)
		}
		return nil, derr
	}
	if !ex.hasExpiresIn {
		out.Expires = t2.Expires
		out.ExpiresAt = t2.ExpiresAt
	}
	out.DataAccessExpiresAt = t2.DataAccessExpiresAt
	out.Scopes = t2.Scopes
	return withPage(out)
}

// codeFollowUpWaits are the waits before each new try of a call that
// failed transiently after an authorization code was spent.
var codeFollowUpWaits = []time.Duration{500 * time.Millisecond, 2 * time.Second}

// again runs call and, when retry is set (a code was just spent: the user
// token it gave exists only in this process), tries it again after each of
// codeFollowUpWaits while it fails transiently and ctx allows. Without
// it a 502 on the long-lived exchange or the Page token lost the token the
// code gave, and a human had to authorize again
// (TestAuthorizationCodeThenPassingFailure). Throttling is not retried
// here: the app's hold-back answers it.
func (c *Client) again(ctx context.Context, retry bool, call func() error) error {
	err := call()
	if !retry {
		return err
	}
	for _, d := range codeFollowUpWaits {
		if err == nil || provider.AsError(err).Kind != provider.KindTransient {
			return err
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		err = call()
	}
	return err
}

// Refresh implements provider.Provider. It is meant for expiring
// system-user tokens: the exchange call with set_token_expires_in_60_days.
func (c *Client) Refresh(ctx context.Context, req provider.Request, current *provider.Token) (*provider.Token, error) {
	if err := c.ValidateCredentials(req.Credentials, current); err != nil {
		return nil, err
	}
	if current == nil || current.AccessToken == "" {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "NoCurrentToken", Op: OpRefresh,
			Message: "there is no current token to refresh"}
	}
	version, err := graphVersion(req.Spec)
	if err != nil {
		return nil, err
	}
	creds := req.Credentials
	ex, err := c.exchange(ctx, OpRefresh, version, creds, current.AccessToken)
	if err != nil {
		return nil, err
	}
	now := c.clock.Now()
	out := copyToken(current)
	out.AccessToken = ex.accessToken
	out.ObtainedAt = now
	if ex.hasExpiresIn {
		out.Expires = true
		out.ExpiresAt = now.Add(ex.expiresIn)
		if out.Type == "" {
			out.Type = TypeSystemUserExpiring
		}
	} else {
		// expires_in absent: neither 60 days nor "never"; ask debug_token.
		t, err := c.debugToken(ctx, version, creds, ex.accessToken)
		if err != nil {
			return nil, err
		}
		out.Expires = t.Expires
		out.ExpiresAt = t.ExpiresAt
		out.DataAccessExpiresAt = t.DataAccessExpiresAt
		out.Scopes = t.Scopes
		out.Type = t.Type
		out.Refreshable = t.Refreshable
	}

	if ex.accessToken == current.AccessToken && !extended(current, out) {
		if current.Type == TypeUserLongLived || current.Type == TypeUserShortLived || out.Type == TypeUserLongLived {
			return nil, &provider.Error{Kind: provider.KindReauthorize, Reason: "CannotExtendUserToken", Op: OpRefresh,
				Message: "Facebook returned the same user token without a later expiry: long-lived user tokens cannot be extended server-side; " +
					"the user must log in again and put a new token in credentials key access_token before it expires"}
		}
		return nil, &provider.Error{Kind: provider.KindReauthorize, Reason: "TokenNotExtended", Op: OpRefresh,
			Message: "Facebook returned the same token without a later expiry: generate a new system-user token in Business Settings " +
				"and put it in credentials key access_token"}
	}
	if out.Type == TypeSystemUserExpiring {
		out.Refreshable = true
	}
	pageID, err := pageIDOf(req.Spec)
	if err != nil {
		return nil, err
	}
	// The new token is issued already: a failure to derive its Page token
	// must not lose it, so the previous Page token (which lives until the
	// old token's own expiry) stays published and the next probe retries.
	if pt, perr := c.withPage(ctx, version, creds, pageID, out, ""); perr == nil {
		return pt, nil
	}
	return out, nil
}

// Probe implements provider.Provider: debug_token on the current token.
func (c *Client) Probe(ctx context.Context, req provider.Request, current *provider.Token) (*provider.Token, error) {
	if current == nil || current.AccessToken == "" {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "NoCurrentToken", Op: OpDebugToken,
			Message: "there is no current token to check"}
	}
	if err := c.ValidateCredentials(req.Credentials, current); err != nil {
		return nil, err
	}
	version, err := graphVersion(req.Spec)
	if err != nil {
		return nil, err
	}
	pageID, err := pageIDOf(req.Spec)
	if err != nil {
		return nil, err
	}
	t, err := c.debugToken(ctx, version, req.Credentials, current.AccessToken)
	if err != nil {
		if pageID != "" {
			return nil, userTokenFailed(err, pageID)
		}
		return nil, err
	}
	out := copyToken(current)
	out.Expires = t.Expires
	out.ExpiresAt = t.ExpiresAt
	out.DataAccessExpiresAt = t.DataAccessExpiresAt
	out.Scopes = t.Scopes
	out.Type = t.Type
	out.Refreshable = t.Refreshable
	return c.withPage(ctx, version, req.Credentials, pageID, out, current.PublishedAccessToken)
}

// extended reports whether next expires meaningfully later than cur.
func extended(cur, next *provider.Token) bool {
	if !next.Expires {
		// Now non-expiring (and was expiring): that is an extension.
		return cur.Expires
	}
	if !cur.Expires {
		return false
	}
	return next.ExpiresAt.After(cur.ExpiresAt.Add(noExtensionTolerance))
}

func copyToken(t *provider.Token) *provider.Token {
	out := *t
	if t.Scopes != nil {
		out.Scopes = append([]string(nil), t.Scopes...)
	}
	return &out
}

func graphVersion(spec *tokensv1alpha1.ManagedTokenSpec) (string, error) {
	v := ""
	if spec != nil && spec.Facebook != nil {
		v = strings.TrimSpace(spec.Facebook.GraphAPIVersion)
	}
	if v == "" {
		return tokensv1alpha1.DefaultGraphAPIVersion, nil
	}
	if !versionRE.MatchString(v) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidGraphAPIVersion", Op: "config",
			Message: "spec.facebook.graphAPIVersion must look like v26.0"}
	}
	return v, nil
}

// safeKey keeps a credentials key name printable and short (it is a key
// name, not a value, but stays bounded anyway).
func safeKey(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// --- HTTP ---

type response struct {
	status int
	header http.Header
	body   []byte
}

// get performs one GET. The returned error is always a *provider.Error whose
// text holds neither the URL nor any value sent.
func (c *Client) get(ctx context.Context, op, version, path string, q url.Values) (*response, error) {
	if c.baseErr {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidBaseURL", Op: op,
			Message: "the Facebook base URL (--facebook-url) is not an absolute URL without query"}
	}
	u := *c.base
	u.Path = strings.TrimRight(c.base.Path, "/") + "/" + version + path
	u.RawPath = ""
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		// err would quote the URL: never wrap it.
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidBaseURL", Op: op,
			Message: "could not build the request URL from the Facebook base URL"}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tokenkeeper")

	start := c.clock.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.observeReq(op, 0, start)
		return nil, provider.TransportError(op, err)
	}
	body, perr := provider.ReadBody(ProviderName, op, resp)
	c.observeReq(op, resp.StatusCode, start)
	if perr != nil {
		return nil, perr
	}
	if provider.IsRedirect(resp.StatusCode) {
		return nil, provider.RedirectError(ProviderName, op, resp.StatusCode, "--facebook-url")
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

func (c *Client) observeReq(op string, code int, start time.Time) {
	if c.observe != nil {
		c.observe(ProviderName, op, code, c.clock.Since(start))
	}
}

// --- exchange / refresh ---

type exchangeResult struct {
	accessToken  string
	expiresIn    time.Duration
	hasExpiresIn bool
}

func (c *Client) exchange(ctx context.Context, op, version string, creds provider.Credentials, token string) (*exchangeResult, error) {
	appID, secret := creds.Get(KeyAppID), creds.Get(KeyAppSecret)
	q := url.Values{}
	q.Set("grant_type", grantTypeExchange)
	q.Set("client_id", appID)
	q.Set("client_secret", secret)
	q.Set("fb_exchange_token", token)
	if op == OpRefresh {
		q.Set(paramSetTokenExpiresIn60Days, "true")
	}
	obj, resp, err := c.call(ctx, op, version, pathExchange, q, creds, token)
	if err != nil {
		return nil, err
	}
	return tokenAnswer(op, obj, resp)
}

// tokenAnswer reads the token endpoint's success answer:
// {"access_token":"..","token_type":"bearer","expires_in":..}, where
// expires_in may be absent.
func tokenAnswer(op string, obj map[string]json.RawMessage, resp *response) (*exchangeResult, error) {
	var at string
	if raw, ok := obj["access_token"]; ok {
		_ = json.Unmarshal(raw, &at)
	}
	at = strings.TrimSpace(at)
	if at == "" {
		return nil, &provider.Error{Kind: provider.KindTransient, Reason: "MalformedResponse", Op: op, HTTPStatus: resp.status,
			Message: "Facebook's token endpoint answered without an access_token"}
	}
	res := &exchangeResult{accessToken: at}
	if raw, ok := obj["expires_in"]; ok {
		var n flexInt
		if json.Unmarshal(raw, &n) == nil && n > 0 {
			res.expiresIn = provider.Seconds(int64(n))
			res.hasExpiresIn = true
		}
	}
	return res, nil
}

// call sends one Graph API GET and returns its JSON object, or a classified
// error whose quoted Graph text is scrubbed of everything the request
// carried: the app secret, the app access token and the token sent. Every
// Graph request goes through here, so none can forget a value to scrub.
func (c *Client) call(ctx context.Context, op, version, path string, q url.Values, creds provider.Credentials, sent string) (map[string]json.RawMessage, *response, error) {
	appID := creds.Get(KeyAppID)
	if wait := c.heldBack(appID); wait > 0 {
		return nil, nil, &provider.Error{Kind: provider.KindThrottled, Reason: "AppUsageHigh", Op: op, RetryAfter: wait,
			Message: fmt.Sprintf("the Facebook app is at or near its hourly call limit (its X-App-Usage reached %.0f%%, or Graph answered code 4 or 341), which every token of this app shares: "+
				"calls for this app are held back for %s so the limit is not hit (raise the app's limit or spread its tokens' checks if this repeats)",
				c.usage, wait.Round(time.Second))}
	}
	resp, err := c.get(ctx, op, version, path, q)
	if err != nil {
		return nil, nil, err
	}
	c.noteUsage(appID, resp.header)
	obj, err := c.interpret(op, resp, requestScrubber(creds, sent))
	if pe, ok := err.(*provider.Error); ok && pe.Kind == provider.KindThrottled && pe.RetryAfter > 0 && appLevelThrottle(pe.Code) {
		c.holdBack(appID, pe.RetryAfter)
	}
	return obj, resp, err
}

// interpret turns a response into its JSON object, or a classified error.
// A Graph API error envelope is classified whatever the HTTP status.
func (c *Client) interpret(op string, resp *response, sc scrubber) (map[string]json.RawMessage, error) {
	var obj map[string]json.RawMessage
	jsonErr := json.Unmarshal(resp.body, &obj)
	if jsonErr == nil && obj != nil {
		if raw, ok := obj["error"]; ok {
			if ae, ok := parseAPIError(raw); ok {
				src := srcTokenEndpoint
				if op == OpDebugToken {
					src = srcDebugEnvelope
				}
				return nil, c.classify(op, resp.status, resp.header, ae, src, sc)
			}
		}
		if resp.status >= 200 && resp.status < 300 {
			return obj, nil
		}
		if op == OpDebugToken {
			if _, ok := obj["data"]; ok {
				// An invalid input token may come back with a 400 and
				// the usual data.error body.
				return obj, nil
			}
		}
	}
	switch {
	case resp.status == http.StatusTooManyRequests:
		return nil, &provider.Error{Kind: provider.KindThrottled, Reason: "RateLimited", Op: op, HTTPStatus: resp.status,
			RetryAfter: retryAfter(resp.header, c.clock.Now()),
			Message:    "Facebook answered HTTP 429 Too Many Requests"}
	case resp.status >= 500:
		return nil, &provider.Error{Kind: provider.KindTransient, Reason: "ServerError", Op: op, HTTPStatus: resp.status,
			Message: fmt.Sprintf("Facebook answered HTTP %d without a Graph API error body", resp.status)}
	case resp.status < 200 || resp.status >= 300:
		return nil, &provider.Error{Kind: provider.KindTransient, Reason: "UnexpectedResponse", Op: op, HTTPStatus: resp.status,
			Message: fmt.Sprintf("Facebook answered HTTP %d without a Graph API error body", resp.status)}
	}
	return nil, &provider.Error{Kind: provider.KindTransient, Reason: "MalformedResponse", Op: op, HTTPStatus: resp.status,
		Message: "Facebook's answer is not the expected JSON object"}
}

// --- debug_token ---

type debugData struct {
	AppID               provider.FlexString `json:"app_id"`
	Type                string              `json:"type"`
	Application         string              `json:"application"`
	ExpiresAt           flexInt             `json:"expires_at"`
	DataAccessExpiresAt flexInt             `json:"data_access_expires_at"`
	IsValid             flexBool            `json:"is_valid"`
	IssuedAt            *flexInt            `json:"issued_at"`
	Scopes              []string            `json:"scopes"`
	GranularScopes      []struct {
		Scope     string   `json:"scope"`
		TargetIDs []string `json:"target_ids"`
	} `json:"granular_scopes"`
	UserID    provider.FlexString `json:"user_id"`
	ProfileID provider.FlexString `json:"profile_id"`
	Error     json.RawMessage     `json:"error"`
}

// debugToken introspects input and returns what it learnt as a Token
// (AccessToken empty, ObtainedAt now), or a classified error.
func (c *Client) debugToken(ctx context.Context, version string, creds provider.Credentials, input string) (*provider.Token, error) {
	t, _, err := c.debug(ctx, version, creds, input)
	return t, err
}

// debug is debugToken that also returns the raw data object.
func (c *Client) debug(ctx context.Context, version string, creds provider.Credentials, input string) (*provider.Token, *debugData, error) {
	appID, secret := creds.Get(KeyAppID), creds.Get(KeyAppSecret)
	appToken := appID + "|" + secret
	q := url.Values{}
	q.Set("input_token", input)
	q.Set("access_token", appToken)
	// The proof is over the token in access_token, the app token here.
	q.Set("appsecret_proof", appSecretProof(secret, appToken))
	obj, resp, err := c.call(ctx, OpDebugToken, version, pathDebugToken, q, creds, input)
	if err != nil {
		return nil, nil, err
	}
	raw, ok := obj["data"]
	if ok && strings.TrimSpace(string(raw)) == "[]" {
		return nil, nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "DebugTokenEmpty", Op: OpDebugToken, HTTPStatus: resp.status,
			Message: "Facebook's debug_token said nothing about the token (data is an empty list, as seen with apps in development mode): " +
				"check that the token in credentials key access_token was issued for the app in app_id, and that the app is Live or the token's user has a role on the app; then update the credentials Secret"}
	}
	var d debugData
	if !ok || json.Unmarshal(raw, &d) != nil {
		return nil, nil, &provider.Error{Kind: provider.KindTransient, Reason: "MalformedResponse", Op: OpDebugToken, HTTPStatus: resp.status,
			Message: "Facebook's debug_token answer has no readable data object"}
	}
	if !bool(d.IsValid) {
		if ae, ok := parseAPIError(d.Error); ok {
			return nil, nil, c.classify(OpDebugToken, resp.status, resp.header, ae, srcDebugData, requestScrubber(creds, input))
		}
		return nil, nil, &provider.Error{Kind: provider.KindReauthorize, Reason: "TokenInvalid", Op: OpDebugToken, HTTPStatus: resp.status,
			Message: "Facebook reports the token as not valid: put a new token in credentials key access_token"}
	}
	if got := strings.TrimSpace(string(d.AppID)); got != "" && got != appID {
		return nil, nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "AppMismatch", Op: OpDebugToken, HTTPStatus: resp.status,
			Message: fmt.Sprintf("the token belongs to Facebook app %s, not to the app in credentials key app_id (%s): use a token of this app or fix app_id/app_secret",
				safeID(got), safeID(appID))}
	}
	t, err := tokenFromDebug(&d, c.clock.Now())
	if err != nil {
		if pe, ok := err.(*provider.Error); ok {
			pe.HTTPStatus = resp.status
		}
		return nil, nil, err
	}
	return t, &d, nil
}

// safeID keeps an app ID printable: digits only, bounded.
func safeID(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= '0' && r <= '9' && b.Len() < 32 {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "(non-numeric)"
	}
	return b.String()
}

// tokenFromDebug decides the token kind from a valid debug_token answer.
// AccessToken is left empty.
func tokenFromDebug(d *debugData, now time.Time) (*provider.Token, error) {
	t := &provider.Token{ObtainedAt: now}
	if d.ExpiresAt != 0 {
		t.Expires = true
		t.ExpiresAt = time.Unix(int64(d.ExpiresAt), 0).UTC()
	}
	if d.DataAccessExpiresAt != 0 {
		t.DataAccessExpiresAt = time.Unix(int64(d.DataAccessExpiresAt), 0).UTC()
	}
	if len(d.Scopes) > 0 {
		t.Scopes = append([]string(nil), d.Scopes...)
	}
	switch strings.ToUpper(strings.TrimSpace(d.Type)) {
	case "USER":
		short := d.IssuedAt == nil || *d.IssuedAt == 0
		if !short && t.Expires {
			short = time.Duration(int64(d.ExpiresAt)-int64(*d.IssuedAt))*time.Second <= shortLivedThreshold
		}
		if short {
			t.Type = TypeUserShortLived
		} else {
			t.Type = TypeUserLongLived
		}
	case "SYSTEM_USER":
		if t.Expires {
			t.Type = TypeSystemUserExpiring
			t.Refreshable = true
		} else {
			t.Type = TypeSystemUserNonExpiring
		}
	case "PAGE":
		t.Type = TypePage
	case "APP":
		t.Type = TypeApp
		t.Expires = false
		t.ExpiresAt = time.Time{}
	case "":
		return nil, &provider.Error{Kind: provider.KindTransient, Reason: "MalformedResponse", Op: OpDebugToken,
			Message: "Facebook's debug_token answer has no token type"}
	default:
		// Login-for-Business and WhatsApp embedded-signup tokens may say
		// BUSINESS_INTEGRATION_SYSTEM_USER, and Meta may add more: such a
		// token is monitored (validity and expiry from debug_token, never
		// exchanged) and its type named in status.
		t.Type = unknownType(d.Type)
	}
	return t, nil
}

// TypeUnknownPrefix starts the Type of a token whose debug_token type the
// client does not know, followed by that type in CamelCase, for example
// FacebookBusinessIntegrationSystemUser.
const TypeUnknownPrefix = "Facebook"

// unknownType turns a Graph token type such as BUSINESS_INTEGRATION_SYSTEM_USER
// into a bounded CamelCase Type (FacebookBusinessIntegrationSystemUser).
func unknownType(graphType string) string {
	var b strings.Builder
	b.WriteString(TypeUnknownPrefix)
	upper := true
	for _, r := range strings.ToUpper(strings.TrimSpace(graphType)) {
		switch {
		case b.Len() >= 64:
		case r >= 'A' && r <= 'Z':
			if !upper {
				r += 'a' - 'A'
			}
			b.WriteRune(r)
			upper = false
		case r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			upper = true
		}
	}
	if b.Len() == len(TypeUnknownPrefix) {
		b.WriteString("Unknown")
	}
	return b.String()
}
