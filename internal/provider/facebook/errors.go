package facebook

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// apiError is a Graph API error: the top-level {"error":{...}} envelope, or
// data.error of a debug_token answer (which says subcode, not
// error_subcode). Fields are read leniently.
type apiError struct {
	Message      string
	Type         string
	Code         int64
	Subcode      int64
	IsTransient  bool
	FBTraceID    string
	ErrorUserMsg string
}

// parseAPIError reads an error object; ok is false when raw is not an object
// with a non-zero code.
func parseAPIError(raw json.RawMessage) (*apiError, bool) {
	if len(raw) == 0 {
		return nil, false
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, false
	}
	e := &apiError{}
	var n flexInt
	if v, ok := m["code"]; ok && json.Unmarshal(v, &n) == nil {
		e.Code = int64(n)
	}
	if e.Code == 0 {
		return nil, false
	}
	for _, k := range []string{"error_subcode", "subcode"} {
		var s flexInt
		if v, ok := m[k]; ok && json.Unmarshal(v, &s) == nil && s != 0 {
			e.Subcode = int64(s)
			break
		}
	}
	var b flexBool
	if v, ok := m["is_transient"]; ok && json.Unmarshal(v, &b) == nil {
		e.IsTransient = bool(b)
	}
	str := func(k string) string {
		var s string
		if v, ok := m[k]; ok {
			_ = json.Unmarshal(v, &s)
		}
		return s
	}
	e.Message = str("message")
	e.Type = str("type")
	e.FBTraceID = str("fbtrace_id")
	e.ErrorUserMsg = str("error_user_msg")
	// error_data (object or JSON string), error_user_title: not needed for
	// classification, and never echoed.
	return e, true
}

func (e *apiError) codeString() string {
	if e.Subcode != 0 {
		return fmt.Sprintf("%d/%d", e.Code, e.Subcode)
	}
	return strconv.FormatInt(e.Code, 10)
}

// ClientSecretMessage is the only Graph API message text the client looks at:
// code 1 with this message on the token endpoint means a wrong app secret.
const ClientSecretMessage = "Error validating client secret."

// IsThrottlingCode reports whether a Graph API error code is a rate limit.
func IsThrottlingCode(code int64) bool {
	switch code {
	case 4, 17, 32, 341, 613:
		return true
	}
	return code >= 80000 && code <= 80014
}

// errSource tells where an error object was found.
type errSource int

const (
	// srcTokenEndpoint: the envelope of /oauth/access_token.
	srcTokenEndpoint errSource = iota
	// srcDebugEnvelope: the top-level envelope of /debug_token, about the
	// app access token or the call itself.
	srcDebugEnvelope
	// srcDebugData: data.error of /debug_token, about the input token.
	srcDebugData
)

type reauthCase struct {
	reason string
	what   string
}

const newTokenHint = "then put a new token in credentials key access_token"

var subcodes190 = map[int64]reauthCase{
	458: {"AppNotAuthorized", "the user has not authorized the app (or removed it): the user must log in and authorize the app again, " + newTokenHint},
	459: {"UserCheckpointed", "the user hit a security checkpoint: the user must log in at www.facebook.com and follow the instructions, " + newTokenHint},
	460: {"PasswordChanged", "the session was invalidated (password changed or a security reset): the user must log in again, " + newTokenHint},
	463: {"TokenExpired", "the access token has expired: the user must log in again, " + newTokenHint},
	464: {"UnconfirmedUser", "the user account is not confirmed: the user must confirm it on www.facebook.com and log in again, " + newTokenHint},
	467: {"TokenInvalid", "the access token is invalid (the user logged out or it was revoked): the user must log in again, " + newTokenHint},
	492: {"NoPageRole", "the user has no role on the Page: give the user a role on the Page, " + newTokenHint},
	493: {"DataAccessExpired", "data access expired (90 days without the user using the app): the user must log in and re-consent to the app's permissions, " + newTokenHint},
}

