package controllers

import (
	"hash/fnv"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// action is what one reconcile does with the provider.
type action int

const (
	// actionNone: nothing is due; publish what we have and wait.
	actionNone action = iota
	// actionBootstrap: consume a grant from the credentials Secret.
	actionBootstrap
	// actionRefresh: obtain a new token from the current one.
	actionRefresh
	// actionProbe: check that the current token is still valid.
	actionProbe
)

func (a action) String() string {
	return [...]string{"None", "Bootstrap", "Refresh", "Probe"}[a]
}

// Reasons a decision gives (logged, never shown as a condition reason).
const (
	whyHalted           = "HaltedUntilInputsChange"
	whyResume           = "InputsChangedAfterHalt"
	whyBackoff          = "BackingOff"
	whyNewGrant         = "NewGrantInCredentials"
	whyNoToken          = "NoToken"
	whyForced           = "RefreshRequested"
	whyExpiresSoon      = "ExpiresWithinRefreshBefore"
	whyRefreshTokenAged = "RefreshTokenAging"
	whyCheckDue         = "CheckIntervalElapsed"
	whyNotDue           = "NotDue"
)

// refreshTokenMaxIdle is how long a rotating refresh token (AmoCRM: about 3
// months of life) may go unused before the operator rotates it anyway, so an
// integration with long-lived access tokens never loses its refresh token.
const refreshTokenMaxIdle = 30 * 24 * time.Hour

// decisionInput is everything decide looks at. It is built from the
// ManagedToken, the state Secret and the credentials Secret, and holds no
// secret values.
type decisionInput struct {
	Now time.Time
	// Token is the stored token, nil when there is none yet.
	Token *provider.Token
	// Grant is the credentials key of an unconsumed bootstrap grant, or "".
	Grant string
	// RefreshBefore and CheckInterval are the effective spec values.
	RefreshBefore time.Duration
	CheckInterval time.Duration
	// ForceRequested: the refresh-requested-at annotation has a value that
	// has not been handled yet.
	ForceRequested bool
	// Halted: a failure that needs a human stopped provider calls, and none of
	// the inputs has changed since.
	Halted bool
	// Resume: calls were halted, and an input has changed since: retry once.
	Resume bool
	// RetryAt is when a failure that heals by itself may be retried (zero: no
	// failure pending).
	RetryAt time.Time
	// LastCheck is when the token was last checked with the provider.
	LastCheck time.Time
	// RefreshJitter and CheckJitter are this token's deterministic spread
	// (see tokenJitter), each bounded by the interval it shifts, so a check
	// is never scheduled in the past.
	RefreshJitter time.Duration
	CheckJitter   time.Duration
}

// decide is the whole scheduling policy, as a pure function. It never
// refreshes a token that is not due, so a restart, a resync or an unrelated
// event costs no provider call beyond a due check.
func decide(in decisionInput) (action, string) {
	switch {
	case in.Halted:
		return actionNone, whyHalted
	case in.ForceRequested && in.Grant != "":
		return actionBootstrap, whyNewGrant
	case in.ForceRequested && in.Token != nil && in.Token.Refreshable:
		return actionRefresh, whyForced
	case in.ForceRequested && in.Token != nil:
		return actionProbe, whyForced
	case !in.RetryAt.IsZero() && in.Now.Before(in.RetryAt):
		return actionNone, whyBackoff
	case in.Grant != "":
		return actionBootstrap, whyNewGrant
	case in.Token == nil:
		return actionNone, whyNoToken
	case in.Resume && in.Token.Refreshable:
		return actionRefresh, whyResume
	case in.Resume:
		return actionProbe, whyResume
	case in.Token.Refreshable && in.Token.Expires && !in.Now.Before(refreshAt(in)):
		return actionRefresh, whyExpiresSoon
	case in.Token.Refreshable && !in.Token.RefreshTokenExpiresAt.IsZero() &&
		!in.Now.Before(in.Token.ObtainedAt.Add(refreshTokenMaxIdle)):
		return actionRefresh, whyRefreshTokenAged
	case !in.Now.Before(checkAt(in)):
		return actionProbe, whyCheckDue
	}
	return actionNone, whyNotDue
}

// nextRefreshTime is the documented schedule: expiry minus refreshBefore. It
// is zero for tokens that never expire.
func nextRefreshTime(t *provider.Token, refreshBefore time.Duration) time.Time {
	if t == nil || !t.Expires {
		return time.Time{}
	}
	return t.ExpiresAt.Add(-refreshBefore)
}

// refreshAt is when a refreshable token is actually refreshed: its
// nextRefreshTime, brought forward by the token's jitter so that many tokens
// with the same expiry do not refresh in lockstep.
func refreshAt(in decisionInput) time.Time {
	return nextRefreshTime(in.Token, in.RefreshBefore).Add(-in.RefreshJitter)
}

// checkAt is when the next validity probe is due.
func checkAt(in decisionInput) time.Time {
	if in.LastCheck.IsZero() {
		return in.Now
	}
	return in.LastCheck.Add(in.CheckInterval - in.CheckJitter)
}

// requeueAfter returns how long to wait before the next reconcile: the
// earliest of the next check, the refresh time, the expiry, the time a
// human must be warned (non-refreshable tokens and data access), and a
// pending retry. It is never longer than CheckInterval.
func requeueAfter(in decisionInput) time.Duration {
	next := checkAt(in)
	consider := func(t time.Time) {
		if !t.IsZero() && t.After(in.Now) && t.Before(next) {
			next = t
		}
	}
	if t := in.Token; t != nil {
		if t.Expires {
			consider(refreshAt(in))
			consider(t.ExpiresAt)
		}
		if !t.DataAccessExpiresAt.IsZero() {
			consider(t.DataAccessExpiresAt.Add(-in.RefreshBefore))
			consider(t.DataAccessExpiresAt)
		}
		if t.Refreshable && !t.RefreshTokenExpiresAt.IsZero() {
			consider(t.ObtainedAt.Add(refreshTokenMaxIdle))
		}
	}
	consider(in.RetryAt)
	d := next.Sub(in.Now)
	if d < time.Second {
		d = time.Second
	}
	if d > in.CheckInterval {
		d = in.CheckInterval
	}
	return d
}

// tokenJitter spreads tokens deterministically: a fraction of
// min(interval/10, 5m) derived from the token's UID, so the same token
// always gets the same offset (a restart does not move its schedule) while
// different tokens are spread out.
func tokenJitter(uid string, interval time.Duration) time.Duration {
	span := interval / 10
	if span > 5*time.Minute {
		span = 5 * time.Minute
	}
	if span <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(uid))
	return time.Duration(h.Sum64() % uint64(span))
}

// backoff is the wait after the n-th consecutive transient failure:
// exponential from 5s, at most 1h and at most CheckInterval, and capped so
// a retry still happens well before the token expires (half the time left,
// but not under 5s).
func backoff(n int32, now time.Time, t *provider.Token, checkInterval time.Duration) time.Duration {
	const base, maxWait = 5 * time.Second, time.Hour
	d := base
	for i := int32(1); i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait, checkInterval)
	if t != nil && t.Expires {
		if left := t.ExpiresAt.Sub(now) / 2; left < d {
			d = max(left, base)
		}
	}
	return d
}
