// Package facebookfake is a fake Meta Graph API for tests and the demo
// sandbox: GET /v<N>.<M>/oauth/access_token (fb_exchange_token, optionally
// with set_token_expires_in_60_days=true, or the login flow's code
// exchange), GET /v<N>.<M>/debug_token, GET /v<N>.<M>/{page-id}?fields=
// access_token, and the login dialog GET /v<N>.<M>/dialog/oauth (served by
// www.facebook.com on the real platform; see dialog.go), with the paths, parameters,
// JSON shapes and error bodies of the real API, as described (with sources)
// in the project's docs/providers.md. Where that page marks a behaviour as
// unconfirmed, Options has a switch.
//
// Wrap it in an httptest.Server and point the client's BaseURL at it.
// A Server is safe for concurrent use.
package facebookfake

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Options configure a Server.
type Options struct {
	// AppID and AppSecret are the app's credentials. Defaults: a fixed
	// numeric ID and a random 32-hex-digit secret.
	AppID, AppSecret string
	// Clock defaults to the real clock.
	Clock clock.PassiveClock
	// OmitExpiresIn makes exchange/refresh answers leave out expires_in
	// (seen in the wild).
	OmitExpiresIn bool
	// ExchangeRevokesShortLived (unconfirmed) makes a successful exchange
	// of a short-lived user token revoke that token (190/467 afterwards).
	// Meta's documentation does not say whether the short-lived token
	// keeps working until its own expiry (the default here).
	ExchangeRevokesShortLived bool
	// LongLivedTTL is the lifetime of exchanged user tokens and refreshed
	// system-user tokens; default 60 days.
	LongLivedTTL time.Duration
	// DataAccessTTL: data_access_expires_at = issue time + this for user and
	// Page tokens; default 90 days. System-user tokens report 0.
	DataAccessTTL time.Duration
	// InvalidTokenStatus is the HTTP status of debug_token for an invalid
	// input token: 200 or 400 (unconfirmed which); default 200.
	InvalidTokenStatus int
	// RequireAppSecret is the app setting "Require App Secret": calls made
	// with a user, system-user or Page token must carry appsecret_proof
	// (HMAC-SHA256 of that token keyed with the app secret), else code 100.
	// A wrong proof is refused with code 100 whatever this setting.
	RequireAppSecret bool
	// AppTokenCallsNeedProof (unconfirmed): with RequireAppSecret, calls
	// made with the app token (debug_token) need a proof too, computed over
	// the app token "app_id|app_secret".
	AppTokenCallsNeedProof bool
	// RedirectURIs are the app's Valid OAuth Redirect URIs: the login
	// dialog accepts only these, byte for byte. Empty accepts any absolute
	// https URI, and http on a loopback host.
	RedirectURIs []string
	// CodeTTL is the life of a login dialog code; default DefaultCodeTTL.
	CodeTTL time.Duration
	// AppendHashFragment adds "#_=_" to the dialog's redirects, as Facebook
	// is seen to do when the redirect URI has no fragment [S].
	AppendHashFragment bool
	// PageRoleError (unconfirmed): a caller without a role on the Page gets
	// an error, code 190 subcode 492, instead of the default answer: the
	// Page without access_token. Which one Graph answers is not documented.
	PageRoleError bool
	// AppCallsPerHour, when > 0, is the app's own rolling one-hour budget of
	// app-token calls (debug_token), 200 x daily active users on the real
	// platform. Every debug_token answer then carries X-App-Usage with
	// call_count as a percentage of it, and calls over it get code 4.
	AppCallsPerHour int
}

// Kind is a kind of token the fake can issue.
type Kind string

// Token kinds.
const (
	// KindUserShort is a short-lived user token (no issued_at; about 2 h).
	KindUserShort Kind = "USER_SHORT"
	// KindUserLong is a long-lived user token (about 60 days; cannot be extended).
	KindUserLong Kind = "USER_LONG"
	// KindSystemUserExpiring is a system-user token refreshed with
	// set_token_expires_in_60_days=true.
	KindSystemUserExpiring Kind = "SYSTEM_USER_EXPIRING"
	// KindSystemUserNonExpiring never expires.
	KindSystemUserNonExpiring Kind = "SYSTEM_USER_NON_EXPIRING"
	// KindPage is a Page token: non-expiring when expiresAt is zero.
	KindPage Kind = "PAGE"
	// KindApp is an app token (type APP, never expires). An extra beyond
	// the five kinds above.
	KindApp Kind = "APP"
	// KindBusinessIntegrationSystemUser is reported by debug_token with type
	// BUSINESS_INTEGRATION_SYSTEM_USER (Login for Business, WhatsApp
	// embedded signup) by some accounts; never expires here.
	KindBusinessIntegrationSystemUser Kind = "BUSINESS_INTEGRATION_SYSTEM_USER"
)

