// Package amocrmfake is an in-memory fake of the AmoCRM (Kommo) OAuth token
// endpoint and of GET /api/v4/account, for tests and the demo sandbox.
//
// It follows the project's protocol notes (docs/providers.md, with sources):
// POST /oauth2/access_token
// accepts JSON and form-encoded bodies, refresh tokens are single-use and
// rotate with no grace window, authorization codes are single-use and live 20
// minutes, errors are OAuth problem JSON bodies (hint, title, type, status,
// detail) with no RFC 6749 "error" field, and access tokens are RS256-shaped
// JWTs whose signature is random bytes (clients decode them without
// verifying).
//
// It serves the OAuth (consent) page GET /oauth too: it approves at once
// (or denies, SetConsent) and redirects to the integration's redirect URI
// with a fresh authorization code, as Kommo does after a human grants
// access (see consent.go).
//
// It also serves GET /oauth2/account/current/subdomain (the account's
// current host, asked with X-Refresh-Token), can move the account to another
// host (requests whose Host header names the old one are then refused), and
// can answer the account endpoint's documented non-token 401s and the 403
// of the account's API IP allow-list.
//
// A Server is an http.Handler; wrap it in an httptest.Server. All methods are
// safe for concurrent use.
package amocrmfake

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Paths served by the fake, as on a real AmoCRM account domain, and the
// OAuth (consent) page, which the real service serves on www.amocrm.ru,
// www.amocrm.com and www.kommo.com (the fake answers it on any host).
const (
	TokenPath     = "/oauth2/access_token"
	AccountPath   = "/api/v4/account"
	SubdomainPath = "/oauth2/account/current/subdomain"
	ConsentPath   = "/oauth"
)

// DefaultDomain is the account host when Options.Domain is empty.
const DefaultDomain = Subdomain + ".amocrm.ru"

// RedirectMismatch is how the fake answers a redirect_uri that differs from
// the integration's. Which one the real server gives is unconfirmed: the
// SDK trackers report "Некорректный клиент" for it, the hint exists too.
type RedirectMismatch int

const (
	// RedirectMismatchBadClient: 401 "Некорректный клиент" without a hint
	// (the answer most reported in the SDK trackers). The default.
	RedirectMismatchBadClient RedirectMismatch = iota
	// RedirectMismatchHint: 400 with hint "Redirect URI is not associated with client".
	RedirectMismatchHint
)

// ErrorShape is the body shape of the account endpoint's coded errors
// (unconfirmed which the v4 endpoint uses).
type ErrorShape int

const (
	// ShapeResponse: {"response":{"error":"..","error_code":"101","ip":"..","domain":"..","server_time":..}}. The default.
	ShapeResponse ErrorShape = iota
	// ShapeProblem: the v4 problem JSON with an error_code field.
	ShapeProblem
)

// Non-token errors of the account endpoint (Kommo's error table).
const (
	ErrAccountNotFound = "101"
	ErrAuthorization   = "110"
	ErrCaptcha         = "111"
	ErrUserDisabled    = "112"
	ErrAnotherServer   = "another server"
)

// Hints the fake answers with (AmoCRM's own texts).
const (
	HintTokenRevoked       = "Token has been revoked"
	HintTokenExpired       = "Token has expired"
	HintCannotDecrypt      = "Cannot decrypt the refresh token"
	HintNotLinkedToClient  = "Token is not linked to client"
	HintCodeExpired        = "Authorization code has expired"
	HintCodeRevoked        = "Authorization code has been revoked"
	HintCheckClientID      = "Check the `client_id` parameter"
	HintCheckClientSecret  = "Check the `client_secret` parameter"
	HintRedirectURI        = "Redirect URI is not associated with client"
	HintInvalidAccount     = "Invalid account"
	ProblemType            = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
	TitleBadRequest        = "Некорректный запрос"
	DetailBadRequest       = "В запросе отсутствует ряд параметров или параметры невалидны"
	TitleBadClient         = "Некорректный клиент"
	DetailBadClient        = "Авторизация клиента не прошла"
	AuthorizationCodeTTL   = 20 * time.Minute
	RefreshTokenTTL        = 90 * 24 * time.Hour
	DefaultAccessTokenTTL  = 24 * time.Hour
	defaultUsedTokenStatus = http.StatusUnauthorized
	maxRequestBody         = 1 << 20
)

// BlockedBody is the nginx-style HTML page served with 403 when SetBlocked(true).
const BlockedBody = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"

