// Package amocrm is the AmoCRM (Kommo) provider client: it exchanges
// authorization codes and single-use, rotating refresh tokens at
// POST /oauth2/access_token, adopts long-lived tokens of private
// integrations, and probes access tokens with GET /api/v4/account.
//
// golang.org/x/oauth2 is deliberately not used: it does not send
// redirect_uri on the refresh_token grant (AmoCRM requires it on both
// grants, byte-for-byte), and it classifies failures by the RFC 6749 "error"
// field, while AmoCRM answers with an OAuth problem JSON (hint, title, type,
// status, detail) that has no "error" field.
//
// No error built here carries a URL, a token, a code or a secret.
package amocrm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// ProviderName is the provider label given to the RequestObserver.
const ProviderName = "AmoCRM"

// Keys of the credentials Secret.
const (
	KeyClientID          = "client_id"
	KeyClientSecret      = "client_secret"
	KeyRefreshToken      = "refresh_token"
	KeyAuthorizationCode = "authorization_code"
	KeyAccessToken       = "access_token"
)

// Grants accepted by Bootstrap (the credentials key being consumed).
const (
	GrantAuthorizationCode = KeyAuthorizationCode
	GrantRefreshToken      = KeyRefreshToken
	GrantAccessToken       = KeyAccessToken
)

// Token types reported in provider.Token.Type.
const (
	TypeOAuth     = "AmoCRMOAuth"
	TypeLongLived = "AmoCRMLongLived"
)

// Operations passed to the RequestObserver and used as provider.Error.Op.
const (
	OpAuthorizationCode = "authorization_code"
	OpRefreshToken      = "refresh_token"
	OpAccount           = "account"
)

const (
	// DefaultRequestsPerSecond is AmoCRM's documented limit per account.
	DefaultRequestsPerSecond = 7
	// RefreshTokenLifetime is the documented refresh token lifetime (about 3 months).
	RefreshTokenLifetime = 90 * 24 * time.Hour
	// DocumentedAccessTokenLifetime is the access token lifetime AmoCRM
	// documents (expires_in 86400), assumed only for an answer that gives
	// no expiry at all.
	DocumentedAccessTokenLifetime = 24 * time.Hour
	// expiryTolerance is how far expires_in and the JWT exp may disagree
	// before the earlier one is used.
	expiryTolerance = 5 * time.Minute
	tokenPath       = "/oauth2/access_token"
	accountPath     = "/api/v4/account"
)

// Options configures a Client.
type Options struct {
	// HTTPClient is used for every call; nil means a client with a 30 s
	// timeout. It is copied and never follows redirects
	// (provider.NoRedirects): a redirected POST could carry the client
	// secret to another host.
	HTTPClient *http.Client
	// BaseURL, when set (--amocrm-url: egress proxy, tests, sandbox),
	// replaces https://<spec.amocrm.domain> for every call.
	BaseURL string
	// Clock is used for ObtainedAt and expiry; nil means the real clock.
	Clock clock.PassiveClock
	// Observe is told about every request; may be nil.
	Observe provider.RequestObserver
	// RequestsPerSecond is the per-account (per spec.amocrm.domain) rate
	// limit shared by all tokens; 0 means 7.
	RequestsPerSecond float64
}

// Client is the AmoCRM provider. It implements provider.Provider and is safe
// for concurrent use.
type Client struct {
	http    *http.Client
	baseURL string
	clock   clock.PassiveClock
	observe provider.RequestObserver
	rps     float64

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
}

var _ provider.Provider = (*Client)(nil)

// New returns an AmoCRM client.
func New(opts Options) *Client {
	hc := provider.NoRedirects(opts.HTTPClient)
	clk := opts.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	rps := opts.RequestsPerSecond
	if rps <= 0 {
		rps = DefaultRequestsPerSecond
	}
	return &Client{
		http:     hc,
		baseURL:  strings.TrimRight(opts.BaseURL, "/"),
		clock:    clk,
		observe:  opts.Observe,
		rps:      rps,
		limiters: map[string]*rate.Limiter{},
	}
}

// BootstrapGrants implements provider.Provider: [authorization_code,
// refresh_token] (those present); else [access_token] for a long-lived
// token; else nil.
func (c *Client) BootstrapGrants(creds provider.Credentials) []string {
	var grants []string
	for _, k := range []string{GrantAuthorizationCode, GrantRefreshToken} {
		if creds.Has(k) {
			grants = append(grants, k)
		}
	}
	if len(grants) == 0 && creds.Has(GrantAccessToken) {
		grants = []string{GrantAccessToken}
	}
	return grants
}