// Operation names for Calls and FailNext. OpAuthorizationCode is a token
// endpoint request with a code (the login flow's exchange); OpDialog the
// login dialog.
const (
	OpExchange          = "exchange"
	OpRefresh           = "refresh"
	OpDebugToken        = "debug_token"
	OpPage              = "page"
	OpAuthorizationCode = "authorization_code"
	OpDialog            = "dialog"
)

// DefaultShortLivedTTL is the lifetime of a KindUserShort token issued with a
// zero expiresAt.
const DefaultShortLivedTTL = 2 * time.Hour

// ClientSecretErrorMessage is the Graph API message (code 1) for a wrong app secret.
const ClientSecretErrorMessage = "Error validating client secret."

// InvalidAppIDMessage is the Graph API message (code 101) for a wrong app ID.
const InvalidAppIDMessage = "Error validating application. Invalid application ID."

// Recorded messages of the appsecret_proof refusals (code 100).
const (
	MissingProofMessage = "API calls from the server require an appsecret_proof argument"
	InvalidProofMessage = "Invalid appsecret_proof provided in the API argument"
)

// Recorded463Body is the 190/463 body recorded in the official PHP SDK's
// tests, answered with HTTP 400 and Recorded463WWWAuthenticate.
const Recorded463Body = `{"error":{"message":"Error validating access token: Session has expired on Monday, 10-Aug-15 01:00:00 PDT. The current time is Monday, 10-Aug-15 01:14:23 PDT.","type":"OAuthException","code":190,"error_subcode":463}}`

// Recorded463WWWAuthenticate is the WWW-Authenticate header sent with Recorded463Body.
const Recorded463WWWAuthenticate = `OAuth "Facebook Platform" "invalid_token" "Error validating access token"`

const (
	defaultAppID         = "100000000000001"
	defaultLongLivedTTL  = 60 * 24 * time.Hour
	defaultDataAccessTTL = 90 * 24 * time.Hour
	applicationName      = "tokenkeeper fake app"
)

var pathRE = regexp.MustCompile(`^(?:/(v[0-9]+\.[0-9]+))?/(oauth/access_token|debug_token|dialog/oauth|[0-9]{1,32})/?$`)

type token struct {
	kind       Kind
	issuedAt   time.Time // zero for short-lived user tokens
	expiresAt  time.Time // zero: never
	dataAccess time.Time // zero: none
	userID     string
	scopes     []string
	revoked    bool
	errCode    int
	errSubcode int
	// graphType overrides the type debug_token reports.
	graphType string
	// emptyDebug: debug_token answers {"data":[]} for it.
	emptyDebug bool
	// parent is the user or system-user token a Page token was derived
	// from, pageID its Page: it dies with the parent's session.
	parent, pageID string
}

type failure struct {
	n      int
	status int
	body   string
	header http.Header
}

// Server is the fake Graph API.
type Server struct {
	opts  Options
	clock clock.PassiveClock

	mu       sync.Mutex
	tokens   map[string]*token
	issued   []string
	calls    map[string]int
	fail     map[string][]*failure
	versions []string
	seen     map[string]bool
	// pages: Page ID -> tokens (parents) with a role on it.
	pages map[string]map[string]bool
	// pageTokens: parent + "\x00" + Page ID -> the Page token derived.
	pageTokens map[string]string
	appCalls   []time.Time
	appUsage   string
	proofs     map[string]int
	// codes: login dialog codes.
	codes       map[string]*dialogCode
	denyConsent bool
}

