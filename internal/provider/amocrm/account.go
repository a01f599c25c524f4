package amocrm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// Account hosts, domain moves and the account endpoint's own error codes.
//
// Domain moves: an account's host changes when its subdomain is renamed or
// it moves between amocrm.com and kommo.com. The client FOLLOWS a move, but
// only this way: when the account endpoint answers that the account is not
// found (code 101) or lives on another server, and the token has a refresh
// token, it asks GET https://<api_domain>/oauth2/account/current/subdomain
// with X-Refresh-Token (as the official SDK does), where api_domain comes
// from the token's own JWT and must be a host under amocrm.ru, amocrm.com or
// kommo.com. The answer is accepted only when its domain is such a host too
// and its id is the JWT's account_id. The new host is kept in
// Token.APIDomain and used for every later call of that token; nothing else
// (no redirect, no other field) can move a token elsewhere. Long-lived
// tokens have no refresh token: a move is only reported, naming the domain
// the token belongs to.

const subdomainPath = "/oauth2/account/current/subdomain"

var accountHostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.(amocrm\.ru|amocrm\.com|kommo\.com)$`)

// allowedHost reports whether host is <label>.amocrm.ru|amocrm.com|kommo.com.
func allowedHost(host string) bool { return accountHostRE.MatchString(host) }

func specDomain(req provider.Request) string {
	if req.Spec == nil || req.Spec.AmoCRM == nil {
		return ""
	}
	return req.Spec.AmoCRM.Domain
}

// tokenHost is the host a token's calls go to: its APIDomain when it
// followed a move (and is an allowed host), else spec.amocrm.domain.
func tokenHost(req provider.Request, t *provider.Token) string {
	if t != nil && t.APIDomain != "" && allowedHost(t.APIDomain) {
		return t.APIDomain
	}
	return specDomain(req)
}

// setClientUUID sends X-Client-UUID (the integration's client_id), as the
// official SDK does on every API call.
func (c *Client) setClientUUID(hreq *http.Request, req provider.Request, claims jwtClaims) {
	id := req.Credentials.Get(KeyClientID)
	if id == "" {
		id = claims.aud
	}
	if id != "" && len(id) <= 64 && !strings.ContainsAny(id, "\r\n") {
		hreq.Header.Set("X-Client-UUID", id)
	}
}

// crossCheck compares the token's JWT aud with client_id in the
// credentials, as the Facebook client compares app_id.
func (c *Client) crossCheck(req provider.Request, claims jwtClaims) *provider.Error {
	id := req.Credentials.Get(KeyClientID)
	if claims.aud == "" || id == "" || claims.aud == id {
		return nil
	}
	return &provider.Error{Kind: provider.KindConfiguration, Reason: "TokenClientMismatch", Op: OpAccount,
		Message: "the token was issued to another integration than the one in credentials key client_id (the JWT aud claim differs): " +
			"put this integration's client_id and client_secret in the credentials Secret, or authorize this integration again and put a new authorization_code there"}
}

// accountError is what a 401 or 403 body of the account endpoint says
// beyond its status: the code of Kommo's error table and, when given, the
// caller's address as AmoCRM saw it. Two shapes are read (which one the v4
// endpoint uses for these codes is unconfirmed): {"response":{"error":"..",
// "error_code":"110","ip":"..","domain":".."}} and a problem JSON with
// "error_code" (or "code") at the top level.
type accountError struct {
	code, ip, text string
}

func parseAccountError(body []byte) accountError {
	var raw struct {
		Response *struct {
			Error     string              `json:"error"`
			ErrorCode provider.FlexString `json:"error_code"`
			IP        string              `json:"ip"`
		} `json:"response"`
		ErrorCode provider.FlexString `json:"error_code"`
		Code      provider.FlexString `json:"code"`
		Detail    string              `json:"detail"`
		IP        string              `json:"ip"`
	}
	if json.Unmarshal(body, &raw) != nil {
		return accountError{}
	}
	var ae accountError
	if r := raw.Response; r != nil {
		ae = accountError{code: string(r.ErrorCode), ip: r.IP, text: r.Error}
	} else {
		ae = accountError{code: string(raw.ErrorCode), ip: raw.IP, text: raw.Detail}
		if ae.code == "" {
			ae.code = string(raw.Code)
		}
	}
	ae.code = strings.TrimSpace(ae.code)
	if !ipRE.MatchString(ae.ip) {
		ae.ip = ""
	}
	return ae
}

var ipRE = regexp.MustCompile(`^[0-9a-fA-F.:]{2,45}$`)

// anotherServer: Kommo's table documents a 401 "no account information on
// this server: call another server" without a code of its own, so its text
// (Russian or English) is what tells it apart.
func (ae accountError) anotherServer() bool {
	t := strings.ToLower(ae.text)
	return strings.Contains(t, "another server") || strings.Contains(t, "другой сервер")
}

// notAboutToken reports whether a 401 names a documented cause other than
// the token itself: such a 401 must not cause a refresh.
func (ae accountError) notAboutToken() bool {
	switch ae.code {
	case "101", "110", "111", "112":
		return true
	}
	return ae.anotherServer()
}

func (ae accountError) classify(op string, status int, host string) *provider.Error {
	e := &provider.Error{Op: op, HTTPStatus: status, Code: ae.code}
	switch {
	case ae.anotherServer():
		e.Kind, e.Reason, e.Code = provider.KindConfiguration, "AccountOnAnotherServer", "another server"
		e.Message = "AmoCRM has no information about the account on " + host + " (HTTP 401: call another server): the account moved (subdomain renamed, or amocrm.com/kommo.com move); " +
			"set spec.amocrm.domain to the account's current address (shown in the browser after logging in)"
	case ae.code == "101":
		e.Kind, e.Reason = provider.KindConfiguration, "AccountNotFound"
		e.Message = "AmoCRM has no account at " + host + " (code 101, account not found): the subdomain may have been renamed or the account moved between amocrm.com and kommo.com; " +
			"set spec.amocrm.domain to the account's current address"
	case ae.code == "111":
		e.Kind, e.Reason = provider.KindBlocked, "CaptchaRequired"
		e.Message = "AmoCRM asks for a captcha after failed authorization attempts (code 111): a human must log in to " + host +
			" in a browser and pass it; then request a refresh (kubectl tokenkeeper refresh)"
	case ae.code == "112":
		e.Kind, e.Reason = provider.KindReauthorize, "UserDisabled"
		e.Message = "AmoCRM says the user who authorized the integration is disabled or no longer in the account (code 112): " +
			"enable the user again, or have an administrator authorize the integration and put the new authorization_code into the credentials Secret"
	default: // 110
		e.Kind, e.Reason = provider.KindReauthorize, "AuthorizationFailed"
		e.Message = "AmoCRM refused the authorization for a reason other than the token itself (code " + ae.code + "): " +
			"check that the integration is still installed in the account and its user active, then authorize it again and put the new authorization_code into the credentials Secret"
	}
	return e
}

// blocked classifies a 403: code 113 is the account's own API IP allow-list;
// otherwise (often an nginx page) an IP block after too many requests, or
// that allow-list.
func (ae accountError) blocked(op string, status int) *provider.Error {
	e := &provider.Error{Kind: provider.KindBlocked, Reason: "ProviderBlocked", Op: op, HTTPStatus: status, Code: ae.code}
	egress := ""
	if ae.ip != "" {
		egress = " (AmoCRM saw this operator's requests come from " + ae.ip + ")"
	}
	if ae.code == "113" {
		e.Reason = "IPNotAllowed"
		e.Message = "AmoCRM refused this client because the account allows API calls only from listed IP addresses (code 113)" + egress +
			": add the operator's egress address to the account's API IP allow-list, or send its traffic through an allowed address; then request a refresh (kubectl tokenkeeper refresh). The operator stopped calling AmoCRM for this token"
		return e
	}
	e.Message = "AmoCRM refused this client (HTTP 403): an IP block after too many requests, or the account's API IP allow-list" + egress +
		"; the operator stopped calling AmoCRM for this token: check access from the operator's egress address, then change the ManagedToken or request a refresh"
	return e
}

func isMove(e *provider.Error) bool {
	return e != nil && (e.Reason == "AccountNotFound" || e.Reason == "AccountOnAnotherServer")
}

// movedReport completes a move error with what the token itself says about
// its account (JWT base_domain and account_id) and, when following was
// tried, why it failed.
func movedReport(e *provider.Error, req provider.Request, host string, claims jwtClaims, followErr *provider.Error) *provider.Error {
	cp := *e
	if claims.baseDomain != "" || claims.accountID != 0 {
		cp.Message += fmt.Sprintf("; the token belongs to account %d on %s", claims.accountID, claims.baseDomain)
	}
	if followErr != nil {
		cp.Message += "; looking the account's new address up failed: " + followErr.Message
	} else if claims.apiDomain == "" {
		cp.Message += "; a long-lived token (or one issued before August 2024) carries no way to look the new address up"
	}
	return &cp
}

type accountDomain struct {
	ID             provider.FlexString `json:"id"`
	Subdomain      string              `json:"subdomain"`
	Domain         string              `json:"domain"`
	TopLevelDomain string              `json:"top_level_domain"`
}

// followMove asks the account's current host with the refresh token (which
// this does not consume). See the comment at the top of this file.
func (c *Client) followMove(ctx context.Context, req provider.Request, refreshToken string, claims jwtClaims) (string, *provider.Error) {
	const op = "account_domain"
	if claims.apiDomain == "" || !allowedHost(claims.apiDomain) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: "NoAPIDomain", Op: op,
			Message: "the access token has no usable api_domain claim"}
	}
	hreq, perr := c.newRequest(ctx, req, http.MethodGet, op, claims.apiDomain, subdomainPath, nil)
	if perr != nil {
		return "", perr
	}
	hreq.Header.Set("X-Refresh-Token", refreshToken)
	c.setClientUUID(hreq, req, claims)
	status, header, body, perr := c.do(ctx, req, op, hreq)
	if perr != nil {
		return "", perr
	}
	if status < 200 || status >= 300 {
		return "", c.classifyStatus(op, status, header, body)
	}
	var ad accountDomain
	if json.Unmarshal(body, &ad) != nil {
		return "", &provider.Error{Kind: provider.KindTransient, Reason: "MalformedResponse", Op: op, HTTPStatus: status,
			Message: "the account domain answer is not JSON"}
	}
	host := strings.ToLower(strings.TrimSpace(ad.Domain))
	if !allowedHost(host) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: "AccountDomainNotAllowed", Op: op, HTTPStatus: status,
			Message: "the account's new address is not a host under amocrm.ru, amocrm.com or kommo.com, so it is not followed"}
	}
	if claims.accountID != 0 && string(ad.ID) != fmt.Sprint(claims.accountID) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: "AccountMismatch", Op: op, HTTPStatus: status,
			Message: "the account lookup answered for another account than the token's, so it is not followed"}
	}
	return host, nil
}