// Consumes implements provider.Provider: authorization codes and refresh
// tokens are single-use (a refresh token is dead everywhere once
// exchanged, with no grace window); adopting a long-lived access_token
// only checks it.
func (c *Client) Consumes(grant string) bool {
	return grant != GrantAccessToken
}

// ValidateCredentials implements provider.Provider.
func (c *Client) ValidateCredentials(creds provider.Credentials, stored *provider.Token) error {
	if stored != nil && !stored.Refreshable {
		return nil // a stored long-lived token needs nothing else
	}
	hasOAuth := stored != nil || creds.Has(KeyRefreshToken) || creds.Has(KeyAuthorizationCode)
	var missingClient []string
	for _, k := range []string{KeyClientID, KeyClientSecret} {
		if !creds.Has(k) {
			missingClient = append(missingClient, k)
		}
	}
	if !hasOAuth {
		if creds.Has(KeyAccessToken) {
			return nil // a long-lived token needs nothing else
		}
		if len(missingClient) == 0 {
			// The integration is configured; only its authorization is
			// missing: a human authorizes, or puts a grant in the Secret.
			return provider.AuthorizationRequired(KeyAuthorizationCode + " (or " + KeyRefreshToken + " / a long-lived " + KeyAccessToken + ")")
		}
		missing := []string{KeyRefreshToken + " or " + KeyAuthorizationCode + " (or a long-lived token in " + KeyAccessToken + ")"}
		return missingKeys(append(missing, missingClient...))
	}
	if len(missingClient) > 0 {
		return missingKeys(missingClient)
	}
	return nil
}

func missingKeys(missing []string) *provider.Error {
	return &provider.Error{
		Kind:    provider.KindConfiguration,
		Reason:  "CredentialsKeyMissing",
		Op:      "credentials",
		Message: "the credentials Secret is missing: " + strings.Join(missing, ", "),
	}
}

// Bootstrap implements provider.Provider.
func (c *Client) Bootstrap(ctx context.Context, req provider.Request, grant string) (*provider.Token, error) {
	switch grant {
	case GrantAuthorizationCode:
		code := req.Credentials.Get(KeyAuthorizationCode)
		if code == "" {
			return nil, missingKeys([]string{KeyAuthorizationCode})
		}
		host, perr := codeHost(req)
		if perr != nil {
			return nil, perr
		}
		return c.tokenRequest(ctx, req, OpAuthorizationCode, code, host)
	case GrantRefreshToken:
		rt := req.Credentials.Get(KeyRefreshToken)
		if rt == "" {
			return nil, missingKeys([]string{KeyRefreshToken})
		}
		return c.tokenRequest(ctx, req, OpRefreshToken, rt, specDomain(req))
	case GrantAccessToken:
		return c.bootstrapLongLived(ctx, req)
	default:
		return nil, &provider.Error{
			Kind: provider.KindConfiguration, Reason: "UnsupportedGrant", Op: "bootstrap",
			Message: fmt.Sprintf("AmoCRM cannot bootstrap from credentials key %q; use %s, %s or %s",
				grant, KeyAuthorizationCode, KeyRefreshToken, KeyAccessToken),
		}
	}
}

// Refresh implements provider.Provider: it consumes current.RefreshToken
// (never the credentials Secret's, which may be stale).
func (c *Client) Refresh(ctx context.Context, req provider.Request, current *provider.Token) (*provider.Token, error) {
	if current == nil || current.RefreshToken == "" {
		return nil, &provider.Error{
			Kind: provider.KindReauthorize, Reason: "RefreshTokenMissing", Op: OpRefreshToken,
			Message: "the current AmoCRM token has no refresh token: put a new authorization_code or refresh_token into the credentials Secret",
		}
	}
	host := tokenHost(req, current)
	tok, err := c.tokenRequest(ctx, req, OpRefreshToken, current.RefreshToken, host)
	perr := provider.AsError(err)
	if err == nil || !isMove(perr) {
		return tok, err
	}
	// The account is not on host (a renamed subdomain, a move between
	// amocrm.com and kommo.com), which therefore did not use the refresh
	// token. Look the account's host up as Probe does, and refresh there
	// (TestRefreshFollowsAMove).
	claims, _ := decodeJWT(current.AccessToken)
	newHost, ferr := c.followMove(ctx, req, current.RefreshToken, claims)
	if ferr == nil && newHost == host {
		ferr = &provider.Error{Message: "the account lookup names the same host"}
	}
	if ferr != nil {
		return nil, movedReport(perr, req, host, claims, ferr)
	}
	return c.tokenRequest(ctx, req, OpRefreshToken, current.RefreshToken, newHost)
}