// New returns a Server.
func New(opts Options) *Server {
	if opts.AppID == "" {
		opts.AppID = defaultAppID
	}
	if opts.AppSecret == "" {
		opts.AppSecret = randomHex(16)
	}
	if opts.LongLivedTTL <= 0 {
		opts.LongLivedTTL = defaultLongLivedTTL
	}
	if opts.DataAccessTTL <= 0 {
		opts.DataAccessTTL = defaultDataAccessTTL
	}
	if opts.InvalidTokenStatus == 0 {
		opts.InvalidTokenStatus = http.StatusOK
	}
	if opts.CodeTTL <= 0 {
		opts.CodeTTL = DefaultCodeTTL
	}
	opts.RedirectURIs = append([]string(nil), opts.RedirectURIs...)
	s := &Server{
		opts:   opts,
		clock:  opts.Clock,
		tokens: map[string]*token{},
		calls:  map[string]int{},
		fail:   map[string][]*failure{},
		seen:   map[string]bool{},
		pages:  map[string]map[string]bool{},
		proofs: map[string]int{},
		codes:  map[string]*dialogCode{},

		pageTokens: map[string]string{},
	}
	if s.clock == nil {
		s.clock = clock.RealClock{}
	}
	return s
}

// AppID returns the app ID in use (useful when Options.AppID was empty).
func (s *Server) AppID() string { return s.opts.AppID }

// AppSecret returns the app secret in use (useful when Options.AppSecret was empty).
func (s *Server) AppSecret() string { return s.opts.AppSecret }

// IssueToken mints a token of kind. expiresAt is ignored for non-expiring
// kinds (SYSTEM_USER_NON_EXPIRING, APP); a zero expiresAt means: 2 h for
// USER_SHORT, LongLivedTTL for USER_LONG and SYSTEM_USER_EXPIRING, never for
// PAGE. USER_SHORT tokens have no issued_at.
func (s *Server) IssueToken(kind Kind, expiresAt time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	t := &token{kind: kind, issuedAt: now, userID: randomDigits(15)}
	switch kind {
	case KindUserShort:
		t.issuedAt = time.Time{}
		if expiresAt.IsZero() {
			expiresAt = now.Add(DefaultShortLivedTTL)
		}
		t.expiresAt = expiresAt
		t.dataAccess = now.Add(s.opts.DataAccessTTL)
		t.scopes = []string{"public_profile", "pages_show_list", "pages_read_engagement"}
	case KindUserLong:
		if expiresAt.IsZero() {
			expiresAt = now.Add(s.opts.LongLivedTTL)
		}
		t.expiresAt = expiresAt
		t.dataAccess = now.Add(s.opts.DataAccessTTL)
		t.scopes = []string{"public_profile", "pages_show_list", "pages_read_engagement"}
	case KindSystemUserExpiring:
		if expiresAt.IsZero() {
			expiresAt = now.Add(s.opts.LongLivedTTL)
		}
		t.expiresAt = expiresAt
		t.scopes = []string{"business_management", "whatsapp_business_management"}
	case KindSystemUserNonExpiring:
		t.scopes = []string{"business_management", "whatsapp_business_management"}
	case KindPage:
		t.expiresAt = expiresAt
		t.dataAccess = now.Add(s.opts.DataAccessTTL)
		t.scopes = []string{"pages_show_list", "pages_manage_posts", "pages_read_engagement"}
	case KindApp:
		t.userID = ""
	case KindBusinessIntegrationSystemUser:
		t.graphType = string(KindBusinessIntegrationSystemUser)
		t.scopes = []string{"business_management", "whatsapp_business_management"}
	default:
		panic(fmt.Sprintf("facebookfake: unknown token kind %q", kind))
	}
	return s.addLocked(t)
}

func (s *Server) addLocked(t *token) string {
	v := "EAAF" + randomAlnum(160)
	s.tokens[v] = t
	s.issued = append(s.issued, v)
	return v
}

// Revoke makes token invalid: debug_token reports is_valid:false with error
// 190/467, and the token endpoint refuses it with 190/467.
func (s *Server) Revoke(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[tok]; ok {
		t.revoked = true
	}
}

// SetTokenError makes debug_token (is_valid:false with data.error) and the
// token endpoint (the {"error":...} envelope, HTTP 400) answer this error for
// token, such as 190/463 or 190/493. Code 0 clears it. An unknown token is
// registered as an invalid USER_LONG token.
func (s *Server) SetTokenError(tok string, code, subcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[tok]
	if !ok {
		t = &token{kind: KindUserLong, issuedAt: s.clock.Now(), expiresAt: s.clock.Now().Add(s.opts.LongLivedTTL)}
		s.tokens[tok] = t
		s.issued = append(s.issued, tok)
	}
	t.errCode, t.errSubcode = code, subcode
}

