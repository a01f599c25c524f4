package facebook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	neturl "net/url"
	"regexp"
	"strings"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// appSecretProof is Graph's appsecret_proof for token: the hex HMAC-SHA256
// of the access token sent in the call, keyed with the app secret.
func appSecretProof(appSecret, token string) string {
	m := hmac.New(sha256.New, []byte(appSecret))
	m.Write([]byte(token))
	return hex.EncodeToString(m.Sum(nil))
}

var pageIDRE = regexp.MustCompile(`^[0-9]{1,32}$`)

// pageIDOf returns spec.facebook.pageID ("" when unset).
func pageIDOf(spec *tokensv1alpha1.ManagedTokenSpec) (string, error) {
	if spec == nil || spec.Facebook == nil {
		return "", nil
	}
	id := strings.TrimSpace(spec.Facebook.PageID)
	if id != "" && !pageIDRE.MatchString(id) {
		return "", &provider.Error{Kind: provider.KindConfiguration, Reason: "InvalidPageID", Op: "config",
			Message: "spec.facebook.pageID must be the numeric ID of the Page"}
	}
	return id, nil
}

// withPage completes tok (the managed token, already checked) with the Page
// token to publish when pageID is set: current, when it is still a valid
// token of that Page, else one derived again from tok.AccessToken. Without
// pageID it clears PublishedAccessToken, so the managed token is published.
//
// The Page token's expiry and data access expiry, when earlier than the
// managed token's, become tok's: what is published must be renewed by then.
func (c *Client) withPage(ctx context.Context, version string, creds provider.Credentials, pageID string, tok *provider.Token, current string) (*provider.Token, error) {
	out := copyToken(tok)
	out.PublishedAccessToken = ""
	if pageID == "" {
		return out, nil
	}
	var dead *provider.Error
	if current != "" && current != tok.AccessToken {
		pt, d, err := c.debug(ctx, version, creds, current)
		switch {
		case err == nil && pageMatches(pt, d, pageID):
			out.PublishedAccessToken = current
			applyPageExpiry(out, pt)
			return out, nil
		case err == nil:
			// A valid token of another Page (pageID changed): derive anew.
		case provider.AsError(err).Kind == provider.KindReauthorize:
			dead = provider.AsError(err)
		default:
			return nil, err // transient or throttled: try again later
		}
	}
	page, err := c.derivePage(ctx, version, creds, pageID, tok.AccessToken)
	if err != nil {
		if dead != nil {
			return nil, &provider.Error{Kind: provider.KindReauthorize, Reason: "PageTokenInvalid", Op: OpPage, Code: dead.Code,
				Message: "the published Page token of Page " + pageID + " (spec.facebook.pageID) stopped working (" + dead.Reason +
					"), and no new one could be derived from the token in credentials key access_token (" + provider.AsError(err).Message +
					"): give that user a role on the Page again (for a system user: assign the Page in Business Settings), or put the token of a user with a role on the Page into access_token"}
		}
		return nil, err
	}
	pt, d, err := c.debug(ctx, version, creds, page)
	if err != nil {
		return nil, err
	}
	if !pageMatches(pt, d, pageID) {
		return nil, &provider.Error{Kind: provider.KindConfiguration, Reason: "PageMismatch", Op: OpPage,
			Message: "Facebook answered the Page token request for Page " + pageID + " (spec.facebook.pageID) with a token that debug_token reports as " +
				pt.Type + " of profile " + safeID(string(d.ProfileID)) + ": check spec.facebook.pageID"}
	}
	out.PublishedAccessToken = page
	applyPageExpiry(out, pt)
	return out, nil
}

// pageMatches reports whether a debug_token answer is a Page token of pageID
// (profile_id, when Facebook reports one, is the Page).
func pageMatches(pt *provider.Token, d *debugData, pageID string) bool {
	if pt.Type != TypePage {
		return false
	}
	p := strings.TrimSpace(string(d.ProfileID))
	return p == "" || p == pageID
}

func applyPageExpiry(out, page *provider.Token) {
	if page.Expires && (!out.Expires || page.ExpiresAt.Before(out.ExpiresAt)) {
		out.Expires, out.ExpiresAt = true, page.ExpiresAt
	}
	if !page.DataAccessExpiresAt.IsZero() && (out.DataAccessExpiresAt.IsZero() || page.DataAccessExpiresAt.Before(out.DataAccessExpiresAt)) {
		out.DataAccessExpiresAt = page.DataAccessExpiresAt
	}
}

// derivePage asks GET /{page-id}?fields=access_token with the user or
// system-user token (and its appsecret_proof). Obtained with a long-lived
// user token or a system-user token, the Page token does not expire.
func (c *Client) derivePage(ctx context.Context, version string, creds provider.Credentials, pageID, userToken string) (string, error) {
	q := neturl.Values{}
	q.Set("fields", "access_token")
	q.Set("access_token", userToken)
	q.Set("appsecret_proof", appSecretProof(creds.Get(KeyAppSecret), userToken))
	obj, resp, err := c.call(ctx, OpPage, version, "/"+pageID, q, creds, userToken)
	if err != nil {
		return "", err
	}
	var at string
	if raw, ok := obj["access_token"]; ok {
		_ = json.Unmarshal(raw, &at)
	}
	if at = strings.TrimSpace(at); at == "" {
		return "", &provider.Error{Kind: provider.KindReauthorize, Reason: "PageTokenUnavailable", Op: OpPage, HTTPStatus: resp.status,
			Message: "Facebook gave no Page access token for Page " + pageID + " (spec.facebook.pageID) to the token in credentials key access_token: " +
				"the user needs a role (task) on the Page and the pages_show_list permission (a system user: the Page assigned in Business Settings); fix that and put a new token into access_token, or correct spec.facebook.pageID"}
	}
	return at, nil
}

// userTokenFailed says, for a ManagedToken with a Page, that the managed
// user or system-user token failed, and that the Page token died with it.
func userTokenFailed(err error, pageID string) error {
	pe := provider.AsError(err)
	if pe.Kind != provider.KindReauthorize {
		return err
	}
	cp := *pe
	cp.Message = "the token in credentials key access_token, from which the published Page token of Page " + pageID +
		" is derived, no longer works, and the Page token stops with it: " + pe.Message
	return &cp
}