// Probe implements provider.Provider: GET /api/v4/account with the access
// token, on the token's own host (Token.APIDomain, else spec.amocrm.domain).
// It returns a copy of current when AmoCRM accepts it. When the account is
// not found there or lives on another server, and the token has a refresh
// token, it looks the account's current host up (see followMove) and, when
// the token is accepted there, returns the copy with APIDomain set to it.
func (c *Client) Probe(ctx context.Context, req provider.Request, current *provider.Token) (*provider.Token, error) {
	if current == nil || current.AccessToken == "" {
		return nil, &provider.Error{
			Kind: provider.KindTokenRejected, Reason: "AccessTokenMissing", Op: OpAccount,
			Message: "there is no access token to check",
		}
	}
	claims, _ := decodeJWT(current.AccessToken)
	if err := c.crossCheck(req, claims); err != nil {
		return nil, err
	}
	host := tokenHost(req, current)
	cp := *current
	cp.Scopes = append([]string(nil), current.Scopes...)
	perr := c.probe(ctx, req, current.AccessToken, current.Refreshable, host, claims)
	if perr == nil {
		return &cp, nil
	}
	if !isMove(perr) {
		return nil, perr
	}
	if current.RefreshToken == "" {
		return nil, movedReport(perr, req, host, claims, nil)
	}
	newHost, ferr := c.followMove(ctx, req, current.RefreshToken, claims)
	if ferr != nil {
		return nil, movedReport(perr, req, host, claims, ferr)
	}
	if newHost == host {
		return nil, movedReport(perr, req, host, claims, &provider.Error{Message: "the account lookup names the same host"})
	}
	if err := c.probe(ctx, req, current.AccessToken, current.Refreshable, newHost, claims); err != nil {
		return nil, err
	}
	cp.APIDomain = newHost
	if newHost == specDomain(req) {
		cp.APIDomain = ""
	}
	return &cp, nil
}

func (c *Client) probe(ctx context.Context, req provider.Request, accessToken string, refreshable bool, host string, claims jwtClaims) *provider.Error {
	hreq, perr := c.newRequest(ctx, req, http.MethodGet, OpAccount, host, accountPath, nil)
	if perr != nil {
		return perr
	}
	hreq.Header.Set("Authorization", "Bearer "+accessToken)
	c.setClientUUID(hreq, req, claims)
	status, header, body, perr := c.do(ctx, req, OpAccount, hreq)
	if perr != nil {
		return perr
	}
	switch {
	case status >= 200 && status < 300:
		return nil
	case status == http.StatusUnauthorized:
		if ae := parseAccountError(body); ae.notAboutToken() {
			return ae.classify(OpAccount, status, host)
		}
		msg := "AmoCRM rejected the access token (HTTP 401 from the account endpoint)"
		if !refreshable {
			msg += ": put a new long-lived token into access_token in the credentials Secret"
		}
		return &provider.Error{Kind: provider.KindTokenRejected, Reason: "AccessTokenRejected", Op: OpAccount,
			HTTPStatus: status, Message: msg}
	}
	return c.classifyStatus(OpAccount, status, header, body)
}