// AddPage creates a Page whose Page token can be derived, with
// GET /{page-id}?fields=access_token, by each of tokens (user or
// system-user tokens with a role on the Page). Calling it again adds roles.
func (s *Server) AddPage(pageID string, tokens ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pages[pageID] == nil {
		s.pages[pageID] = map[string]bool{}
	}
	for _, t := range tokens {
		s.pages[pageID][t] = true
	}
}

// RemovePageRole takes token's role on the Page away: Page tokens derived
// from it fail with 190/492, and deriving one answers without access_token.
func (s *Server) RemovePageRole(pageID, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pages[pageID], token)
}

// PageToken returns the Page token last derived from parent for pageID, or "".
func (s *Server) PageToken(parent, pageID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pageTokens[parent+"\x00"+pageID]
}

// SetEmptyDebugData makes debug_token answer {"data":[]} for token, as seen
// with apps in development mode.
func (s *Server) SetEmptyDebugData(token string, empty bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[token]; ok {
		t.emptyDebug = empty
	}
}

// SetAppUsage makes every answer carry X-App-Usage with these percentages
// (call_count, total_cputime, total_time); all zero removes the header.
// Options.AppCallsPerHour, when set, computes call_count itself.
func (s *Server) SetAppUsage(callCount, totalCPUTime, totalTime int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if callCount == 0 && totalCPUTime == 0 && totalTime == 0 {
		s.appUsage = ""
		return
	}
	s.appUsage = fmt.Sprintf(`{"call_count":%d,"total_cputime":%d,"total_time":%d}`, callCount, totalCPUTime, totalTime)
}

// Proofs counts requests by op that carried a correct appsecret_proof.
func (s *Server) Proofs(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proofs[op]
}

// Proof is appsecret_proof for token: hex HMAC-SHA256 of the token keyed
// with the app secret.
func Proof(appSecret, token string) string {
	m := hmac.New(sha256.New, []byte(appSecret))
	m.Write([]byte(token))
	return hex.EncodeToString(m.Sum(nil))
}

// Calls returns how many requests of op ("exchange", "refresh",
// "debug_token", "page", "authorization_code", "dialog") the server
// received, failed ones included.
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Secrets returns every token and login code the server issued and the app
// secret, for tests that grep logs, events and errors for leaks.
func (s *Server) Secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]string(nil), s.issued...)
	return append(out, s.opts.AppSecret)
}

// FailNext makes the next n requests of op answer status, body and header
// (before any other check). Calls queue up in order.
func (s *Server) FailNext(op string, n int, status int, body string, header http.Header) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[op] = append(s.fail[op], &failure{n: n, status: status, body: body, header: header.Clone()})
}

// Versions returns the Graph API versions requested, in order of first use.
func (s *Server) Versions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.versions...)
}

