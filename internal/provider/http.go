package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
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

// ParseRetryAfter reads a Retry-After header (seconds or an HTTP date).
// It returns 0 when the header is absent or unreadable.
func ParseRetryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	if secs, err := strconv.Atoi(h); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
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