func (c *Client) bootstrapLongLived(ctx context.Context, req provider.Request) (*provider.Token, error) {
	tok := req.Credentials.Get(KeyAccessToken)
	if tok == "" {
		return nil, missingKeys([]string{KeyAccessToken})
	}
	claims, ok := decodeJWT(tok)
	if !ok || claims.exp.IsZero() {
		return nil, &provider.Error{
			Kind: provider.KindConfiguration, Reason: "InvalidLongLivedToken", Op: "bootstrap",
			Message: "access_token in the credentials Secret must be an AmoCRM long-lived token (a JWT with an exp claim); " +
				"for an OAuth integration put client_id, client_secret and an authorization_code or refresh_token instead",
		}
	}
	now := c.clock.Now()
	if !now.Before(claims.exp) {
		return nil, &provider.Error{
			Kind: provider.KindReauthorize, Reason: "LongLivedTokenExpired", Op: "bootstrap",
			Message: "the long-lived access_token in the credentials Secret expired at " + claims.exp.UTC().Format(time.RFC3339) +
				": create a new long-lived token in AmoCRM and put it into access_token",
		}
	}
	if err := c.crossCheck(req, claims); err != nil {
		return nil, err
	}
	if host := specDomain(req); claims.baseDomain != "" && host != "" && !strings.HasSuffix(host, "."+claims.baseDomain) {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "AccountDomainMismatch", Op: "bootstrap",
			Message: fmt.Sprintf("the long-lived token in access_token belongs to account %d on %s, but spec.amocrm.domain is %s: "+
				"set spec.amocrm.domain to the account's address on %s (the account may have moved), or use a token of this account",
				claims.accountID, claims.baseDomain, host, claims.baseDomain)}
	}
	if err := c.probe(ctx, req, tok, false, specDomain(req), claims); err != nil {
		if pe := provider.AsError(err); pe.Kind == provider.KindTokenRejected {
			return nil, &provider.Error{
				Kind: provider.KindReauthorize, Reason: pe.Reason, Op: pe.Op, HTTPStatus: pe.HTTPStatus,
				Message: "AmoCRM rejected the long-lived access_token in the credentials Secret: create a new long-lived token in AmoCRM and put it into access_token",
			}
		}
		return nil, err
	}
	return &provider.Token{
		AccessToken: tok,
		Expires:     true,
		ExpiresAt:   claims.exp,
		ObtainedAt:  now,
		Type:        TypeLongLived,
		Scopes:      claims.scopes,
		Refreshable: false,
	}, nil
}