// TokenInfo returns the expiry the server holds for token (zero when it
// never expires); ok is false for an unknown token.
func (s *Server) TokenInfo(tok string) (expiresAt time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[tok]
	if !ok {
		return time.Time{}, false
	}
	return t.expiresAt, true
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := pathRE.FindStringSubmatch(r.URL.Path)
	if m == nil {
		s.writeError(w, http.StatusBadRequest, 2500, 0, "Unknown path components: "+sanitizePath(r.URL.Path))
		return
	}
	version, endpoint := m[1], m[2]
	if err := r.ParseForm(); err != nil {
		s.writeError(w, http.StatusBadRequest, 100, 0, "(#100) Invalid parameters")
		return
	}
	op := OpDebugToken
	switch endpoint {
	case "oauth/access_token":
		op = OpExchange
		switch {
		case r.Form.Get("code") != "" && (r.Form.Get("grant_type") == "" || r.Form.Get("grant_type") == "authorization_code"):
			op = OpAuthorizationCode
		case r.Form.Get("set_token_expires_in_60_days") == "true":
			op = OpRefresh
		}
	case "dialog/oauth":
		op = OpDialog
	case "debug_token":
	default:
		op = OpPage
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if version != "" && !s.seen[version] {
		s.seen[version] = true
		s.versions = append(s.versions, version)
	}
	s.calls[op]++
	if s.appUsage != "" {
		w.Header().Set("X-App-Usage", s.appUsage)
	}
	if q := s.fail[op]; len(q) > 0 {
		f := q[0]
		f.n--
		if f.n <= 0 {
			s.fail[op] = q[1:]
		}
		for k, vs := range f.header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		status := f.status
		if status == 0 {
			status = http.StatusBadRequest
		}
		if w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(f.body))
		return
	}

	allowed := r.Method == http.MethodGet || (op != OpDebugToken && op != OpDialog && r.Method == http.MethodPost)
	if !allowed {
		s.writeError(w, http.StatusBadRequest, 100, 0, "Unsupported "+r.Method+" request.")
		return
	}
	switch op {
	case OpDialog:
		s.dialogLocked(w, r)
	case OpAuthorizationCode:
		s.codeGrantLocked(w, r)
	case OpDebugToken:
		if s.appBudgetLocked(w) {
			return
		}
		s.debugTokenLocked(w, r)
	case OpPage:
		if !s.proofOKLocked(w, r, op, r.Form.Get("access_token"), true) {
			return
		}
		s.pageLocked(w, r, endpoint)
	default:
		s.exchangeLocked(w, r, op == OpRefresh)
	}
}

// appBudgetLocked counts an app-token call against Options.AppCallsPerHour
// and sets X-App-Usage; it answers code 4 and reports true when over it.
func (s *Server) appBudgetLocked(w http.ResponseWriter) bool {
	if s.opts.AppCallsPerHour <= 0 {
		return false
	}
	now := s.clock.Now()
	kept := s.appCalls[:0]
	for _, t := range s.appCalls {
		if now.Sub(t) < time.Hour {
			kept = append(kept, t)
		}
	}
	s.appCalls = append(kept, now)
	pct := len(s.appCalls) * 100 / s.opts.AppCallsPerHour
	w.Header().Set("X-App-Usage", fmt.Sprintf(`{"call_count":%d,"total_cputime":1,"total_time":1}`, pct))
	if len(s.appCalls) > s.opts.AppCallsPerHour {
		s.writeError(w, http.StatusForbidden, 4, 0, s.errorMessage(4, 0, nil, now))
		return true
	}
	return false
}

// proofOKLocked checks appsecret_proof over token: a wrong proof is always
// refused, a missing one when the app requires it (and needed is true).
func (s *Server) proofOKLocked(w http.ResponseWriter, r *http.Request, op, token string, needed bool) bool {
	got := r.Form.Get("appsecret_proof")
	switch {
	case got == "" && s.opts.RequireAppSecret && needed:
		s.writeTypedError(w, http.StatusBadRequest, "GraphMethodException", 100, 0, MissingProofMessage)
		return false
	case got == "":
		return true
	case !hmac.Equal([]byte(got), []byte(Proof(s.opts.AppSecret, token))):
		s.writeTypedError(w, http.StatusBadRequest, "GraphMethodException", 100, 0, InvalidProofMessage)
		return false
	}
	s.proofs[op]++
	return true
}