// Fake account data returned by /api/v4/account and put into JWT claims.
const (
	AccountID   = 31234567
	AccountName = "Tokenkeeper fake account"
	Subdomain   = "example"
)

// Options configures a Server.
type Options struct {
	ClientID, ClientSecret, RedirectURI string // required credentials; requests must match
	AccessTokenTTL                      time.Duration
	Clock                               clock.PassiveClock
	// UsedTokenStatus is the HTTP status for a consumed, unknown or expired
	// refresh token: 400 or 401 (unconfirmed in the docs, so a switch);
	// default 401.
	UsedTokenStatus int
	// IncludeServerTime adds server_time to success bodies.
	IncludeServerTime bool
	// RevokeOldAccessTokenOnRefresh ([U] in the docs): when true, a refresh
	// makes the access token issued with the consumed refresh token fail
	// /api/v4/account at once.
	RevokeOldAccessTokenOnRefresh bool
	// Domain is the account host (default DefaultDomain); it sets the JWT
	// base_domain and api_domain claims. Requests are routed by their Host
	// header only after MoveAccount.
	Domain string
	// RedirectMismatch chooses the answer to a wrong redirect_uri.
	RedirectMismatch RedirectMismatch
	// ErrorShape chooses the body of coded account errors.
	ErrorShape ErrorShape
}

type refreshState int

const (
	refreshLive refreshState = iota
	refreshConsumed
	refreshRevoked
)

type refreshToken struct {
	state   refreshState
	expires time.Time
	access  string // the access token issued with it, if any
}

type authCode struct {
	expires time.Time
	used    bool
}

type accessToken struct {
	expires time.Time
	revoked bool
}

type failure struct {
	n      int
	status int
	body   string
	header http.Header
}

// Server is the fake AmoCRM server. It implements http.Handler.
type Server struct {
	opts  Options
	clock clock.PassiveClock

	mu             sync.Mutex
	refresh        map[string]*refreshToken
	codes          map[string]*authCode
	access         map[string]*accessToken
	currentAccess  string
	currentRefresh string
	calls          map[string]int
	reused         int
	secrets        []string
	failToken      failure
	failAccount    failure
	blocked        bool
	movedCode      string
	domain         string
	oldDomains     map[string]bool
	accountErr     string
	allowList      bool
	clientUUIDs    []string
	denyConsent    bool
}

// New returns a fake AmoCRM server.
func New(opts Options) *Server {
	if opts.AccessTokenTTL <= 0 {
		opts.AccessTokenTTL = DefaultAccessTokenTTL
	}
	if opts.UsedTokenStatus == 0 {
		opts.UsedTokenStatus = defaultUsedTokenStatus
	}
	clk := opts.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	s := &Server{
		opts:    opts,
		clock:   clk,
		refresh: map[string]*refreshToken{},
		codes:   map[string]*authCode{},
		access:  map[string]*accessToken{},
		calls:   map[string]int{},
	}
	if opts.ClientSecret != "" {
		s.secrets = append(s.secrets, opts.ClientSecret)
	}
	s.domain = opts.Domain
	if s.domain == "" {
		s.domain = DefaultDomain
	}
	s.oldDomains = map[string]bool{}
	return s
}

// MoveAccount moves the account to newHost (such as example.kommo.com):
// requests whose Host header names a previous host get the account
// endpoint's "call another server" 401 (or code 101 when notFound), on
// every path but SubdomainPath. Tokens issued afterwards carry the new
// base_domain and api_domain.
func (s *Server) MoveAccount(newHost string, notFound bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	code := ErrAnotherServer
	if notFound {
		code = ErrAccountNotFound
	}
	s.oldDomains[s.domain] = true
	delete(s.oldDomains, newHost)
	s.domain = newHost
	s.movedCode = code
}

// Domain returns the account's current host.
func (s *Server) Domain() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.domain
}

// SetAccountError makes /api/v4/account answer 401 with this documented
// non-token error (ErrAccountNotFound, ErrAuthorization, ErrCaptcha,
// ErrUserDisabled, ErrAnotherServer) for every token until cleared with "".
func (s *Server) SetAccountError(code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accountErr = code
}

// SetIPAllowList makes every request get the account's API IP allow-list
// refusal: 403 with code 113 and the caller's address.
func (s *Server) SetIPAllowList(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.allowList = on
}

// ClientUUIDs returns the X-Client-UUID headers received on API calls.
func (s *Server) ClientUUIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.clientUUIDs...)
}