// classify maps a Graph API error to a provider error. It branches only on
// code, subcode and is_transient (and, for code 1 on the token endpoint, on
// the documented "Error validating client secret." message), never on the
// HTTP status.
func (c *Client) classify(op string, status int, h http.Header, e *apiError, src errSource, sc scrubber) *provider.Error {
	pe := &provider.Error{Op: op, HTTPStatus: status, Code: e.codeString()}
	detail := sc.detail(e)
	switch {
	case e.Code == 1 && src == srcTokenEndpoint && strings.TrimSpace(e.Message) == ClientSecretMessage:
		pe.Kind, pe.Reason = provider.KindConfiguration, "InvalidAppSecret"
		pe.Message = "Facebook rejected the app credentials: check credentials keys app_id and app_secret (the app secret from the app's Basic settings)"
	case src == srcDebugEnvelope && e.Code == 190 && e.Subcode == 0:
		// A top-level error from debug_token is about the caller's app
		// access token (app_id|app_secret); problems with the input token
		// come back in data.error.
		pe.Kind, pe.Reason = provider.KindConfiguration, "InvalidAppCredentials"
		pe.Message = "Facebook rejected the app access token built from credentials keys app_id and app_secret: check both"
	case IsThrottlingCode(e.Code):
		pe.Kind, pe.Reason = provider.KindThrottled, "RateLimited"
		pe.RetryAfter = retryAfter(h, c.clock.Now())
		pe.Message = "Facebook rate limit reached: backing off"
		if appLevelThrottle(pe.Code) {
			// App-level limits give no time to regain access: wait by the
			// usage percentages, or a quarter of the one-hour window.
			pe.Message = "the Facebook app reached its own hourly call limit (shared by every token of the app; each debug_token check counts): backing off"
			if pe.RetryAfter == 0 {
				pe.RetryAfter = appThrottleDefault
				if pct, ok := usagePercent(h); ok && slowDown(pct, 0) > 0 {
					pe.RetryAfter = max(slowDown(pct, DefaultUsageThreshold), minSlowDown)
				}
			}
		}
	case e.Code == 368:
		pe.Kind, pe.Reason = provider.KindThrottled, "TemporarilyBlocked"
		pe.RetryAfter = max(retryAfter(h, c.clock.Now()), time.Hour)
		pe.Message = "Facebook temporarily blocked the action for a policy violation: waiting an hour (or spec.checkInterval, if shorter) before trying again; " +
			"if it persists, check the app's and the user's standing in the Meta App Dashboard and Business Support Home"
	case e.IsTransient || e.Code == 1 || e.Code == 2:
		pe.Kind, pe.Reason = provider.KindTransient, "GraphAPITransient"
		pe.Message = "Facebook reported a temporary error: retrying"
	case e.Code == 100 && op == OpAuthorizationCode:
		// The code exchange sends no appsecret_proof: a code 100 there is
		// about the code or the redirect URI (see code.go).
		classifyCodeError(pe, e)
	case e.Code == 100 && strings.Contains(strings.ToLower(e.Message), "appsecret_proof"):
		// Code 100 covers every invalid parameter; the appsecret_proof
		// cases are told apart by Meta's documented text, only to name
		// the right key (the kind is the same).
		pe.Kind, pe.Reason = provider.KindConfiguration, "AppSecretProofRejected"
		pe.Message = "Facebook refused the call's appsecret_proof (the app has \"Require App Secret\" on, and the operator signs every call with credentials key app_secret): " +
			"set app_secret to the app's current secret (Meta App Dashboard > App settings > Basic); calls resume when the credentials Secret changes"
	case e.Code == 100 && e.Subcode == 33:
		pe.Kind, pe.Reason = provider.KindConfiguration, "PageNotFound"
		pe.Message = "Facebook has no object with the ID in spec.facebook.pageID that this token can see: set it to the numeric Page ID (Page > About), and check that the user or system user has a role on the Page"
	case e.Code == 100:
		pe.Kind, pe.Reason = provider.KindConfiguration, "GraphInvalidRequest"
		pe.Message = "Facebook refused a parameter of the call (code 100, invalid parameter): check credentials keys app_id and app_secret (apps with \"Require App Secret\" refuse a proof made with a wrong secret) and spec.facebook"
	case e.Code == 101:
		pe.Kind, pe.Reason = provider.KindConfiguration, "InvalidAppID"
		pe.Message = "Facebook does not know the app in credentials key app_id (code 101, invalid application ID): set app_id to the numeric App ID from the Meta App Dashboard, with the matching app_secret"
	case e.Code == 3:
		pe.Kind, pe.Reason = provider.KindConfiguration, "AppCapabilityMissing"
		pe.Message = "the Facebook app lacks the capability for this call (code 3): add the product or feature it needs (for a system-user token: Business Login / the Marketing API product; App Review for advanced access) in the Meta App Dashboard"
	case e.Code == 190:
		pe.Kind = provider.KindReauthorize
		if rc, ok := subcodes190[e.Subcode]; ok {
			pe.Reason, pe.Message = rc.reason, rc.what
		} else {
			pe.Reason = "TokenInvalid"
			pe.Message = "Facebook rejected the access token: the user must log in again, " + newTokenHint
		}
	case e.Code == 102:
		pe.Kind, pe.Reason = provider.KindReauthorize, "SessionInvalid"
		pe.Message = "the Facebook session is no longer valid: the user must log in again, " + newTokenHint
	case e.Code == 10 || (e.Code >= 200 && e.Code <= 299):
		pe.Kind, pe.Reason = provider.KindReauthorize, "PermissionMissing"
		pe.Message = "a permission is missing: grant the app the required permission (the user must re-authorize it), " + newTokenHint
	default:
		pe.Kind, pe.Reason = provider.KindTransient, "GraphAPIError"
		pe.Message = "Facebook reported an unexpected error"
	}
	pe.Message += detail
	return pe
}

