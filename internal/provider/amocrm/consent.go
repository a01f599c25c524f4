package amocrm

import (
	"net/url"
	"strings"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// The public OAuth (consent) pages, one per platform. The integration's
// owner opens one with client_id, state and mode; after the user picks an
// account and grants access, Kommo redirects to the integration's redirect
// URI with code, state, referer (the account host), platform and
// client_id. Sources: the official SDK (amocrm/amocrm-api-php
// examples/get_token.php: getAuthorizeUrl with state and
// mode=post_message; AmoCRMOAuth::getOAuthButton: mode popup or
// post_message) and developers.kommo.com/docs/button-on-site (redirect with
// code, referer, state); platform and client_id in the redirect are seen in
// recorded callbacks [S]. See docs/providers.md.
const (
	ConsentURLAmoCRMRu  = "https://www.amocrm.ru/oauth"
	ConsentURLAmoCRMCom = "https://www.amocrm.com/oauth"
	ConsentURLKommo     = "https://www.kommo.com/oauth"
)

// ConsentMode is the mode parameter ConsentURL sends: post_message makes
// the OAuth page redirect to the redirect URI in the window it was opened
// in (popup instead posts the result to the opener window, which a
// command-line flow does not have).
const ConsentMode = "post_message"

// ConsentURL returns the URL of AmoCRM's OAuth (consent) page for the
// integration clientID: base with the query client_id and mode=post_message.
// base "" means the public page of the platform of spec.amocrm.domain
// (ConsentURLAmoCRMRu, ConsentURLAmoCRMCom or ConsentURLKommo); any other
// base (the --amocrm-consent-url flag: tests, the sandbox) is used as is.
// No state is added: the caller appends "&state=" and its value, which the
// returned URL always allows (it has a query and no fragment). Errors are
// *provider.Error of KindConfiguration and hold no credential.
func ConsentURL(base string, spec *tokensv1alpha1.ManagedTokenSpec, clientID string) (string, error) {
	const op = "consent_url"
	fail := func(reason, msg string) (string, error) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: reason, Op: op, Message: msg}
	}
	if spec == nil || spec.AmoCRM == nil {
		return fail("AmoCRMSpecMissing", "spec.amocrm is required: set amocrm.domain and amocrm.redirectURI")
	}
	clientID = strings.TrimSpace(clientID)
	if clientID == "" {
		return fail("CredentialsKeyMissing", "the credentials Secret is missing: "+KeyClientID+" (the integration ID, needed for the consent page)")
	}
	if base == "" {
		domain := strings.ToLower(spec.AmoCRM.Domain)
		if !allowedHost(domain) {
			return fail("InvalidDomain", "spec.amocrm.domain must be the account host, such as example.amocrm.ru, example.amocrm.com or example.kommo.com")
		}
		switch {
		case strings.HasSuffix(domain, ".amocrm.ru"):
			base = ConsentURLAmoCRMRu
		case strings.HasSuffix(domain, ".amocrm.com"):
			base = ConsentURLAmoCRMCom
		default:
			base = ConsentURLKommo
		}
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Fragment != "" || u.User != nil {
		return fail("InvalidConsentURL", "the AmoCRM consent page URL (--amocrm-consent-url) must be an absolute http(s) URL without fragment or user info")
	}
	q := u.Query()
	q.Set("client_id", clientID)
	q.Set("mode", ConsentMode)
	u.RawQuery = q.Encode()
	u.ForceQuery = false
	return u.String(), nil
}