// IssueRefreshToken mints a fresh, valid refresh token, as if a human had
// authorized the integration. It becomes CurrentRefreshToken.
func (s *Server) IssueRefreshToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newRefreshTokenLocked("")
}

// IssueAuthorizationCode mints a single-use authorization code valid for 20
// minutes of the fake clock.
func (s *Server) IssueAuthorizationCode() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issueCodeLocked()
}

func (s *Server) issueCodeLocked() string {
	code := "def50200" + randomHex(160)
	s.codes[code] = &authCode{expires: s.clock.Now().Add(AuthorizationCodeTTL)}
	s.secrets = append(s.secrets, code)
	return code
}

// IssueLongLivedToken mints a long-lived JWT access token with that expiry
// and no refresh token. /api/v4/account accepts it until exp.
func (s *Server) IssueLongLivedToken(exp time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok := s.newJWT(s.clock.Now(), exp)
	s.access[tok] = &accessToken{expires: exp}
	s.secrets = append(s.secrets, tok)
	return tok
}

// CurrentAccessToken returns the newest access token issued by the token
// endpoint, or "" if none.
func (s *Server) CurrentAccessToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.currentAccess
}

// CurrentRefreshToken returns the newest refresh token if it is still live,
// else "".
func (s *Server) CurrentRefreshToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, ok := s.refresh[s.currentRefresh]
	if !ok || rt.state != refreshLive || !s.clock.Now().Before(rt.expires) {
		return ""
	}
	return s.currentRefresh
}

// RevokeAll kills every refresh token, access token and outstanding
// authorization code, as when a user revokes the integration.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rt := range s.refresh {
		if rt.state == refreshLive {
			rt.state = refreshRevoked
		}
	}
	for _, at := range s.access {
		at.revoked = true
	}
	for _, c := range s.codes {
		c.used = true
	}
}

// Calls counts requests by op: "refresh_token", "authorization_code"
// (token-endpoint requests by grant_type), "token" (every token-endpoint
// request), "account" and "consent" (requests to the OAuth page,
// ConsentPath, refused ones included). Requests answered by FailNext,
// FailAccountNext or SetBlocked are counted too.
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// ReusedRefreshTokens counts the times a previously consumed refresh token was
// presented. A correct client keeps it at 0.
func (s *Server) ReusedRefreshTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reused
}

// RefreshTokenLive reports whether token is a refresh token the fake
// issued and that can still be exchanged (not consumed, revoked or expired).
func (s *Server) RefreshTokenLive(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, ok := s.refresh[token]
	return ok && rt.state == refreshLive && s.clock.Now().Before(rt.expires)
}

// Secrets returns every secret value the fake ever issued or knows: access
// tokens, refresh tokens, authorization codes and the client secret.
func (s *Server) Secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.secrets...)
}

// FailNext makes the next n token-endpoint requests get this response instead
// of being processed (nothing is consumed). A later call replaces a pending
// one; n <= 0 clears it. header may be nil.
func (s *Server) FailNext(n int, status int, body string, header http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failToken = failure{n: n, status: status, body: body, header: header.Clone()}
}

// FailAccountNext makes the next n /api/v4/account requests get this response.
func (s *Server) FailAccountNext(n int, status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failAccount = failure{n: n, status: status, body: body}
}