// pageLocked answers GET /{page-id}?fields=access_token with the caller's
// token: the Page token when the caller has a role on the Page, else the
// Page without access_token, or with Options.PageRoleError code 190/492
// (unconfirmed which).
func (s *Server) pageLocked(w http.ResponseWriter, r *http.Request, pageID string) {
	caller := r.Form.Get("access_token")
	t, now, ok := s.usableLocked(w, caller)
	if !ok {
		return
	}
	roles, exists := s.pages[pageID]
	if !exists {
		s.writeError(w, http.StatusBadRequest, 100, 33, "Unsupported get request. Object with ID '"+pageID+"' does not exist, cannot be loaded due to missing permissions, or does not support this operation.")
		return
	}
	resp := map[string]any{"id": pageID}
	if s.opts.PageRoleError && r.Form.Get("fields") == "access_token" && !roles[caller] {
		s.writeError(w, http.StatusBadRequest, 190, 492, "Error validating access token: The user must be an administrator, editor, or moderator of the page in order to impersonate it.")
		return
	}
	if r.Form.Get("fields") == "access_token" && roles[caller] && t.kind != KindPage && t.kind != KindApp {
		key := caller + "\x00" + pageID
		pt, ok := s.pageTokens[key]
		if old := s.tokens[pt]; !ok || old == nil || old.errCode != 0 || old.revoked {
			// None yet, or the last one was invalidated on its own: a new one.
			p := &token{kind: KindPage, issuedAt: now, userID: t.userID, parent: caller, pageID: pageID,
				dataAccess: t.dataAccess, scopes: []string{"pages_show_list", "pages_manage_posts", "pages_read_engagement"}}
			if t.kind == KindUserShort {
				// A Page token from a short-lived user token is short-lived too.
				p.expiresAt = t.expiresAt
			}
			pt = s.addLocked(p)
			s.pageTokens[key] = pt
		}
		resp["access_token"] = pt
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) exchangeLocked(w http.ResponseWriter, r *http.Request, refresh bool) {
	f := r.Form
	if f.Get("grant_type") != "fb_exchange_token" {
		s.writeError(w, http.StatusBadRequest, 100, 0, "Unsupported grant_type")
		return
	}
	if !s.appCredentialsOK(w, f) {
		return
	}
	in := f.Get("fb_exchange_token")
	if in == "" {
		s.writeError(w, http.StatusBadRequest, 100, 0, "(#100) The parameter fb_exchange_token is required")
		return
	}
	t, now, ok := s.usableLocked(w, in)
	if !ok {
		return
	}

	out, outTok := in, t
	switch {
	case t.kind == KindUserShort:
		// Short-lived user token: a new long-lived one.
		outTok = &token{kind: KindUserLong, issuedAt: now, expiresAt: now.Add(s.opts.LongLivedTTL),
			dataAccess: now.Add(s.opts.DataAccessTTL), userID: t.userID, scopes: t.scopes}
		out = s.addLocked(outTok)
		if s.opts.ExchangeRevokesShortLived {
			t.revoked = true
		}
	case refresh && t.kind == KindSystemUserExpiring:
		// A new token valid LongLivedTTL from now; the old one keeps
		// working until its own expiry.
		outTok = &token{kind: KindSystemUserExpiring, issuedAt: now, expiresAt: now.Add(s.opts.LongLivedTTL),
			userID: t.userID, scopes: t.scopes}
		out = s.addLocked(outTok)
	default:
		// A long-lived user token (or any other kind) is not extended:
		// the same string and the same expiry.
	}
	resp := map[string]any{"access_token": out, "token_type": "bearer"}
	if !s.opts.OmitExpiresIn && !outTok.expiresAt.IsZero() {
		secs := int64(outTok.expiresAt.Sub(now) / time.Second)
		if secs < 1 {
			secs = 1
		}
		resp["expires_in"] = secs
	}
	writeJSON(w, http.StatusOK, resp)
}

// usableLocked returns the token tok when it is known and valid; otherwise
// it answers the error envelope (the recorded body for 190/463).
func (s *Server) usableLocked(w http.ResponseWriter, tok string) (*token, time.Time, bool) {
	now := s.clock.Now()
	t, ok := s.tokens[tok]
	if !ok {
		s.writeError(w, http.StatusBadRequest, 190, 0, "Invalid OAuth access token - Cannot parse access token")
		return nil, now, false
	}
	if code, sub, bad := s.invalidLocked(t, now); bad {
		if code == 190 && sub == 463 {
			w.Header().Set("WWW-Authenticate", Recorded463WWWAuthenticate)
			writeJSONRaw(w, http.StatusBadRequest, Recorded463Body)
			return nil, now, false
		}
		s.writeError(w, http.StatusBadRequest, code, sub, s.errorMessage(code, sub, t, now))
		return nil, now, false
	}
	return t, now, true
}

type debugError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Subcode int    `json:"subcode,omitempty"`
}

type granularScope struct {
	Scope     string   `json:"scope"`
	TargetIDs []string `json:"target_ids,omitempty"`
}

