package facebookfake

import (
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// The login flow ("Manually Build a Login Flow", developers.facebook.com/docs/
// facebook-login/guides/advanced/manual-flow):
//
//   - GET /{version}/dialog/oauth?client_id&redirect_uri&state&scope
//     &response_type=code: the fake approves at once and answers 302 to
//     redirect_uri?code=..&state=.. [P]. client_id must be the app and
//     redirect_uri one of Options.RedirectURIs (any https, or loopback http,
//     URI when that list is empty); otherwise an error page (HTTP 400) and no
//     redirect, as Facebook shows "URL Blocked" [S]. scope is a comma (or
//     space) separated list [P]; the code carries it.
//   - SetConsent(true): the human cancels; 302 to redirect_uri?error=
//     access_denied&error_code=200&error_description=Permissions+error
//     &error_reason=user_denied&state=.. [S: recorded cancel URLs,
//     xamarin/FacebookComponents#109].
//   - Options.AppendHashFragment appends "#_=_" to both redirects [S].
//   - GET /{version}/oauth/access_token?client_id&redirect_uri&client_secret
//     &code: the code exchange. The code works once and lives CodeTTL
//     (default 10 minutes: RFC 6749's recommended maximum; Meta publishes
//     no figure [U]); redirect_uri must be identical to the dialog's. It
//     answers {"access_token","token_type":"bearer","expires_in"} with a new
//     short-lived user token whose scopes are the dialog's. Errors: HTTP 400,
//     OAuthException code 100 with subcode 36009 (used), 36007 (expired) or
//     36008 (redirect_uri mismatch), and WWW-Authenticate "invalid_code"
//     [S: recorded bodies and headers in SDK issue threads; 36007 is U].

// DefaultCodeTTL is the life of a login dialog code (Options.CodeTTL).
const DefaultCodeTTL = 10 * time.Minute

// Code exchange subcodes and messages (code 100).
const (
	SubcodeCodeExpired         = 36007
	SubcodeRedirectURIMismatch = 36008
	SubcodeCodeUsed            = 36009
	CodeUsedMessage            = "This authorization code has been used."
	CodeExpiredMessage         = "This authorization code has expired."
	RedirectMismatchMessage    = "Error validating verification code. Please make sure your redirect_uri is identical to the one you used in the OAuth dialog request"
	InvalidCodeMessage         = "Invalid verification code format."
)

type dialogCode struct {
	redirectURI string
	scopes      []string
	expires     time.Time
	used        bool
}

// SetConsent chooses the login dialog's answer: when deny is true it
// redirects as when the human cancels (error=access_denied ...); false (the
// default) approves at once.
func (s *Server) SetConsent(deny bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denyConsent = deny
}

// IssueAuthorizationCode mints a login code for redirectURI and scopes, as
// the dialog does after approval (without calling it). The code is counted
// in Secrets.
func (s *Server) IssueAuthorizationCode(redirectURI string, scopes ...string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issueCodeLocked(redirectURI, scopes)
}

func (s *Server) issueCodeLocked(redirectURI string, scopes []string) string {
	code := "AQ" + randomAlnum(200)
	s.codes[code] = &dialogCode{redirectURI: redirectURI, scopes: append([]string(nil), scopes...),
		expires: s.clock.Now().Add(s.opts.CodeTTL)}
	s.issued = append(s.issued, code)
	return code
}

// dialogLocked answers the login dialog.
func (s *Server) dialogLocked(w http.ResponseWriter, r *http.Request) {
	f := r.Form
	if f.Get("client_id") != s.opts.AppID {
		writeDialogPage(w, http.StatusBadRequest, "Invalid App ID: the provided app ID does not look like a valid app ID.")
		return
	}
	redirectURI := f.Get("redirect_uri")
	if !s.redirectAllowed(redirectURI) {
		// Never redirect to a URI the app does not list: an open redirector.
		writeDialogPage(w, http.StatusBadRequest, "URL Blocked: This redirect failed because the redirect URI is not whitelisted in the app's Client OAuth Settings.")
		return
	}
	if rt := f.Get("response_type"); rt != "" && rt != "code" {
		writeDialogPage(w, http.StatusBadRequest, "This fake serves only response_type=code.")
		return
	}
	state := f.Get("state")
	var params [][2]string
	if s.denyConsent {
		params = [][2]string{{"error", "access_denied"}, {"error_code", "200"},
			{"error_description", "Permissions error"}, {"error_reason", "user_denied"}}
	} else {
		params = [][2]string{{"code", s.issueCodeLocked(redirectURI, splitScopes(f.Get("scope")))}}
	}
	if state != "" {
		params = append(params, [2]string{"state", state})
	}
	loc := provider.AppendQuery(redirectURI, params)
	if s.opts.AppendHashFragment && !strings.Contains(loc, "#") {
		loc += "#_=_"
	}
	w.Header().Set("Location", loc)
	w.Header().Set("Cache-Control", "private, no-cache, no-store, must-revalidate")
	writeDialogPage(w, http.StatusFound, "Redirecting")
}

// redirectAllowed: one of Options.RedirectURIs, byte for byte; with none
// listed, any absolute https URI or http URI on a loopback host.
func (s *Server) redirectAllowed(uri string) bool {
	if uri == "" {
		return false
	}
	if len(s.opts.RedirectURIs) > 0 {
		return slices.Contains(s.opts.RedirectURIs, uri)
	}
	u, err := url.Parse(uri)
	if err != nil || u.Host == "" || u.User != nil {
		return false
	}
	switch u.Scheme {
	case "https":
		return true
	case "http":
		h := u.Hostname()
		ip := net.ParseIP(h)
		return h == "localhost" || (ip != nil && ip.IsLoopback())
	}
	return false
}

// codeGrantLocked answers the code exchange.
func (s *Server) codeGrantLocked(w http.ResponseWriter, r *http.Request) {
	f := r.Form
	if !s.appCredentialsOK(w, f) {
		return
	}
	now := s.clock.Now()
	c, ok := s.codes[f.Get("code")]
	switch {
	case !ok:
		s.writeCodeError(w, 0, InvalidCodeMessage)
		return
	case c.used:
		s.writeCodeError(w, SubcodeCodeUsed, CodeUsedMessage)
		return
	case !now.Before(c.expires):
		s.writeCodeError(w, SubcodeCodeExpired, CodeExpiredMessage)
		return
	case f.Get("redirect_uri") != c.redirectURI:
		s.writeCodeError(w, SubcodeRedirectURIMismatch, RedirectMismatchMessage)
		return
	}
	c.used = true
	scopes := c.scopes
	if len(scopes) == 0 {
		scopes = []string{"public_profile"} // granted to every app
	}
	t := &token{kind: KindUserShort, expiresAt: now.Add(DefaultShortLivedTTL), dataAccess: now.Add(s.opts.DataAccessTTL),
		userID: randomDigits(15), scopes: append([]string(nil), scopes...)}
	tok := s.addLocked(t)
	resp := map[string]any{"access_token": tok, "token_type": "bearer"}
	if !s.opts.OmitExpiresIn {
		resp["expires_in"] = int64(DefaultShortLivedTTL / time.Second)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) writeCodeError(w http.ResponseWriter, subcode int, msg string) {
	w.Header().Set("WWW-Authenticate", `OAuth "Facebook Platform" "invalid_code" "`+msg+`"`)
	s.writeError(w, http.StatusBadRequest, 100, subcode, msg)
}

func splitScopes(raw string) []string {
	var out []string
	for _, s := range strings.FieldsFunc(raw, func(r rune) bool { return r == ',' || r == ' ' }) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func writeDialogPage(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, "<!DOCTYPE html>\n<html><head><title>Facebook</title></head><body><p>"+html.EscapeString(msg)+"</p></body></html>\n")
}