// SetBlocked makes every request get 403 with an nginx HTML page while true.
func (s *Server) SetBlocked(blocked bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blocked = blocked
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == ConsentPath {
		// The consent page lives on www.amocrm.ru / www.kommo.com, not on
		// the account host: moves and the account's IP allow-list do not
		// apply to it.
		s.serveConsent(w, r)
		return
	}
	if r.URL.Path != SubdomainPath && s.refuseHost(w, r) {
		return
	}
	switch r.URL.Path {
	case TokenPath:
		s.serveToken(w, r)
	case AccountPath:
		s.serveAccount(w, r)
	case SubdomainPath:
		s.serveSubdomain(w, r)
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{
			"title": "Not Found", "type": "https://httpstatus.es/404", "status": 404, "detail": "Not Found",
		}, nil)
	}
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	params, parseOK := readParams(w, r)
	grant := params.Get("grant_type")

	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["token"]++
	if grant != "" {
		s.calls[grant]++
	}
	if s.blocked {
		writeBlocked(w)
		return
	}
	if f := &s.failToken; f.n > 0 {
		f.n--
		writeRaw(w, f.status, f.body, f.header)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]any{
			"title": "Method Not Allowed", "type": "https://httpstatus.es/405", "status": 405, "detail": "Method Not Allowed",
		}, nil)
		return
	}
	if !parseOK {
		writeProblem(w, http.StatusBadRequest, "Check the `grant_type` parameter")
		return
	}

	// Client authentication first, as the OAuth server does.
	switch clientID := params.Get("client_id"); {
	case clientID == "":
		writeProblem(w, http.StatusBadRequest, HintCheckClientID)
		return
	case clientID != s.opts.ClientID:
		writeProblem(w, http.StatusUnauthorized, HintCheckClientID)
		return
	}
	switch secret := params.Get("client_secret"); {
	case secret == "":
		writeProblem(w, http.StatusBadRequest, HintCheckClientSecret)
		return
	case secret != s.opts.ClientSecret:
		writeJSON(w, http.StatusUnauthorized, problem{
			Title: TitleBadClient, Type: ProblemType, Status: http.StatusUnauthorized, Detail: DetailBadClient,
		}, nil)
		return
	}
	if params.Get("redirect_uri") != s.opts.RedirectURI {
		if s.opts.RedirectMismatch == RedirectMismatchHint {
			writeProblem(w, http.StatusBadRequest, HintRedirectURI)
			return
		}
		writeJSON(w, http.StatusUnauthorized, problem{
			Title: TitleBadClient, Type: ProblemType, Status: http.StatusUnauthorized, Detail: DetailBadClient,
		}, nil)
		return
	}

	now := s.clock.Now()
	switch grant {
	case "authorization_code":
		code := params.Get("code")
		c, ok := s.codes[code]
		switch {
		case code == "":
			writeProblem(w, http.StatusBadRequest, "Check the `code` parameter")
			return
		case !ok:
			writeProblem(w, http.StatusBadRequest, "Cannot decrypt the authorization code")
			return
		case c.used:
			writeProblem(w, http.StatusBadRequest, HintCodeRevoked)
			return
		case !now.Before(c.expires):
			writeProblem(w, http.StatusBadRequest, HintCodeExpired)
			return
		}
		c.used = true
	case "refresh_token":
		token := params.Get("refresh_token")
		rt, ok := s.refresh[token]
		switch {
		case token == "":
			writeProblem(w, http.StatusBadRequest, "Check the `refresh_token` parameter")
			return
		case !ok:
			writeProblem(w, s.opts.UsedTokenStatus, HintCannotDecrypt)
			return
		case rt.state == refreshConsumed:
			s.reused++
			writeProblem(w, s.opts.UsedTokenStatus, HintTokenRevoked)
			return
		case rt.state == refreshRevoked:
			writeProblem(w, s.opts.UsedTokenStatus, HintTokenRevoked)
			return
		case !now.Before(rt.expires):
			writeProblem(w, s.opts.UsedTokenStatus, HintTokenExpired)
			return
		}
		rt.state = refreshConsumed // single use, no grace window
		if s.opts.RevokeOldAccessTokenOnRefresh && rt.access != "" {
			if at := s.access[rt.access]; at != nil {
				at.revoked = true
			}
		}
	default:
		writeJSON(w, http.StatusBadRequest, problem{
			Hint: "Check that all required parameters have been provided", Title: TitleBadRequest,
			Type: ProblemType, Status: http.StatusBadRequest, Detail: DetailBadRequest,
		}, nil)
		return
	}

	access := s.newJWT(now, now.Add(s.opts.AccessTokenTTL))
	s.access[access] = &accessToken{expires: now.Add(s.opts.AccessTokenTTL)}
	s.currentAccess = access
	s.secrets = append(s.secrets, access)
	refresh := s.newRefreshTokenLocked(access)

	body := tokenResponse{
		TokenType:    "Bearer",
		ExpiresIn:    int64(s.opts.AccessTokenTTL / time.Second),
		AccessToken:  access,
		RefreshToken: refresh,
	}
	if s.opts.IncludeServerTime {
		body.ServerTime = now.Unix()
	}
	writeJSON(w, http.StatusOK, body, nil)
}