type tokenRequestBody struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	GrantType    string `json:"grant_type"`
	Code         string `json:"code,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	RedirectURI  string `json:"redirect_uri"`
}

// tokenRequest calls POST /oauth2/access_token with grant op
// (authorization_code or refresh_token) and value (the code or refresh token).
// host is the account host to call: Token.APIDomain for a refresh of a
// token that followed a move, else spec.amocrm.domain.
func (c *Client) tokenRequest(ctx context.Context, req provider.Request, op, value, host string) (*provider.Token, error) {
	// Only the client credentials are needed here: a refresh uses the
	// stored pair even if the Secret's refresh_token was since removed.
	clientID, clientSecret := req.Credentials.Get(KeyClientID), req.Credentials.Get(KeyClientSecret)
	var missing []string
	if clientID == "" {
		missing = append(missing, KeyClientID)
	}
	if clientSecret == "" {
		missing = append(missing, KeyClientSecret)
	}
	if len(missing) > 0 {
		return nil, missingKeys(missing)
	}
	if req.Spec == nil || req.Spec.AmoCRM == nil {
		return nil, specMissing(op)
	}
	redirectURI := req.Spec.AmoCRM.RedirectURI // byte-for-byte, not trimmed
	if redirectURI == "" {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "RedirectURIMissing", Op: op,
			Message: "spec.amocrm.redirectURI is required: set it to the integration's redirect URI exactly"}
	}
	body := tokenRequestBody{
		ClientID: clientID, ClientSecret: clientSecret, GrantType: op, RedirectURI: redirectURI,
	}
	if op == OpAuthorizationCode {
		body.Code = value
	} else {
		body.RefreshToken = value
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(body); err != nil {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidRequest", Op: op,
			Message: "cannot encode the token request"}
	}
	hreq, perr := c.newRequest(ctx, req, http.MethodPost, op, host, tokenPath, &buf)
	if perr != nil {
		return nil, perr
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")

	status, header, respBody, perr := c.do(ctx, req, op, hreq)
	if perr != nil {
		return nil, perr
	}
	if status >= 200 && status < 300 {
		tok, err := c.parseToken(op, status, respBody)
		if err == nil && host != specDomain(req) {
			tok.APIDomain = host
		}
		return tok, err
	}
	if status == http.StatusBadRequest || status == http.StatusUnauthorized {
		if ae := parseAccountError(respBody); ae.notAboutToken() {
			// A documented 401 about the account or its user, not about
			// the value sent: the account moved, the user was disabled.
			return nil, ae.classify(op, status, host)
		}
		if p, ok := parseProblem(respBody); ok {
			return nil, classifyProblem(op, status, p, clientSecret, value)
		}
		return nil, &provider.Error{Kind: provider.KindTransient, Reason: "UnexpectedResponse", Op: op, HTTPStatus: status,
			Message: fmt.Sprintf("AmoCRM answered HTTP %d without a readable problem body; will retry", status)}
	}
	return nil, c.classifyStatus(op, status, header, respBody)
}

// codeHost is the host an authorization code is exchanged on: the account
// host the authorization callback named (req.AccountHost), else
// spec.amocrm.domain. Kommo issues a code on the account it was granted
// for, and that account may have moved away from spec.amocrm.domain; the
// token endpoint of another host does not know the code. The callback
// host must still be an account host under amocrm.ru, amocrm.com or
// kommo.com: nothing else ever receives the client secret.
func codeHost(req provider.Request) (string, *provider.Error) {
	host := strings.ToLower(strings.TrimSpace(req.AccountHost))
	if host == "" {
		return specDomain(req), nil
	}
	if !allowedHost(host) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: "AccountHostNotAllowed", Op: OpAuthorizationCode,
			Message: "the account host of the authorization callback (referer) is not a host under amocrm.ru, amocrm.com or kommo.com, so the code is not exchanged there: authorize again from the account's own address"}
	}
	if strings.EqualFold(host, specDomain(req)) {
		return specDomain(req), nil
	}
	return host, nil
}

func specMissing(op string) *provider.Error {
	return &provider.Error{Kind: provider.KindConfiguration, Reason: "AmoCRMSpecMissing", Op: op,
		Message: "spec.amocrm is required: set amocrm.domain and amocrm.redirectURI"}
}

// newRequest builds a request to path on the account host. With BaseURL
// (--amocrm-url) the request goes there instead, and its Host header names
// the account host, so a reverse proxy (or a test fake) can route it.
func (c *Client) newRequest(ctx context.Context, req provider.Request, method, op, host, path string, body io.Reader) (*http.Request, *provider.Error) {
	if req.Spec == nil || req.Spec.AmoCRM == nil {
		return nil, specMissing(op)
	}
	if !validHost(host) {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidDomain", Op: op,
			Message: "spec.amocrm.domain must be the account host, such as example.amocrm.ru"}
	}
	base := "https://" + host
	if c.baseURL != "" {
		base = c.baseURL
	}
	hreq, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidDomain", Op: op,
			Message: "cannot build the AmoCRM request: check spec.amocrm.domain"}
	}
	if c.baseURL != "" {
		hreq.Host = host
	}
	hreq.Header.Set("Accept", "application/json")
	return hreq, nil
}

// validHost accepts a bare host name (no port, path, user or query).
func validHost(host string) bool {
	u, err := url.Parse("https://" + host)
	return host != "" && err == nil && u.Host == host && u.Path == "" && u.RawQuery == "" && u.User == nil && u.Fragment == "" && u.Port() == ""
}

func (c *Client) limiter(req provider.Request) *rate.Limiter {
	key := ""
	if req.Spec != nil && req.Spec.AmoCRM != nil {
		key = strings.ToLower(req.Spec.AmoCRM.Domain)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.limiters[key]
	if !ok {
		// Burst 1: requests to one account are spaced 1/rps apart, so no
		// second ever sees more than rps of them.
		l = rate.NewLimiter(rate.Limit(c.rps), 1)
		c.limiters[key] = l
	}
	return l
}

// do waits for the account's rate limiter, sends hreq and reads at most
// maxBodyBytes of the answer. The body is drained and closed.
func (c *Client) do(ctx context.Context, req provider.Request, op string, hreq *http.Request) (int, http.Header, []byte, *provider.Error) {
	if err := c.limiter(req).Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return 0, nil, nil, provider.TransportError(op, ctx.Err())
		}
		return 0, nil, nil, &provider.Error{Kind: provider.KindTransient, Reason: "ClientRateLimited", Op: op,
			Message: "the per-account request limit leaves no room before the deadline; will retry"}
	}
	start := time.Now()
	resp, err := c.http.Do(hreq)
	if err != nil {
		c.observed(op, 0, time.Since(start))
		return 0, nil, nil, provider.TransportError(op, err)
	}
	body, perr := provider.ReadBody(ProviderName, op, resp)
	c.observed(op, resp.StatusCode, time.Since(start))
	if perr != nil {
		return 0, nil, nil, perr
	}
	if provider.IsRedirect(resp.StatusCode) {
		return 0, nil, nil, provider.RedirectError(ProviderName, op, resp.StatusCode, "spec.amocrm.domain (and --amocrm-url)")
	}
	return resp.StatusCode, resp.Header, body, nil
}

func (c *Client) observed(op string, code int, elapsed time.Duration) {
	if c.observe != nil {
		c.observe(ProviderName, op, code, elapsed)
	}
}

// classifyStatus handles the statuses shared by both endpoints: 429, 403,
// 5xx and anything unexpected.
func (c *Client) classifyStatus(op string, status int, header http.Header, body []byte) *provider.Error {
	switch {
	case status == http.StatusForbidden:
		return parseAccountError(body).blocked(op, status)
	case status == http.StatusTooManyRequests:
		return &provider.Error{Kind: provider.KindThrottled, Reason: "RateLimited", Op: op, HTTPStatus: status,
			RetryAfter: provider.ParseRetryAfter(header.Get("Retry-After"), c.clock.Now()),
			Message:    "AmoCRM is throttling requests (HTTP 429); will retry later"}
	case status >= 500:
		return &provider.Error{Kind: provider.KindTransient, Reason: "ProviderUnavailable", Op: op, HTTPStatus: status,
			Message: fmt.Sprintf("AmoCRM answered HTTP %d; will retry", status)}
	default:
		return &provider.Error{Kind: provider.KindTransient, Reason: "UnexpectedResponse", Op: op, HTTPStatus: status,
			Message: fmt.Sprintf("AmoCRM answered HTTP %d; will retry", status)}
	}
}

// flexInt decodes a JSON number or a numeric string.
type flexInt struct {
	v   int64
	set bool
}

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(strings.TrimSpace(string(b)), `"`)
	if s == "" || s == "null" {
		return nil
	}
	n := json.Number(s)
	if i, err := n.Int64(); err == nil {
		f.v, f.set = i, true
		return nil
	}
	fl, err := n.Float64()
	if err != nil {
		return errors.New("not a number")
	}
	f.v, f.set = int64(fl), true
	return nil
}

