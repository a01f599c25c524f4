package amocrmfake

import (
	"html"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// The consent side of the fake: AmoCRM's OAuth page
// (https://www.amocrm.ru/oauth, https://www.kommo.com/oauth), which a human
// opens with client_id, state and mode, and the redirect that follows.
//
// What the fake reproduces, and on what grounds:
//   - The page takes client_id, state and mode (popup or post_message)
//     [P: amocrm/amocrm-api-php examples/get_token.php and
//     AmoCRMOAuth::getOAuthButton]. With post_message the redirect happens
//     in the window the page was opened in; the fake redirects in either
//     mode (it has no opener window to post to). A missing or unknown mode
//     is refused with 400 [S: client libraries call it required].
//   - After access is granted the browser goes to the integration's
//     redirect URI with code, state, referer (the account host)
//     [P: developers.kommo.com/docs/button-on-site], platform and client_id
//     [S: recorded callbacks such as
//     "?code=..&state=..&referer=x.amocrm.ru&platform=1&client_id=.."].
//     platform is 1 for amocrm.ru accounts and 2 for amocrm.com / kommo.com
//     [S: recorded callbacks with platform=2 from kommo.com accounts].
//   - The code is the token endpoint's authorization code: single-use, 20
//     minutes [S].
//   - When an administrator installs the integration from inside the
//     account, Kommo's server calls the redirect URI once with code,
//     referer and from_widget, and no state of ours
//     [P: developers.kommo.com/docs/authorization-public]
//     (UnsolicitedCallbackURL).
//   - A refusal: redirect with error=access_denied and the state [U: no
//     Kommo page names the parameters; the button's data-error-callback is
//     called "if the user declines"]. SetConsent(true) switches to it.
//   - An unknown client_id gets an error page (HTTP 400) and no redirect.

// Parameter values the fake sends on the redirect.
const (
	// PlatformAmoCRMRu is the platform parameter for *.amocrm.ru accounts.
	PlatformAmoCRMRu = "1"
	// PlatformKommo is the platform parameter for *.kommo.com and
	// *.amocrm.com accounts.
	PlatformKommo = "2"
	// ConsentDeniedError is the error parameter of a refusal [U].
	ConsentDeniedError = "access_denied"
)

// SetConsent chooses the answer of the consent page: when deny is true it
// redirects with error=access_denied (and the state) instead of a code, as
// when the human declines; false (the default) approves at once.
func (s *Server) SetConsent(deny bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denyConsent = deny
}

// UnsolicitedCallbackURL mints an authorization code and returns the
// callback Kommo's server sends when an administrator installs the
// integration from inside the account: the redirect URI with exactly the
// documented code, referer (the account's current host) and from_widget=1;
// no state and no client_id [P: developers.kommo.com/docs/authorization-public].
// The code is counted in Secrets.
func (s *Server) UnsolicitedCallbackURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	code := s.issueCodeLocked()
	return provider.AppendQuery(s.opts.RedirectURI, [][2]string{
		{"code", code}, {"referer", s.domain}, {"from_widget", "1"},
	})
}

// serveConsent answers GET ConsentPath: with a known client_id and a mode,
// 302 to the integration's redirect URI with a fresh code (or the refusal).
func (s *Server) serveConsent(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["consent"]++
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", http.MethodGet)
		writePage(w, http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	q := r.URL.Query()
	switch {
	case q.Get("client_id") == "" || q.Get("client_id") != s.opts.ClientID:
		// Never redirect for an unknown integration: its redirect URI is
		// not known, and a redirect would be an open redirector.
		writePage(w, http.StatusBadRequest, "Integration not found: check client_id")
		return
	case q.Get("mode") != "post_message" && q.Get("mode") != "popup":
		writePage(w, http.StatusBadRequest, "Invalid mode: use post_message or popup")
		return
	}
	if u, err := url.Parse(s.opts.RedirectURI); err != nil || u.Host == "" {
		writePage(w, http.StatusInternalServerError, "The integration has no valid redirect URI")
		return
	}
	state := q.Get("state")
	var params [][2]string
	if s.denyConsent {
		params = [][2]string{{"error", ConsentDeniedError}}
	} else {
		params = [][2]string{{"code", s.issueCodeLocked()}}
	}
	if state != "" {
		params = append(params, [2]string{"state", state})
	}
	if !s.denyConsent {
		params = append(params, [2]string{"referer", s.domain}, [2]string{"platform", platformOf(s.domain)},
			[2]string{"client_id", s.opts.ClientID})
	}
	loc := provider.AppendQuery(s.opts.RedirectURI, params)
	w.Header().Set("Location", loc)
	w.Header().Set("Cache-Control", "no-store")
	writePage(w, http.StatusFound, "Redirecting to the integration")
}

// platformOf is the platform parameter for an account host.
func platformOf(domain string) string {
	if strings.HasSuffix(strings.ToLower(domain), ".amocrm.ru") {
		return PlatformAmoCRMRu
	}
	return PlatformKommo
}

func writePage(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, "<!DOCTYPE html>\n<html><head><title>amoCRM</title></head><body><p>"+html.EscapeString(msg)+"</p></body></html>\n")
}
