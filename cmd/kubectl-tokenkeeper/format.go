package main

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

const none = "-"

// human renders a non-negative duration as kubectl's AGE column does:
// "45s", "12m", "23h", "59d", "2y".
func human(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	return duration.ShortHumanDuration(d)
}

// expiresText is the EXPIRES column: the time left ("59d", "23h"),
// "expired 2h ago", "never" for a token that does not expire, or "-" when
// there is no token yet.
func expiresText(st *tokensv1alpha1.ManagedTokenStatus, now time.Time) string {
	if st.ExpirationTimestamp == nil {
		if st.TokenType != "" {
			return "never"
		}
		return none
	}
	return untilText(st.ExpirationTimestamp.Time, now, "expired %s ago")
}

// nextRefreshText is the NEXT-REFRESH column: the time until the operator
// refreshes the token, "overdue 5m" when that time has passed, "halted" when
// the operator stopped calling the provider until a human acts, or "-" when
// no refresh is planned (a token that never expires or cannot be renewed).
func nextRefreshText(st *tokensv1alpha1.ManagedTokenStatus, now time.Time) string {
	if st.HaltedInputs != "" {
		return "halted"
	}
	if st.NextRefreshTime == nil {
		return none
	}
	return untilText(st.NextRefreshTime.Time, now, "overdue %s")
}

// untilText is the time from now until t, or pastFormat with the time since t.
func untilText(t, now time.Time, pastFormat string) string {
	if d := t.Sub(now); d > 0 {
		return human(d)
	}
	return fmt.Sprintf(pastFormat, human(now.Sub(t)))
}

// agoText is the time since t ("3h ago"), or "-" for no time.
func agoText(t *metav1.Time, now time.Time) string {
	if t == nil {
		return none
	}
	if d := now.Sub(t.Time); d >= 0 {
		return human(d) + " ago"
	}
	return "in " + human(t.Sub(now))
}

// timestampText is an RFC 3339 time with its distance from now, for describe:
// "2026-09-01T10:00:00Z (in 59d)", "2026-07-01T08:00:00Z (2h ago)".
func timestampText(t *metav1.Time, now time.Time) string {
	if t == nil {
		return "<none>"
	}
	return t.UTC().Format(time.RFC3339) + " (" + agoText(t, now) + ")"
}

// conditionStatus is the status of one condition, or "-" when it is absent.
func conditionStatus(conds []metav1.Condition, condType string) string {
	if c := meta.FindStatusCondition(conds, condType); c != nil {
		return string(c.Status)
	}
	return none
}

// conditionReason is the reason of one condition, or "-" when it is absent.
func conditionReason(conds []metav1.Condition, condType string) string {
	if c := meta.FindStatusCondition(conds, condType); c != nil && c.Reason != "" {
		return c.Reason
	}
	return none
}

func orNone(s string) string {
	if s == "" {
		return none
	}
	return s
}