func (s *Server) serveAccount(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["account"]++
	if s.blocked {
		writeBlocked(w)
		return
	}
	s.noteClientUUIDLocked(r)
	if f := &s.failAccount; f.n > 0 {
		f.n--
		writeRaw(w, f.status, f.body, nil)
		return
	}
	if s.accountErr != "" {
		s.writeAccountErrorLocked(w, r, s.accountErr)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", http.MethodGet)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]any{
			"title": "Method Not Allowed", "type": "https://httpstatus.es/405", "status": 405, "detail": "Method Not Allowed",
		}, nil)
		return
	}
	auth := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	at := s.access[token]
	if !ok || at == nil || at.revoked || !s.clock.Now().Before(at.expires) {
		writeJSON(w, http.StatusUnauthorized, map[string]any{
			"title": "Unauthorized", "type": "https://httpstatus.es/401", "status": 401,
			"detail": "Необходима авторизация",
		}, nil)
		return
	}
	sub, _, _ := strings.Cut(s.domain, ".")
	writeJSON(w, http.StatusOK, map[string]any{
		"id": AccountID, "name": AccountName, "subdomain": sub,
		"current_user_id": 1, "country": "RU", "currency": "RUB",
	}, nil)
}

// refuseHost answers requests to a host the account moved away from, and
// the IP allow-list refusal.
func (s *Server) refuseHost(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.allowList {
		s.calls["blocked"]++
		s.writeCodedLocked(w, r, http.StatusForbidden, "113", "Доступ запрещен: IP-адрес не входит в список разрешённых")
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if !s.oldDomains[strings.ToLower(host)] {
		return false
	}
	switch r.URL.Path {
	case TokenPath:
		s.calls["token"]++
	case AccountPath:
		s.calls["account"]++
	}
	s.calls["old_host"]++
	s.writeAccountErrorLocked(w, r, s.movedCode)
	return true
}

// writeAccountErrorLocked answers a documented non-token 401.
func (s *Server) writeAccountErrorLocked(w http.ResponseWriter, r *http.Request, code string) {
	switch code {
	case ErrAnotherServer:
		s.writeCodedLocked(w, r, http.StatusUnauthorized, "", "Нет информации об аккаунте на этом сервере: обратитесь к другому серверу (call another server)")
	case ErrAccountNotFound:
		s.writeCodedLocked(w, r, http.StatusUnauthorized, code, "Аккаунт не найден")
	case ErrCaptcha:
		s.writeCodedLocked(w, r, http.StatusUnauthorized, code, "Требуется ввод капчи")
	case ErrUserDisabled:
		s.writeCodedLocked(w, r, http.StatusUnauthorized, code, "Пользователь отключен или не состоит в аккаунте")
	default:
		s.writeCodedLocked(w, r, http.StatusUnauthorized, code, "Неверный логин или пароль")
	}
}

// writeCodedLocked writes a coded error in Options.ErrorShape, with the
// caller's address.
func (s *Server) writeCodedLocked(w http.ResponseWriter, r *http.Request, status int, code, text string) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	if s.opts.ErrorShape == ShapeProblem {
		body := map[string]any{"title": http.StatusText(status), "type": "https://httpstatus.es/" + strconv.Itoa(status), "status": status, "detail": text, "ip": ip}
		if code != "" {
			body["error_code"] = code
		}
		writeJSON(w, status, body, nil)
		return
	}
	resp := map[string]any{"error": text, "ip": ip, "domain": s.domain, "server_time": s.clock.Now().Unix()}
	if code != "" {
		resp["error_code"] = code
	}
	writeJSON(w, status, map[string]any{"response": resp}, nil)
}

// serveSubdomain answers GET /oauth2/account/current/subdomain for a live
// refresh token in X-Refresh-Token (which it does not consume).
func (s *Server) serveSubdomain(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["subdomain"]++
	s.noteClientUUIDLocked(r)
	rt, ok := s.refresh[r.Header.Get("X-Refresh-Token")]
	if r.Method != http.MethodGet || !ok || rt.state != refreshLive || !s.clock.Now().Before(rt.expires) {
		writeJSON(w, http.StatusUnauthorized, map[string]any{
			"title": "Unauthorized", "type": "https://httpstatus.es/401", "status": 401, "detail": "Необходима авторизация",
		}, nil)
		return
	}
	sub, _, _ := strings.Cut(s.domain, ".")
	writeJSON(w, http.StatusOK, map[string]any{
		"id": AccountID, "subdomain": sub, "domain": s.domain, "top_level_domain": s.domain[strings.LastIndex(s.domain, ".")+1:],
	}, nil)
}

func (s *Server) noteClientUUIDLocked(r *http.Request) {
	if v := r.Header.Get("X-Client-UUID"); v != "" {
		s.clientUUIDs = append(s.clientUUIDs, v)
	}
}

