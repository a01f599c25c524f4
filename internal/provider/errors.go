package provider

import (
	"errors"
	"fmt"
	"time"
)

// Kind classifies a provider failure by what the controller must do next.
type Kind int

const (
	// KindTransient: 5xx, timeouts, malformed bodies, is_transient. Retry
	// with exponential back-off, capped so a retry still happens before expiry.
	KindTransient Kind = iota
	// KindThrottled: 429 or a provider throttling code. Retry after RetryAfter
	// (or back-off when unknown).
	KindThrottled
	// KindTokenRejected: the provider refused the current access token on a
	// validity probe (AmoCRM 401 on /api/v4/account). A refreshable token is
	// refreshed at once; otherwise a human must re-authorize. Only a plain
	// token 401 is this kind: documented 401s that are not about the token
	// (account not found, user disabled, another server) get another kind,
	// so they never cause a refresh. When the probe of a token just
	// refreshed because of KindTokenRejected is rejected again, the
	// controller halts with RejectedAfterRefresh.
	KindTokenRejected
	// KindReauthorize: a human must log in or re-authorize (revoked or
	// expired grant, checkpoint, password change, missing permission). No more
	// calls until the inputs change.
	KindReauthorize
	// KindConfiguration: the credentials or settings are wrong (bad client
	// secret, wrong redirect URI). No more calls until the inputs change.
	KindConfiguration
	// KindBlocked: the provider refuses this client outright (AmoCRM 403,
	// possibly an IP block). Stop and alert; no retry loop.
	KindBlocked
)

func (k Kind) String() string {
	switch k {
	case KindTransient:
		return "Transient"
	case KindThrottled:
		return "Throttled"
	case KindTokenRejected:
		return "TokenRejected"
	case KindReauthorize:
		return "Reauthorize"
	case KindConfiguration:
		return "Configuration"
	case KindBlocked:
		return "Blocked"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Error is a classified provider failure. Its text is safe to log, to put in
// an event and in a condition message: it never holds a token, a secret or a
// URL with a query string.
type Error struct {
	Kind Kind
	// Reason is a CamelCase reason for conditions, such as RefreshTokenRevoked.
	Reason string
	// Message is a safe, human-readable explanation, ideally saying what to do.
	Message string
	// Op is the operation: exchange, refresh, debug_token, account, ...
	Op string
	// HTTPStatus is the response status, 0 when no response was received.
	HTTPStatus int
	// Code is the provider's error code, as text ("190/463", "hint: ...").
	Code string
	// RetryAfter is the provider's requested wait, when it gave one.
	RetryAfter time.Duration
	// Err is a wrapped cause; it must itself be safe to print.
	Err error
}

func (e *Error) Error() string {
	s := e.Op + ": " + e.Message
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonTokenRejectedAfterRefresh is the reason of RejectedAfterRefresh.
const ReasonTokenRejectedAfterRefresh = "TokenRejectedAfterRefresh"

// RejectedAfterRefresh is the error the controller reports when a token
// that was refreshed because a probe rejected it (KindTokenRejected) is
// rejected again on the one probe that follows the refresh: the cause is
// not the token, so refreshing again would only rotate the pair at every
// check. second is the second rejection. The result is KindReauthorize
// (halt and alert), reason TokenRejectedAfterRefresh.
func RejectedAfterRefresh(second *Error) *Error {
	e := &Error{Kind: KindReauthorize, Reason: ReasonTokenRejectedAfterRefresh, Op: "probe",
		Message: "the provider rejected the access token, and rejected the new one obtained by a refresh right after: the cause is not the token " +
			"(for AmoCRM: the user behind the integration was disabled or removed from the account, the account or its domain changed, or the integration lost access); " +
			"check the account and spec.amocrm.domain, then authorize the integration again and put a new authorization_code into the credentials Secret"}
	if second != nil {
		e.Op, e.HTTPStatus, e.Code = second.Op, second.HTTPStatus, second.Code
		if second.Message != "" {
			e.Message += " (last answer: " + second.Message + ")"
		}
	}
	return e
}

// AsError returns the *Error in err's chain; any other error is wrapped as
// KindTransient with reason ProviderError.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	// The text of an unclassified error is not trusted to be free of
	// secrets, so only its type is kept.
	return &Error{Kind: KindTransient, Reason: "ProviderError", Message: fmt.Sprintf("unclassified error (%T)", err), Op: "call"}
}
