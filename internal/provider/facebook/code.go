package facebook

import (
	"context"
	"net/url"
	"strings"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// The login flow ("Manually Build a Login Flow", developers.facebook.com/docs/
// facebook-login/guides/advanced/manual-flow) [P]:
//
//  1. The human opens the login dialog
//     https://www.facebook.com/{version}/dialog/oauth?client_id={app-id}
//     &redirect_uri={redirect-uri}&state={state}&response_type=code&scope=a,b
//     (ConsentURL builds it without state). redirect_uri must be one of the
//     app's Valid OAuth Redirect URIs.
//  2. Facebook redirects to redirect_uri with code and state, or, when the
//     human cancels, with error_reason=user_denied, error=access_denied and
//     error_description=Permissions+error [S: xamarin/FacebookComponents#109]
//     plus error_code=200 and a trailing #_=_ [S: recorded cancel URLs].
//  3. The code is exchanged (exchangeCode):
//     GET https://graph.facebook.com/{version}/oauth/access_token?client_id=
//     {app-id}&redirect_uri={redirect-uri}&client_secret={app-secret}&code=
//     {code}, with redirect_uri identical to the dialog's [P]. The answer has
//     the exchange shape {"access_token":..,"token_type":"bearer",
//     "expires_in":..} [S: SDK documentation examples, e.g. the Elixir
//     facebook package's access_token/4] and holds a user token, which the
//     client then treats exactly as a pasted one: a short-lived user token
//     is exchanged for a long-lived one.
//
// Code exchange errors come back as the Graph envelope with HTTP 400, code
// 100 and a subcode [S: recorded bodies in SDK issue threads and tests]:
//
//	36007 "This authorization code has expired."        [S for the text; U for the subcode]
//	36008 "Error validating verification code. Please make sure your redirect_uri is identical to the one you used in the OAuth dialog request"  [S]
//	36009 "This authorization code has been used."      [S]
//
// Older recordings of all three carry code 100 without a subcode. The
// client branches on the subcode only (never on the text):
//
//   - 36007, 36009: KindReauthorize (AuthorizationCodeExpired,
//     AuthorizationCodeUsed). A code lives minutes and works once: only a
//     human can get a new one, by authorizing again.
//   - 36008: KindConfiguration (RedirectURIMismatch). The setting
//     spec.facebook.redirectURI differs from the dialog's (or from the app's
//     list): a human must fix it, then authorize again.
//   - code 100 without one of these subcodes: KindReauthorize
//     (AuthorizationCodeInvalid), naming both causes: whatever it was, a new
//     code is needed.

// DefaultDialogBaseURL is the login dialog's root (flag
// --facebook-dialog-url overrides it).
const DefaultDialogBaseURL = "https://www.facebook.com"

// Subcodes of code 100 on the code exchange (see above).
const (
	SubcodeCodeExpired         = 36007
	SubcodeRedirectURIMismatch = 36008
	SubcodeCodeUsed            = 36009
)

// ConsentURL returns the login dialog URL for app appID:
// {base}/{graphAPIVersion}/dialog/oauth?client_id=..&redirect_uri=..
// &response_type=code&scope=a,b, with spec.facebook.redirectURI exactly and
// spec.facebook.scopes joined by commas (no scope parameter when there are
// none). base "" means DefaultDialogBaseURL. No state is added: the caller
// appends "&state=" and its value, which the returned URL always allows.
// Errors are *provider.Error of KindConfiguration and hold no credential.
func ConsentURL(base string, spec *tokensv1alpha1.ManagedTokenSpec, appID string) (string, error) {
	const op = "consent_url"
	fail := func(reason, msg string) (string, error) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: reason, Op: op, Message: msg}
	}
	appID = strings.TrimSpace(appID)
	switch {
	case appID == "":
		return fail("CredentialsKeyMissing", "the credentials Secret is missing: "+KeyAppID+" (the app ID, needed for the login dialog)")
	case strings.Contains(appID, "|"):
		return fail("InvalidAppID", "credentials key app_id must be the numeric Facebook app ID")
	}
	redirectURI, err := redirectURIOf(spec, op)
	if err != nil {
		return "", err
	}
	version, err := graphVersion(spec)
	if err != nil {
		return "", err
	}
	if base == "" {
		base = DefaultDialogBaseURL
	}
	u, perr := url.Parse(strings.TrimRight(base, "/"))
	if perr != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fail("InvalidDialogURL", "the Facebook login dialog base URL (--facebook-dialog-url) must be an absolute http(s) URL without query, fragment or user info")
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/" + version + "/dialog/oauth"
	u.RawPath = ""
	q := url.Values{}
	q.Set("client_id", appID)
	q.Set("redirect_uri", redirectURI)
	q.Set("response_type", "code")
	if scopes := specScopes(spec); len(scopes) > 0 {
		q.Set("scope", strings.Join(scopes, ","))
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func specScopes(spec *tokensv1alpha1.ManagedTokenSpec) []string {
	if spec == nil || spec.Facebook == nil {
		return nil
	}
	var out []string
	for _, s := range spec.Facebook.Scopes {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// redirectURIOf returns spec.facebook.redirectURI byte for byte, or the
// RedirectURIMissing error.
func redirectURIOf(spec *tokensv1alpha1.ManagedTokenSpec, op string) (string, error) {
	if spec != nil && spec.Facebook != nil && spec.Facebook.RedirectURI != "" {
		return spec.Facebook.RedirectURI, nil
	}
	return "", &provider.Error{Kind: provider.KindConfiguration, Reason: "RedirectURIMissing", Op: op,
		Message: "spec.facebook.redirectURI is required for an authorization code: set it to the app's Valid OAuth Redirect URI that reaches the operator's " +
			tokensv1alpha1.FacebookCallbackPath + " endpoint, byte-for-byte as listed in the app (Facebook Login > Settings)"}
}

// exchangeCode exchanges a login dialog code for a user token.
func (c *Client) exchangeCode(ctx context.Context, version string, creds provider.Credentials, code, redirectURI string) (*exchangeResult, error) {
	q := url.Values{}
	q.Set("client_id", creds.Get(KeyAppID))
	q.Set("redirect_uri", redirectURI)
	q.Set("client_secret", creds.Get(KeyAppSecret))
	q.Set("code", code)
	obj, resp, err := c.call(ctx, OpAuthorizationCode, version, pathExchange, q, creds, code)
	if err != nil {
		return nil, err
	}
	return tokenAnswer(OpAuthorizationCode, obj, resp)
}

// classifyCodeError classifies a code 100 answer of the code exchange.
func classifyCodeError(pe *provider.Error, e *apiError) {
	const again = "authorize again (kubectl tokenkeeper authorize)"
	switch e.Subcode {
	case SubcodeCodeUsed:
		pe.Kind, pe.Reason = provider.KindReauthorize, "AuthorizationCodeUsed"
		pe.Message = "Facebook refused the authorization code because it was already used (a code works once): " + again
	case SubcodeCodeExpired:
		pe.Kind, pe.Reason = provider.KindReauthorize, "AuthorizationCodeExpired"
		pe.Message = "Facebook refused the authorization code because it expired (a code lives only minutes): " + again
	case SubcodeRedirectURIMismatch:
		pe.Kind, pe.Reason = provider.KindConfiguration, "RedirectURIMismatch"
		pe.Message = "Facebook refused the authorization code because the redirect URI differs from the login dialog's: set spec.facebook.redirectURI " +
			"byte-for-byte to the dialog's redirect URI, one of the app's Valid OAuth Redirect URIs (Facebook Login > Settings), then " + again
	default:
		pe.Kind, pe.Reason = provider.KindReauthorize, "AuthorizationCodeInvalid"
		pe.Message = "Facebook refused the authorization code (code 100: used, expired, or issued for another redirect URI): " + again +
			"; if this repeats, compare spec.facebook.redirectURI with the app's Valid OAuth Redirect URIs"
	}
}

// passing reports whether err may pass on a retry.
func passing(err error) bool {
	k := provider.AsError(err).Kind
	return k == provider.KindTransient || k == provider.KindThrottled
}

// codeConsumed adds to a passing error met after a successful code
// exchange that the code cannot be exchanged again.
func codeConsumed(err error) error {
	if !passing(err) {
		return err
	}
	cp := *provider.AsError(err)
	cp.Message += " (the authorization code was already exchanged and works only once: if the next attempt fails too, authorize again)"
	return &cp
}