func (s *Server) newRefreshTokenLocked(access string) string {
	tok := "def50200" + randomHex(256)
	s.refresh[tok] = &refreshToken{expires: s.clock.Now().Add(RefreshTokenTTL), access: access}
	s.currentRefresh = tok
	s.secrets = append(s.secrets, tok)
	return tok
}

// newJWT builds an RS256-shaped JWT with a random signature.
func (s *Server) newJWT(iat, exp time.Time) string {
	header := map[string]string{"alg": "RS256", "typ": "JWT"}
	claims := map[string]any{
		"aud":         s.opts.ClientID,
		"jti":         randomHex(20),
		"iat":         iat.Unix(),
		"nbf":         iat.Unix(),
		"exp":         exp.Unix(),
		"sub":         "1",
		"grant_type":  "",
		"account_id":  AccountID,
		"base_domain": s.domain[strings.Index(s.domain, ".")+1:],
		"version":     2,
		"scopes":      []string{"push_notifications", "files", "crm", "files_delete", "notifications"},
		"hash_uuid":   randomHex(16),
		"api_domain":  "api-b." + s.domain[strings.Index(s.domain, ".")+1:],
	}
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	sig := make([]byte, 256)
	_, _ = rand.Read(sig)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(h) + "." + enc.EncodeToString(c) + "." + enc.EncodeToString(sig)
}

type tokenResponse struct {
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ServerTime   int64  `json:"server_time,omitempty"`
}

type problem struct {
	Hint   string `json:"hint,omitempty"`
	Title  string `json:"title"`
	Type   string `json:"type"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// ProblemBody returns AmoCRM's OAuth problem JSON for hint and status, for
// use with FailNext.
func ProblemBody(status int, hint string) string {
	b, _ := json.Marshal(problem{Hint: hint, Title: TitleBadRequest, Type: ProblemType, Status: status, Detail: DetailBadRequest})
	return string(b)
}

// BadClientBody returns AmoCRM's "Некорректный клиент" body (no hint).
func BadClientBody() string {
	b, _ := json.Marshal(problem{Title: TitleBadClient, Type: ProblemType, Status: http.StatusUnauthorized, Detail: DetailBadClient})
	return string(b)
}

func writeProblem(w http.ResponseWriter, status int, hint string) {
	writeJSON(w, status, problem{Hint: hint, Title: TitleBadRequest, Type: ProblemType, Status: status, Detail: DetailBadRequest}, nil)
}

func writeJSON(w http.ResponseWriter, status int, v any, header http.Header) {
	b, _ := json.Marshal(v)
	for k, vs := range header {
		w.Header()[k] = vs
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeRaw(w http.ResponseWriter, status int, body string, header http.Header) {
	for k, vs := range header {
		w.Header()[k] = vs
	}
	if w.Header().Get("Content-Type") == "" {
		switch t := strings.TrimSpace(body); {
		case strings.HasPrefix(t, "{") || strings.HasPrefix(t, "["):
			w.Header().Set("Content-Type", "application/json")
		case strings.HasPrefix(t, "<"):
			w.Header().Set("Content-Type", "text/html")
		default:
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func writeBlocked(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html")
	w.Header().Set("Server", "nginx")
	w.WriteHeader(http.StatusForbidden)
	_, _ = io.WriteString(w, BlockedBody)
}

// readParams reads a JSON or form-encoded token request body. A body that
// is neither declared JSON nor form-encoded is sniffed.
func readParams(w http.ResponseWriter, r *http.Request) (url.Values, bool) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		return url.Values{}, false
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var isJSON bool
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		isJSON = true
	case mt == "application/x-www-form-urlencoded":
		isJSON = false
	default:
		isJSON = strings.HasPrefix(strings.TrimSpace(string(raw)), "{")
	}
	if isJSON {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return url.Values{}, false
		}
		v := url.Values{}
		for k, val := range m {
			if s, ok := val.(string); ok {
				v.Set(k, s)
			}
		}
		return v, true
	}
	v, err := url.ParseQuery(string(raw))
	if err != nil {
		return url.Values{}, false
	}
	return v, true
}

func randomHex(nBytes int) string {
	b := make([]byte, nBytes)
	if _, err := rand.Read(b); err != nil {
		panic("amocrmfake: crypto/rand: " + err.Error())
	}
	return hex.EncodeToString(b)
}