// retryAfter reads the wait Facebook asks for: estimated_time_to_regain_access
// (minutes) in X-Business-Use-Case-Usage, else X-App-Usage, else Retry-After.
// It returns 0 when none is given.
func retryAfter(h http.Header, now time.Time) time.Duration {
	for _, name := range []string{"X-Business-Use-Case-Usage", "X-App-Usage"} {
		var best float64
		for _, v := range h.Values(name) {
			var x any
			if json.Unmarshal([]byte(v), &x) == nil {
				best = math.Max(best, maxRegainMinutes(x, 0))
			}
		}
		if best > 0 {
			const maxWait = 24 * 60.0
			return time.Duration(math.Min(best, maxWait) * float64(time.Minute))
		}
	}
	return provider.ParseRetryAfter(h.Get("Retry-After"), now)
}

// maxRegainMinutes finds the largest estimated_time_to_regain_access in a
// usage header value: {"<business id>":[{...}]} or a flat object.
func maxRegainMinutes(x any, depth int) float64 {
	if depth > 6 {
		return 0
	}
	var best float64
	switch v := x.(type) {
	case map[string]any:
		for k, e := range v {
			if k == "estimated_time_to_regain_access" {
				best = math.Max(best, number(e))
				continue
			}
			best = math.Max(best, maxRegainMinutes(e, depth+1))
		}
	case []any:
		for _, e := range v {
			best = math.Max(best, maxRegainMinutes(e, depth+1))
		}
	}
	return best
}

func number(x any) float64 {
	switch v := x.(type) {
	case float64:
		if v > 0 && !math.IsInf(v, 0) && !math.IsNaN(v) {
			return v
		}
	case string:
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f > 0 && !math.IsInf(f, 0) {
			return f
		}
	}
	return 0
}

// scrubber removes the values a request carried (app secret, app access
// token, the token sent) from any Graph API text quoted in an error.
type scrubber struct {
	secret, appToken, token string
}

// requestScrubber scrubs what a Graph request with creds carried: the app
// secret, the app access token and the token sent.
func requestScrubber(creds provider.Credentials, sent string) scrubber {
	appID, secret := creds.Get(KeyAppID), creds.Get(KeyAppSecret)
	return scrubber{secret, appID + "|" + secret, sent}
}

func (s scrubber) scrub(text string) string {
	return provider.Redact(text, s.appToken, s.secret, s.token)
}

// detail is the safe tail of an error message: code, Facebook's own words
// (scrubbed) and the trace ID for Meta support.
func (s scrubber) detail(e *apiError) string {
	var parts []string
	parts = append(parts, "code "+e.codeString())
	if m := s.scrub(e.Message); m != "" {
		parts = append(parts, fmt.Sprintf("Facebook: %q", m))
	}
	if id := s.scrub(e.FBTraceID); id != "" && len(id) <= 64 {
		parts = append(parts, "fbtrace_id "+id)
	}
	return " (" + strings.Join(parts, "; ") + ")"
}

// --- lenient JSON scalars ---

var errNotNumber = errors.New("not a number")

// flexInt accepts a JSON number or a string holding one.
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		*f = 0
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return errNotNumber
		}
		s = strings.TrimSpace(str)
		if s == "" {
			*f = 0
			return nil
		}
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		*f = flexInt(n)
		return nil
	}
	fl, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(fl) || math.IsInf(fl, 0) || math.Abs(fl) > math.MaxInt64/2 {
		return errNotNumber
	}
	*f = flexInt(int64(fl))
	return nil
}

// flexBool accepts true/false, "true"/"false", 1/0.
type flexBool bool

func (f *flexBool) UnmarshalJSON(b []byte) error {
	s := strings.Trim(strings.TrimSpace(string(b)), `"`)
	switch strings.ToLower(s) {
	case "true", "1":
		*f = true
	default:
		*f = false
	}
	return nil
}