type debugData struct {
	AppID               string          `json:"app_id,omitempty"`
	Type                string          `json:"type,omitempty"`
	Application         string          `json:"application,omitempty"`
	DataAccessExpiresAt int64           `json:"data_access_expires_at"`
	Error               *debugError     `json:"error,omitempty"`
	ExpiresAt           int64           `json:"expires_at"`
	IsValid             bool            `json:"is_valid"`
	IssuedAt            *int64          `json:"issued_at,omitempty"`
	Scopes              []string        `json:"scopes"`
	GranularScopes      []granularScope `json:"granular_scopes,omitempty"`
	UserID              string          `json:"user_id,omitempty"`
	ProfileID           string          `json:"profile_id,omitempty"`
}

func (s *Server) debugTokenLocked(w http.ResponseWriter, r *http.Request) {
	f := r.Form
	appToken := s.opts.AppID + "|" + s.opts.AppSecret
	if f.Get("access_token") != appToken {
		s.writeError(w, http.StatusBadRequest, 190, 0, "Invalid OAuth access token signature.")
		return
	}
	// The app token is checked first, then its proof.
	if !s.proofOKLocked(w, r, OpDebugToken, appToken, s.opts.AppTokenCallsNeedProof) {
		return
	}
	in := f.Get("input_token")
	if in == "" {
		s.writeError(w, http.StatusBadRequest, 100, 0, "(#100) The parameter input_token is required")
		return
	}
	t, ok := s.tokens[in]
	if !ok {
		writeJSON(w, s.opts.InvalidTokenStatus, map[string]any{"data": debugData{
			Error:   &debugError{Code: 190, Message: "Invalid OAuth access token."},
			IsValid: false,
			Scopes:  []string{},
		}})
		return
	}
	if t.emptyDebug {
		writeJSONRaw(w, http.StatusOK, `{"data":[]}`)
		return
	}
	now := s.clock.Now()
	gt := graphType(t.kind)
	if t.graphType != "" {
		gt = t.graphType
	}
	d := debugData{
		AppID:       s.opts.AppID,
		Type:        gt,
		Application: applicationName,
		IsValid:     true,
		Scopes:      append([]string{}, t.scopes...),
		UserID:      t.userID,
	}
	if !t.expiresAt.IsZero() {
		d.ExpiresAt = t.expiresAt.Unix()
	}
	if !t.dataAccess.IsZero() {
		d.DataAccessExpiresAt = t.dataAccess.Unix()
	}
	if !t.issuedAt.IsZero() {
		ia := t.issuedAt.Unix()
		d.IssuedAt = &ia
	}
	for _, sc := range t.scopes {
		d.GranularScopes = append(d.GranularScopes, granularScope{Scope: sc})
	}
	if t.kind == KindPage {
		d.ProfileID = "1" + t.userID[1:]
		if t.pageID != "" {
			d.ProfileID = t.pageID
		}
	}
	status := http.StatusOK
	if code, sub, bad := s.invalidLocked(t, now); bad {
		d.IsValid = false
		d.Error = &debugError{Code: code, Subcode: sub, Message: s.errorMessage(code, sub, t, now)}
		status = s.opts.InvalidTokenStatus
	}
	writeJSON(w, status, map[string]any{"data": d})
}

// invalidLocked reports why t is unusable: a set error, revocation or expiry.
func (s *Server) invalidLocked(t *token, now time.Time) (code, subcode int, bad bool) {
	switch {
	case t.errCode != 0:
		return t.errCode, t.errSubcode, true
	case t.revoked:
		return 190, 467, true
	case !t.expiresAt.IsZero() && !now.Before(t.expiresAt):
		return 190, 463, true
	case t.parent != "":
		// A Page token dies with its user's session (not with the user
		// token's expiry) and with the user's role on the Page.
		if p := s.tokens[t.parent]; p != nil {
			if p.errCode != 0 {
				return p.errCode, p.errSubcode, true
			}
			if p.revoked {
				return 190, 467, true
			}
		}
		if !s.pages[t.pageID][t.parent] {
			return 190, 492, true
		}
	}
	return 0, 0, false
}

func graphType(k Kind) string {
	switch k {
	case KindUserShort, KindUserLong:
		return "USER"
	case KindSystemUserExpiring, KindSystemUserNonExpiring:
		return "SYSTEM_USER"
	case KindPage:
		return "PAGE"
	case KindApp:
		return "APP"
	}
	return string(k)
}

const fbTime = "Monday, 02-Jan-06 15:04:05 MST"

