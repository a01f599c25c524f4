// Package provider defines the small interface every token provider
// (Facebook, AmoCRM) implements, and the types the controller and the
// providers exchange. Providers are wired explicitly in cmd/main.go; there is
// no global registry.
//
// Nothing in this package, nor in any provider, may put a token, a refresh
// token, a client secret or a URL carrying one into an error string or a log
// line. Errors carry a safe, human-readable message only.
package provider

import (
	"context"
	"encoding/json"
	"time"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// Credentials is the content of the user's credentials Secret (read only).
type Credentials map[string][]byte

// Get returns the trimmed string value of key, or "" when absent.
func (c Credentials) Get(key string) string {
	return trimSpace(string(c[key]))
}

// Has reports whether key is present and non-empty.
func (c Credentials) Has(key string) bool { return c.Get(key) != "" }

// Token is what the operator knows about the current credential. It is
// persisted in the operator-owned state Secret. The zero time means "unknown"
// for RefreshTokenExpiresAt/DataAccessExpiresAt and "never" for ExpiresAt
// when Expires is false.
type Token struct {
	// AccessToken is the managed token: the one refreshed and probed. It is
	// the value published to workloads unless PublishedAccessToken is set.
	AccessToken string
	// PublishedAccessToken is the value published to workloads when it
	// differs from AccessToken, e.g. a Facebook Page token derived from the
	// managed user/system-user token (spec.facebook.pageID); empty means
	// AccessToken. Bootstrap, Refresh and Probe may all return a new one.
	PublishedAccessToken string
	// APIDomain is the AmoCRM account host this token belongs to, when the
	// account moved away from spec.amocrm.domain and the client followed
	// it (always one of *.amocrm.ru, *.amocrm.com, *.kommo.com). Empty
	// means spec.amocrm.domain.
	APIDomain string
	// RefreshToken is set only for providers that rotate one (AmoCRM).
	RefreshToken string
	// ExpiresAt is the access token's expiry; meaningful only when Expires.
	ExpiresAt time.Time
	// Expires is false for tokens that never expire.
	Expires bool
	// RefreshTokenExpiresAt is the refresh token's expiry (AmoCRM), if known.
	RefreshTokenExpiresAt time.Time
	// DataAccessExpiresAt is Facebook's data access expiry, if any.
	DataAccessExpiresAt time.Time
	// ObtainedAt is when this token (pair) was obtained or adopted.
	ObtainedAt time.Time
	// Type is a CamelCase token kind shown in status, for example
	// AmoCRMOAuth, AmoCRMLongLived, FacebookUserShortLived,
	// FacebookUserLongLived, FacebookSystemUserExpiring,
	// FacebookSystemUserNonExpiring, FacebookPage, FacebookApp.
	Type string
	// Scopes granted, where known.
	Scopes []string
	// Refreshable reports whether the provider can renew this token without a
	// human. A non-refreshable token is monitored, and the operator asks for
	// reauthorization when it nears expiry.
	Refreshable bool
}

// Published returns the value to publish to workloads: PublishedAccessToken
// when set, else AccessToken.
func (t *Token) Published() string {
	if t == nil {
		return ""
	}
	if t.PublishedAccessToken != "" {
		return t.PublishedAccessToken
	}
	return t.AccessToken
}

// Request is what a provider call gets: the ManagedToken's spec (for
// provider settings such as the AmoCRM domain or the Graph API version) and
// the credentials Secret's content.
type Request struct {
	Spec        *tokensv1alpha1.ManagedTokenSpec
	Credentials Credentials
	// AccountHost is the AmoCRM account host that an authorization
	// callback named in its referer parameter, for a Bootstrap with grant
	// authorization_code of a code that callback delivered. The caller has
	// already checked it (spec.amocrm.domain, or a move the operator
	// followed); the AmoCRM client still refuses any host outside
	// *.amocrm.ru, *.amocrm.com and *.kommo.com. When set, the code is
	// exchanged on that host, and a token obtained on a host other than
	// spec.amocrm.domain carries it in Token.APIDomain. Empty means
	// spec.amocrm.domain. Facebook ignores it.
	AccountHost string
}

// ReasonAuthorizationRequired is the reason ValidateCredentials gives when
// there is no stored token yet and the credentials Secret holds the client
// keys but no grant at all: a human must authorize (kubectl tokenkeeper
// authorize) or put a grant into the Secret. Its kind is KindConfiguration.
const ReasonAuthorizationRequired = "AuthorizationRequired"

// AuthorizationRequired returns the *Error of ReasonAuthorizationRequired.
// grants names the keys that would do, such as "authorization_code (or
// refresh_token / access_token)". The controller may replace the message
// with one naming the ManagedToken.
func AuthorizationRequired(grants string) *Error {
	return &Error{
		Kind:   KindConfiguration,
		Reason: ReasonAuthorizationRequired,
		Op:     "credentials",
		Message: "no token yet and no grant in the credentials Secret: authorize with kubectl tokenkeeper authorize, or add " +
			grants + " to the credentials Secret",
	}
}

// Provider is implemented by each provider client.
type Provider interface {
	// Bootstrap turns the credentials Secret into a first token: AmoCRM
	// exchanges an authorization_code (on req.AccountHost when set) or a
	// refresh_token (or adopts a long-lived access_token); Facebook
	// exchanges an authorization_code (with spec.facebook.redirectURI) for
	// a user token, or introspects the access_token, and exchanges a
	// short-lived user token for a long-lived one. The grant is the
	// credentials key being consumed (see BootstrapGrants).
	Bootstrap(ctx context.Context, req Request, grant string) (*Token, error)

	// Refresh obtains a new token from the current one. Only called when
	// current.Refreshable. For AmoCRM this consumes current.RefreshToken.
	Refresh(ctx context.Context, req Request, current *Token) (*Token, error)

	// Probe cheaply checks that current is still valid. It returns the token
	// with any metadata the provider reported (Facebook: expiry, data access
	// expiry, scopes, type), or an error; an invalid token is an *Error of
	// KindReauthorize.
	Probe(ctx context.Context, req Request, current *Token) (*Token, error)

	// Consumes reports whether a call uses up the value it sends, so that
	// sending that value a second time fails, and may revoke what the first
	// call issued. grant is a BootstrapGrants key for a Bootstrap and ""
	// for a Refresh. The controller records a spend intent (a conditional
	// write) before such a call only: a call that consumes nothing can be
	// made twice, or again after a crash, without harm.
	Consumes(grant string) bool

	// BootstrapGrants lists, in order of preference, the keys of creds that
	// can bootstrap a token and are present (for example authorization_code,
	// refresh_token; or access_token). The controller bootstraps with the
	// first one whose value it has not consumed before, and records a
	// fingerprint (a hash, never the value) of what it consumed, so a
	// consumed value is never replayed and a new value is picked up.
	BootstrapGrants(creds Credentials) []string

	// ValidateCredentials returns nil when creds hold every key this provider
	// needs, or an *Error of KindConfiguration, reason CredentialsKeyMissing,
	// whose message names the missing keys (never their values). With no
	// stored token, client keys present and no grant key at all, the reason
	// is ReasonAuthorizationRequired instead (see AuthorizationRequired). stored is
	// the token already stored (nil when none): once there is one, only what
	// renewing or checking it needs is required, not the grant it came from
	// (a user or a GitOps tool may remove a consumed grant).
	ValidateCredentials(creds Credentials, stored *Token) error
}

// FlexString decodes a JSON string, or a number kept as its text: provider
// IDs and codes come either way.
type FlexString string

// UnmarshalJSON implements json.Unmarshaler.
func (f *FlexString) UnmarshalJSON(b []byte) error {
	s := trimSpace(string(b))
	if s == "null" {
		*f = ""
		return nil
	}
	if len(s) > 0 && s[0] == '"' {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		*f = FlexString(str)
		return nil
	}
	*f = FlexString(s)
	return nil
}

func trimSpace(s string) string {
	start, end := 0, len(s)
	for start < end && isSpace(s[start]) {
		start++
	}
	for end > start && isSpace(s[end-1]) {
		end--
	}
	return s[start:end]
}

func isSpace(b byte) bool { return b == ' ' || b == '\n' || b == '\r' || b == '\t' }
