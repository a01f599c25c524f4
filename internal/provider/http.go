package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// RequestObserver is told about every HTTP request a provider makes, for
// metrics. code is the HTTP status code, or 0 when no response arrived.
// It must never be given a URL, a token or a secret.
type RequestObserver func(provider, operation string, code int, elapsed time.Duration)

// TransportError classifies an error returned by http.Client.Do as a
// KindTransient *Error without the request URL: *url.Error carries the full
// URL, query string (and so any client_secret) included, so only its inner
// error is kept, and only when it is a known-safe network error.
func TransportError(op string, err error) *Error {
	msg := "request failed"
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		msg = "request timed out"
	case errors.Is(err, context.Canceled):
		msg = "request canceled"
	default:
		var ne net.Error
		var oe *net.OpError
		if errors.As(err, &oe) {
			// "dial tcp 127.0.0.1:443: connect: connection refused": host and
			// port only, no path or query.
			msg = "network error: " + oe.Error()
		} else if errors.As(err, &ne) && ne.Timeout() {
			msg = "request timed out"
		}
	}
	return &Error{Kind: KindTransient, Reason: "ProviderUnreachable", Message: msg, Op: op}
}

// maxSeconds bounds a count of seconds a provider sends (Retry-After,
// expires_in): ten years, far beyond any wait or lifetime the scheduler
// uses, and far below where time.Duration overflows (292 years).
const maxSeconds = 10 * 365 * 24 * time.Hour

// Seconds converts a count of seconds from a provider into a duration:
// 0 for a negative count, at most ten years. Multiplied as is, a count
// beyond 292 years wraps around to a short or negative duration: a huge
// Retry-After would then mean a retry every second.
func Seconds(n int64) time.Duration {
	switch {
	case n <= 0:
		return 0
	case n >= int64(maxSeconds/time.Second):
		return maxSeconds
	}
	return time.Duration(n) * time.Second
}

// ParseRetryAfter reads a Retry-After header (seconds or an HTTP date).
// It returns 0 when the header is absent or unreadable, and at most ten
// years (Seconds).
func ParseRetryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(h, 10, 64); err == nil {
		return Seconds(secs)
	}
	if t, err := http.ParseTime(h); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, maxSeconds)
		}
	}
	return 0
}

// ValidateBaseURL checks a provider base URL override (--facebook-url,
// --amocrm-url): an absolute https URL, or http only for a loopback host
// (tests, the demo sandbox, a local egress proxy). No query or fragment.
func ValidateBaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q must not have a query, fragment or user info", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q: plain http is accepted only for loopback addresses; use https", raw)
	default:
		return fmt.Errorf("%q: scheme must be https (or http on loopback)", raw)
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DefaultHTTPTimeout bounds one provider request when no timeout is given.
const DefaultHTTPTimeout = 30 * time.Second

// MaxBodyBytes is the one cap on every provider answer the clients read:
// the largest legitimate answer (a Graph error or a token response) is a
// few kilobytes.
const MaxBodyBytes = 1 << 20

// maxDrainBytes is how much of an unread body is discarded before closing,
// so the connection can be reused without reading an endless body.
const maxDrainBytes = 64 << 10

// NewHTTPClient returns the http.Client both providers use: the given
// timeout (DefaultHTTPTimeout when <= 0) and no redirects (see NoRedirects).
func NewHTTPClient(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = DefaultHTTPTimeout
	}
	return NoRedirects(&http.Client{Timeout: timeout})
}

// NoRedirects returns a copy of hc (a new client with DefaultHTTPTimeout
// when nil) that never follows a redirect: the 3xx answer itself is
// returned, and the clients turn it into a RedirectError. Following would
// resend the request to a host nobody configured, and Go would send the
// previous URL, query string (client_secret, tokens) included, as Referer.
// Any CheckRedirect already set on hc is replaced.
func NoRedirects(hc *http.Client) *http.Client {
	var cp http.Client
	if hc != nil {
		cp = *hc
	} else {
		cp.Timeout = DefaultHTTPTimeout
	}
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cp
}

// IsRedirect reports whether status is a redirect the client did not follow.
func IsRedirect(status int) bool {
	return status >= 300 && status < 400 && status != http.StatusNotModified
}

// RedirectError is the classified error for a redirect answer. It names the
// status only: the Location header may carry anything, so it is never
// quoted. setting names what to check (spec.amocrm.domain, --facebook-url).
func RedirectError(providerName, op string, status int, setting string) *Error {
	return &Error{Kind: KindTransient, Reason: "UnexpectedRedirect", Op: op, HTTPStatus: status,
		Message: fmt.Sprintf("%s answered with a redirect (HTTP %d), which the operator never follows (it could carry secrets to another host): check %s; will retry",
			providerName, status, setting)}
}

// ReadBody reads resp's body, at most MaxBodyBytes, then drains a little
// more and closes it. A longer body is refused with a KindTransient *Error,
// reason ResponseTooLarge. A read error is classified by TransportError.
func ReadBody(providerName, op string, resp *http.Response) ([]byte, *Error) {
	defer func() {
		_, _ = io.CopyN(io.Discard, resp.Body, maxDrainBytes)
		_ = resp.Body.Close()
	}()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, TransportError(op, err)
	}
	if len(body) > MaxBodyBytes {
		return nil, &Error{Kind: KindTransient, Reason: "ResponseTooLarge", Op: op, HTTPStatus: resp.StatusCode,
			Message: fmt.Sprintf("%s's answer is larger than %d KiB and was not read; will retry", providerName, MaxBodyBytes>>10)}
	}
	return body, nil
}

// maxRedactedLen bounds provider text quoted in an error.
const maxRedactedLen = 240

var (
	secretParamRE = regexp.MustCompile(`(?i)(client_secret|access_token|input_token|fb_exchange_token|appsecret_proof|code|refresh_token)=[^&\s"']*`)
	longWordRE    = regexp.MustCompile(`[A-Za-z0-9_\-.%|~+/=]{32,}`)
)

// Redact makes provider text (a Graph message, an AmoCRM hint) safe to
// quote in an error, a condition or a log line: every value in values
// (what the request carried: secrets, tokens, codes) of 4 bytes or more is
// replaced, so are secret-looking query parameters and any run of 32 or
// more token characters; control characters become spaces, and the result
// is cut to 240 bytes. It is the one redaction helper of both providers.
func Redact(text string, values ...string) string {
	for _, v := range values {
		if len(v) >= 4 {
			text = strings.ReplaceAll(text, v, "[redacted]")
		}
	}
	text = secretParamRE.ReplaceAllString(text, "[redacted]")
	text = longWordRE.ReplaceAllString(text, "[redacted]")
	text = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, text)
	if len(text) > maxRedactedLen {
		cut := maxRedactedLen
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut] + "..."
	}
	return strings.TrimSpace(text)
}

// AppendQuery appends params, in order, to uri, keeping uri's own bytes
// (its query included) and any fragment at the end: a redirect to a
// registered redirect URI must not re-encode what the integration set.
func AppendQuery(uri string, params [][2]string) string {
	base, frag, hasFrag := strings.Cut(uri, "#")
	var b strings.Builder
	b.WriteString(base)
	switch {
	case !strings.Contains(base, "?"):
		b.WriteByte('?')
	case !strings.HasSuffix(base, "?") && !strings.HasSuffix(base, "&"):
		b.WriteByte('&')
	}
	for i, p := range params {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(p[0]))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(p[1]))
	}
	if hasFrag {
		b.WriteByte('#')
		b.WriteString(frag)
	}
	return b.String()
}