func (s *Server) errorMessage(code, subcode int, t *token, now time.Time) string {
	if code != 190 {
		switch code {
		case 102:
			return "Session key invalid or no longer valid"
		case 10:
			return "(#10) Application does not have permission for this action"
		case 4:
			return "(#4) Application request limit reached"
		case 17:
			return "(#17) User request limit reached"
		case 32:
			return "(#32) Page request limit reached"
		case 613:
			return "(#613) Calls to this api have exceeded the rate limit."
		case 1:
			return "An unknown error occurred"
		case 3:
			return "(#3) Application does not have the capability to make this API call."
		case 100:
			return "(#100) Invalid parameter"
		case 101:
			return InvalidAppIDMessage
		case 341:
			return "(#341) Application limit reached"
		case 368:
			return "(#368) The action attempted has been deemed abusive or is otherwise disallowed"
		case 2:
			return "An unexpected error has occurred. Please retry your request later."
		}
		if code >= 200 && code <= 299 {
			return fmt.Sprintf("(#%d) Requires a permission the app does not have", code)
		}
		if code >= 80000 && code <= 80014 {
			return fmt.Sprintf("(#%d) There have been too many calls. Wait a bit and try again.", code)
		}
		return fmt.Sprintf("(#%d) An error occurred", code)
	}
	switch subcode {
	case 458:
		return "Error validating access token: The user has not authorized application " + s.opts.AppID + "."
	case 459:
		return "Error validating access token: You cannot access the app till you log in to www.facebook.com and follow the instructions given."
	case 460:
		return "Error validating access token: The session has been invalidated because the user changed their password or Facebook has changed the session for security reasons."
	case 463:
		exp := now
		if t != nil && !t.expiresAt.IsZero() {
			exp = t.expiresAt
		}
		return "Error validating access token: Session has expired on " + exp.Format(fbTime) + ". The current time is " + now.Format(fbTime) + "."
	case 464:
		return "Error validating access token: Sessions for the user are not allowed because the user is not a confirmed user."
	case 467:
		return "Error validating access token: The session is invalid because the user logged out."
	case 492:
		return "Error validating access token: The user does not have a role on the Page."
	case 493:
		return "Error validating access token: Data access has expired because the user has not used the app in 90 days."
	}
	return "Invalid OAuth access token."
}

type errorBody struct {
	Message      string `json:"message"`
	Type         string `json:"type"`
	Code         int    `json:"code"`
	ErrorSubcode int    `json:"error_subcode,omitempty"`
	FBTraceID    string `json:"fbtrace_id"`
}

// writeError answers the {"error":{...}} envelope.
func (s *Server) writeError(w http.ResponseWriter, status, code, subcode int, msg string) {
	s.writeTypedError(w, status, "OAuthException", code, subcode, msg)
}

func (s *Server) writeTypedError(w http.ResponseWriter, status int, typ string, code, subcode int, msg string) {
	if code == 190 {
		w.Header().Set("WWW-Authenticate", `OAuth "Facebook Platform" "invalid_token" "`+msg+`"`)
	}
	writeJSON(w, status, map[string]any{"error": errorBody{
		Message: msg, Type: typ, Code: code, ErrorSubcode: subcode,
		FBTraceID: randomAlnum(11),
	}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	writeJSONRaw(w, status, string(b))
}

func writeJSONRaw(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func sanitizePath(p string) string {
	if len(p) > 64 {
		p = p[:64]
	}
	out := make([]rune, 0, len(p))
	for _, r := range p {
		if r >= 0x20 && r < 0x7f {
			out = append(out, r)
		}
	}
	return string(out)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func randomAlnum(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return string(b)
}

func randomDigits(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = '0' + b[i]%10
	}
	if b[0] == '0' {
		b[0] = '1'
	}
	return string(b)
}

// appCredentialsOK checks client_id and client_secret of a token endpoint
// request, answering Meta's error when one is wrong.
func (s *Server) appCredentialsOK(w http.ResponseWriter, f url.Values) bool {
	if f.Get("client_id") != s.opts.AppID {
		s.writeError(w, http.StatusBadRequest, 101, 0, InvalidAppIDMessage)
		return false
	}
	if f.Get("client_secret") != s.opts.AppSecret {
		s.writeError(w, http.StatusBadRequest, 1, 0, ClientSecretErrorMessage)
		return false
	}
	return true
}