type tokenResponse struct {
	TokenType    string  `json:"token_type"`
	ExpiresIn    flexInt `json:"expires_in"`
	AccessToken  string  `json:"access_token"`
	RefreshToken string  `json:"refresh_token"`
	// server_time (unix seconds) is sometimes present and is not needed:
	// expiry is computed from the receipt time and the JWT exp.
}

func (c *Client) parseToken(op string, status int, body []byte) (*provider.Token, error) {
	malformed := func(what string) *provider.Error {
		msg := "AmoCRM returned a token response " + what + "; will retry"
		if op == OpRefreshToken {
			msg += " (the refresh token may already have been consumed)"
		}
		return &provider.Error{Kind: provider.KindTransient, Reason: "MalformedResponse", Op: op, HTTPStatus: status, Message: msg}
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, malformed("that is not valid JSON")
	}
	if tr.AccessToken == "" || tr.RefreshToken == "" {
		return nil, malformed("without access_token or refresh_token")
	}
	now := c.clock.Now()
	claims, _ := decodeJWT(tr.AccessToken)
	var fromTTL time.Time
	if tr.ExpiresIn.set && tr.ExpiresIn.v > 0 {
		fromTTL = now.Add(provider.Seconds(tr.ExpiresIn.v))
	}
	expiresAt := chooseExpiry(fromTTL, claims.exp)
	if expiresAt.IsZero() {
		// Neither expires_in nor a JWT exp: still a new pair, and the
		// refresh token sent is already used up. Dropping the answer would
		// lose the token for good, so it is kept with the documented
		// access token lifetime (TestExpiry, "no expiry at all").
		expiresAt = now.Add(DocumentedAccessTokenLifetime)
	}
	return &provider.Token{
		AccessToken:           tr.AccessToken,
		RefreshToken:          tr.RefreshToken,
		Expires:               true,
		ExpiresAt:             expiresAt,
		ObtainedAt:            now,
		RefreshTokenExpiresAt: now.Add(RefreshTokenLifetime),
		Type:                  TypeOAuth,
		Scopes:                claims.scopes,
		Refreshable:           true,
	}, nil
}

// chooseExpiry returns the expiry from expires_in, cross-checked with the
// JWT exp: when both are known and differ by more than five minutes the
// earlier wins. Zero when neither is known.
func chooseExpiry(fromTTL, fromJWT time.Time) time.Time {
	switch {
	case fromTTL.IsZero():
		return fromJWT
	case fromJWT.IsZero():
		return fromTTL
	}
	d := fromTTL.Sub(fromJWT)
	if d < 0 {
		d = -d
	}
	if d > expiryTolerance && fromJWT.Before(fromTTL) {
		return fromJWT
	}
	return fromTTL
}
