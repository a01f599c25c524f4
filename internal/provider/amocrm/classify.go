package amocrm

import (
	"encoding/json"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// AmoCRM's texts, matched exactly (after trimming, case-insensitively).
const (
	hintTokenRevoked      = "Token has been revoked"
	hintTokenExpired      = "Token has expired"
	hintCodeExpired       = "Authorization code has expired"
	hintCodeRevoked       = "Authorization code has been revoked"
	hintCannotDecrypt     = "Cannot decrypt the refresh token"
	hintNotLinked         = "Token is not linked to client"
	hintInvalidAccount    = "Invalid account"
	hintCheckClientID     = "Check the `client_id` parameter"
	hintCheckClientSecret = "Check the `client_secret` parameter"
	hintRedirectURI       = "Redirect URI is not associated with client"
	titleBadClient        = "Некорректный клиент"
	detailBadClient       = "Авторизация клиента не прошла"
)

// problem is AmoCRM's OAuth problem JSON; it has no RFC 6749 "error" field.
type problem struct {
	Hint   string          `json:"hint"`
	Title  string          `json:"title"`
	Type   string          `json:"type"`
	Status json.RawMessage `json:"status"`
	Detail string          `json:"detail"`
}

// parseProblem reports whether body is a problem JSON (it has a hint or a
// title).
func parseProblem(body []byte) (problem, bool) {
	var p problem
	if err := json.Unmarshal(body, &p); err != nil {
		return problem{}, false
	}
	p.Hint, p.Title, p.Detail = strings.TrimSpace(p.Hint), strings.TrimSpace(p.Title), strings.TrimSpace(p.Detail)
	return p, p.Hint != "" || p.Title != ""
}

const humanAction = "a human must authorize the integration again and put a new authorization_code (or refresh_token) into the credentials Secret"

// classifyProblem turns a 400/401 problem JSON from the token endpoint into
// an *Error. secrets are values sent in the request, redacted from the hint
// should the server ever echo one.
func classifyProblem(op string, status int, p problem, secrets ...string) *provider.Error {
	hint := safeHint(p.Hint, secrets)
	e := &provider.Error{Op: op, HTTPStatus: status}
	if hint != "" {
		e.Code = "hint: " + hint
	}
	grantWhat := "the refresh token"
	if op == OpAuthorizationCode {
		grantWhat = "the authorization code"
	}
	conf := func(reason, msg string) *provider.Error {
		e.Kind, e.Reason, e.Message = provider.KindConfiguration, reason, msg
		return e
	}
	reauth := func(reason, why string) *provider.Error {
		e.Kind, e.Reason = provider.KindReauthorize, reason
		e.Message = "AmoCRM refused " + grantWhat
		if hint != "" {
			e.Message += " (hint: " + hint + ")"
		}
		if why != "" {
			e.Message += ": " + why
		}
		e.Message += "; " + humanAction
		return e
	}
	switch {
	case is(p.Hint, hintCheckClientID):
		return conf("InvalidClient", "AmoCRM does not recognise the client (hint: "+hint+"): set client_id in the credentials Secret to the integration ID")
	case is(p.Hint, hintCheckClientSecret):
		return conf("InvalidClient", "AmoCRM rejected the client secret (hint: "+hint+"): set client_secret in the credentials Secret to the integration's secret key")
	case is(p.Hint, hintRedirectURI):
		return conf("RedirectURIMismatch", "AmoCRM rejected the redirect URI (hint: "+hint+"): set spec.amocrm.redirectURI to the integration's redirect URI, byte-for-byte")
	case p.Hint == "" && (p.Title == titleBadClient || p.Detail == detailBadClient):
		e.Code = "title: " + titleBadClient
		return conf("InvalidClient", "AmoCRM rejected the client ("+titleBadClient+": client authentication failed). It answers this for any of three mismatches, most often the redirect URI: "+
			"compare spec.amocrm.redirectURI character for character (scheme, host, path, trailing slash) with the integration's Redirect URI in AmoCRM (Settings > Integrations > the integration > Keys and scopes), "+
			"then client_id in the credentials Secret with the integration ID and client_secret with its Secret key there")
	case is(p.Hint, hintTokenRevoked):
		return reauth("RefreshTokenRevoked", "it was already used (rotated by another process, or a rotated pair was never saved) or the integration was revoked")
	case is(p.Hint, hintTokenExpired):
		return reauth("RefreshTokenExpired", "it expired (unused for about 3 months)")
	case is(p.Hint, hintCodeExpired), is(p.Hint, hintCodeRevoked):
		return reauth("AuthorizationCodeInvalid", "an authorization code is single-use and lives about 20 minutes")
	case is(p.Hint, hintCannotDecrypt), is(p.Hint, hintNotLinked):
		return reauth("RefreshTokenInvalid", "it is not a valid refresh token of this integration")
	case is(p.Hint, hintInvalidAccount):
		return reauth("InvalidAccount", "the account is not valid for this integration (check spec.amocrm.domain)")
	default:
		return reauth("ReauthorizationRequired", "")
	}
}

func is(hint, want string) bool { return strings.EqualFold(strings.TrimSpace(hint), want) }

// safeHint returns hint made safe to quote (provider.Redact), with any
// request secret redacted.
func safeHint(hint string, secrets []string) string {
	return provider.Redact(hint, secrets...)
}
