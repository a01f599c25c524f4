// Package state is the file through which the tokenkeeper sandbox
// (hack/sandbox) hands its addresses and the demo credentials it minted to
// the demo driver (hack/demo).
//
// The file holds fake credentials that only the sandbox accepts; it is still
// written with mode 0600, like any file that holds credentials.
package state

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// State is the content of the sandbox's --state-file.
type State struct {
	// AmoCRMURL is the base URL of the fake AmoCRM (pass it as --amocrm-url).
	AmoCRMURL string `json:"amocrmURL"`
	// FacebookURL is the base URL of the fake Graph API (--facebook-url).
	FacebookURL string `json:"facebookURL"`
	// AmoCRMConsentURL is the fake AmoCRM's OAuth (consent) page, AmoCRMURL
	// + "/oauth" (pass it as --amocrm-consent-url). It approves at once and
	// redirects to the integration's redirect URI
	// (Credentials.AmoCRM.RedirectURI) with a code.
	AmoCRMConsentURL string `json:"amocrmConsentURL"`
	// FacebookDialogURL is the base URL of the fake login dialog (pass it as
	// --facebook-dialog-url): the fake Graph API serves
	// /{version}/dialog/oauth too. It approves at once and redirects to the
	// redirect_uri it was given with a code.
	FacebookDialogURL string `json:"facebookDialogURL"`
	// FacebookRedirectURI is the fake app's one Valid OAuth Redirect URI
	// (--facebook-redirect-uri; spec.facebook.redirectURI must equal it),
	// or empty when the app accepts any https or loopback http URI.
	FacebookRedirectURI string `json:"facebookRedirectURI,omitempty"`
	// StatusURL serves the sandbox's call counters (no secret values).
	StatusURL string `json:"statusURL"`
	// PID is the sandbox's process id.
	PID int `json:"pid"`
	// Credentials are the values for the demo's credentials Secrets.
	Credentials Credentials `json:"credentials"`
}

// Credentials are the demo credentials the sandbox minted at start.
type Credentials struct {
	AmoCRM AmoCRM `json:"amocrm"`
	// FacebookUserShort holds a short-lived USER token (about 2 h).
	FacebookUserShort Facebook `json:"facebookUserShort"`
	// FacebookSystemUserExpiring holds a SYSTEM_USER token that expires in
	// about 3 days (refreshable with set_token_expires_in_60_days).
	FacebookSystemUserExpiring Facebook `json:"facebookSystemUserExpiring"`
	// FacebookSystemUserNonExpiring holds a SYSTEM_USER token that never expires.
	FacebookSystemUserNonExpiring Facebook `json:"facebookSystemUserNonExpiring"`
	// FacebookPageUser holds a long-lived USER token (about 60 days) with a
	// role on the Page FacebookPageID: spec.facebook.pageID makes the
	// operator publish that Page's token, derived from it.
	FacebookPageUser Facebook `json:"facebookPageUser"`
	// FacebookPageID is the fake Page FacebookPageUser has a role on.
	FacebookPageID string `json:"facebookPageID"`
	// AmoCRMRefreshTokens are more refresh tokens of the same AmoCRM
	// integration, one per ManagedToken of a benchmark (--amocrm-refresh-tokens).
	AmoCRMRefreshTokens []string `json:"amocrmRefreshTokens,omitempty"`
	// FacebookSystemUserTokens are more expiring system-user tokens of the
	// same app, one per ManagedToken of a benchmark
	// (--facebook-system-user-tokens).
	FacebookSystemUserTokens []string `json:"facebookSystemUserTokens,omitempty"`
}

// AmoCRM are an AmoCRM integration's credentials. The keys of Secret are the
// credentials Secret's keys.
type AmoCRM struct {
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	RefreshToken string `json:"refresh_token"`
	// RedirectURI goes into spec.amocrm.redirectURI, not into the Secret.
	RedirectURI string `json:"redirect_uri"`
}

// Secret returns the credentials Secret's data.
func (a AmoCRM) Secret() map[string]string {
	return map[string]string{"client_id": a.ClientID, "client_secret": a.ClientSecret, "refresh_token": a.RefreshToken}
}

// Facebook are a Facebook app's credentials and one access token.
type Facebook struct {
	AppID       string `json:"app_id"`
	AppSecret   string `json:"app_secret"`
	AccessToken string `json:"access_token"`
}

// Secret returns the credentials Secret's data.
func (f Facebook) Secret() map[string]string {
	return map[string]string{"app_id": f.AppID, "app_secret": f.AppSecret, "access_token": f.AccessToken}
}

// Write writes s to path atomically (a temporary file renamed into place),
// with mode 0600, so a reader never sees a half-written file.
func Write(path string, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".sandbox-state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Read reads the state file at path.
func Read(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if s.AmoCRMURL == "" || s.FacebookURL == "" {
		return nil, fmt.Errorf("%s: amocrmURL or facebookURL missing", path)
	}
	return s, nil
}

// Status is the JSON the sandbox serves at StatusPath: call counters, never
// a secret value.
type Status struct {
	// RefreshGrants counts AmoCRM token requests with grant_type
	// refresh_token, the bootstrap from the credentials Secret included.
	RefreshGrants int `json:"refreshGrants"`
	// AuthorizationCodeGrants counts AmoCRM token requests with grant_type
	// authorization_code.
	AuthorizationCodeGrants int `json:"authorizationCodeGrants"`
	// ReusedRefreshTokens counts AmoCRM refresh tokens presented again after
	// they were consumed. A correct operator keeps it at 0.
	ReusedRefreshTokens int `json:"reusedRefreshTokens"`
	// AccountProbes counts GET /api/v4/account requests.
	AccountProbes int `json:"accountProbes"`
	// FacebookExchanges counts fb_exchange_token requests without
	// set_token_expires_in_60_days.
	FacebookExchanges int `json:"facebookExchanges"`
	// FacebookRefreshes counts fb_exchange_token requests with
	// set_token_expires_in_60_days=true (system-user refreshes).
	FacebookRefreshes int `json:"facebookRefreshes"`
	// DebugTokenCalls counts debug_token requests.
	DebugTokenCalls int `json:"debugTokenCalls"`
	// PageTokenCalls counts GET /{page-id} requests (Page token
	// derivations).
	PageTokenCalls int `json:"pageTokenCalls"`
	// AmoCRMConsents counts requests to the fake AmoCRM OAuth page.
	AmoCRMConsents int `json:"amocrmConsents"`
	// FacebookDialogs counts requests to the fake login dialog.
	FacebookDialogs int `json:"facebookDialogs"`
	// FacebookCodeGrants counts code exchanges at the Graph token endpoint.
	FacebookCodeGrants int `json:"facebookCodeGrants"`
}

// StatusPath is served on the AmoCRM listener.
const StatusPath = "/_sandbox/status"
