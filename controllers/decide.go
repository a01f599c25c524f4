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
	// actionBootstrap: exchange a grant from the credentials Secret.
	actionBootstrap
	// actionRefresh: obtain a new token from the current one.
	actionRefresh
	// actionProbe: check that the current token is still valid.
	actionProbe
)

func (a action) String() string {
	return [...]string{"None", "Bootstrap", "Refresh", "Probe"}[a]
}

// spends reports whether the action sends a refresh token or a grant.
func (a action) spends() bool { return a == actionBootstrap || a == actionRefresh }

// Reasons a decision gives (logged, never shown as a condition reason).
const (
	whyBlocked          = "PreconditionFailed"
	whySpendInProgress  = "SpendInProgress"
	whyHalted           = "HaltedUntilInputsChange"
	whyResume           = "InputsChangedAfterHalt"
	whyBackoff          = "BackingOff"
	whyNewGrant         = "NewGrantInCredentials"
	whyNoToken          = "NoToken"
	whyForced           = "RefreshRequested"
	whyUnanswered       = "PreviousSpendUnanswered"
	whyExpiresSoon      = "ExpiresWithinRefreshBefore"
	whyRefreshTokenAged = "RefreshTokenAging"
	whyCheckDue         = "CheckIntervalElapsed"
	whyNotDue           = "NotDue"
)

const (
	// refreshTokenMaxIdle is how long a rotating refresh token (AmoCRM:
	// about 3 months of life) may go unused before the operator rotates it
	// anyway, so an integration never loses its refresh token to disuse.
	refreshTokenMaxIdle = 30 * 24 * time.Hour
	// minWake is the shortest requeue. A reconcile that acted may come back
	// this soon; one that did not act waits for a due time, a deadline or
	// checkInterval (see FuzzSchedule's no-busy-loop property).
	minWake = time.Second
	// defaultIntentGrace is added to a spend intent's deadline before
	// another spender treats it as over: clocks differ a little between
	// managers.
	defaultIntentGrace = 10 * time.Second
	// minRefreshSpacing is the least time between two refreshes of a token
	// that was already expired (or had no lifetime) when it was obtained.
	minRefreshSpacing = time.Minute
	// backoffBase and backoffMax bound the exponential back-off.
	backoffBase = 5 * time.Second
	backoffMax  = time.Hour
)

// decisionInput is everything decide looks at. It is built from the
// ManagedToken, the state Secret and the credentials Secret, and holds no
// secret values.
type decisionInput struct {
	Now time.Time
	// Token is the stored token, nil when there is none yet.
	Token *provider.Token
	// Grant is the credentials key of an untried bootstrap grant, or "".
	Grant string
	// RefreshBefore (the spec value or the provider default for the token's
	// kind) and CheckInterval.
	RefreshBefore time.Duration
	CheckInterval time.Duration
	// ForceRequested: the refresh-requested-at annotation has a value that
	// has not been handled yet.
	ForceRequested bool
	// Blocked: a precondition failed (credentials missing, corrupt or
	// foreign state): no provider call; the watches bring the next look.
	Blocked bool
	// Inputs fingerprints what a human can change (inputsFingerprint).
	Inputs string
	// Failure is the stored last failure, nil after a success.
	Failure *failureRecord
	// Intent is a stored spend without an outcome, nil when none.
	Intent *spendIntent
	// IntentGrace is added to an intent's deadline before another
	// reconciler treats the spender as gone (clock skew between managers).
	IntentGrace time.Duration
	// LastCheck is when the token was last checked with the provider.
	LastCheck time.Time
	// RefreshJitter and CheckJitter are this token's deterministic spread
	// (see tokenJitter) as a fraction in [0, 1); each is scaled by the
	// interval it shifts, so a check is never scheduled in the past.
	RefreshJitter float64
	CheckJitter   float64
}

// plan is decide's answer: what to do now, and when to look again if
// nothing else happens first.
type plan struct {
	Action action
	Why    string
	// Wake is how long to wait before the next reconcile when Action is
	// actionNone; after an action, the plan of the new state gives it.
	Wake time.Duration
	// RefreshAt is when a refreshable token is refreshed (zero: never), and
	// EffectiveRefreshBefore the refreshBefore used for it; Capped is true
	// when refreshBefore was cut to half the token's lifetime.
	RefreshAt              time.Time
	EffectiveRefreshBefore time.Duration
	Capped                 bool
}

// halted reports whether a failure that needs a human stopped provider
// calls and none of the inputs has changed since.
func (in decisionInput) halted() bool {
	return in.Failure != nil && in.Failure.Halted && in.Failure.Inputs == in.Inputs
}

// resume reports whether calls were halted and an input has changed since.
func (in decisionInput) resume() bool {
	return in.Failure != nil && in.Failure.Halted && in.Failure.Inputs != in.Inputs
}

// backingOff reports whether a failure that heals by itself is waiting for
// its retry time. A change of inputs (a new credentials Secret, say) ends
// the back-off at once.
func (in decisionInput) backingOff() bool {
	f := in.Failure
	return f != nil && !f.Halted && f.Inputs == in.Inputs && in.Now.Before(f.RetryAt)
}

// intentLive reports whether another spend may still be running.
func (in decisionInput) intentLive() bool {
	return in.Intent != nil && in.Now.Before(in.Intent.Deadline.Add(in.IntentGrace))
}

// decide is the whole scheduling policy, as a pure function: the action
// and when to look again. It never refreshes a token that is not due, so a
// restart, a resync or an unrelated event costs no provider call beyond a
// due check.
func decide(in decisionInput) plan {
	p := plan{}
	p.RefreshAt, p.EffectiveRefreshBefore, p.Capped = refreshSchedule(in)
	act := func(a action, why string) plan {
		p.Action, p.Why = a, why
		return p
	}
	wait := func(why string, until time.Time) plan {
		p.Why, p.Wake = why, wakeAfter(in, until)
		return p
	}
	t := in.Token
	switch {
	case in.Blocked:
		return wait(whyBlocked, in.Now.Add(in.CheckInterval))
	case in.intentLive():
		return wait(whySpendInProgress, in.Intent.Deadline.Add(in.IntentGrace))
	case in.halted():
		return wait(whyHalted, in.Now.Add(in.CheckInterval))
	case in.ForceRequested && in.Grant != "":
		return act(actionBootstrap, whyNewGrant)
	case in.ForceRequested && t != nil && t.Refreshable:
		return act(actionRefresh, whyForced)
	case in.ForceRequested && t != nil:
		return act(actionProbe, whyForced)
	case in.backingOff():
		return wait(whyBackoff, in.Failure.RetryAt)
	case in.Grant != "":
		return act(actionBootstrap, whyNewGrant)
	case t == nil:
		return wait(whyNoToken, in.Now.Add(in.CheckInterval))
	case in.resume() && t.Refreshable:
		return act(actionRefresh, whyResume)
	case in.resume():
		return act(actionProbe, whyResume)
	case t.Refreshable && in.Intent != nil && in.Intent.Op == opRefresh:
		// A refresh started and never reported back: the stored refresh
		// token may be spent. Find out now rather than at the next due time.
		return act(actionRefresh, whyUnanswered)
	case t.Refreshable && t.Expires && !in.Now.Before(p.RefreshAt):
		return act(actionRefresh, whyExpiresSoon)
	case t.Refreshable && !t.RefreshTokenExpiresAt.IsZero() && !in.Now.Before(t.ObtainedAt.Add(refreshTokenMaxIdle)):
		return act(actionRefresh, whyRefreshTokenAged)
	case !in.Now.Before(checkAt(in)):
		return act(actionProbe, whyCheckDue)
	}
	return wait(whyNotDue, nextDue(in, p.RefreshAt))
}

// refreshSchedule returns when a token is refreshed (refreshable tokens) or
// when a human is warned (monitored tokens), and the refreshBefore used.
//
// Like cert-manager's renewBefore, refreshBefore is capped by the token's
// observed lifetime: at most half of it, so a refreshBefore copied from a
// provider with longer tokens (168h on a 24h AmoCRM token) does not make
// every refresh due again at once. The refresh time is never earlier than
// half the lifetime after the token was obtained (or minRefreshSpacing for
// a token with no lifetime), whatever the jitter.
//
// A monitored token is never refreshed, so nothing caps its warning: a
// long-lived token adopted 3 days before its end, with 336h, is due for a
// human at once, not 36h before the end (TestMonitoredTokenWarningIsNotCapped).
func refreshSchedule(in decisionInput) (at time.Time, refreshBefore time.Duration, capped bool) {
	t := in.Token
	refreshBefore = in.RefreshBefore
	if t == nil || !t.Expires {
		return time.Time{}, refreshBefore, false
	}
	if !t.Refreshable {
		return t.ExpiresAt.Add(-refreshBefore), refreshBefore, false
	}
	lifetime := time.Duration(0)
	if !t.ObtainedAt.IsZero() {
		lifetime = t.ExpiresAt.Sub(t.ObtainedAt)
	}
	if lifetime > 0 && refreshBefore > lifetime/2 {
		refreshBefore, capped = lifetime/2, true
	}
	at = t.ExpiresAt.Add(-refreshBefore).Add(-jitterOf(in.RefreshJitter, refreshBefore))
	if !t.ObtainedAt.IsZero() {
		floor := t.ObtainedAt.Add(max(lifetime/2, minRefreshSpacing))
		if at.Before(floor) {
			at = floor
		}
	}
	return at, refreshBefore, capped
}

// checkAt is when the next validity probe is due.
func checkAt(in decisionInput) time.Time {
	if in.LastCheck.IsZero() {
		return in.Now
	}
	return in.LastCheck.Add(in.CheckInterval - jitterOf(in.CheckJitter, in.CheckInterval))
}

// nextDue is the earliest time something is due for a token with nothing
// to do now: the next check, the refresh time, the expiry, the time a human
// must be warned, the refresh token's idle limit.
func nextDue(in decisionInput, refreshAt time.Time) time.Time {
	next := checkAt(in)
	consider := func(t time.Time) {
		if !t.IsZero() && t.After(in.Now) && t.Before(next) {
			next = t
		}
	}
	if t := in.Token; t != nil {
		if t.Expires {
			consider(refreshAt)
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
	return next
}

// wakeAfter is the wait until t, at least minWake and at most CheckInterval.
func wakeAfter(in decisionInput, t time.Time) time.Duration {
	return min(max(t.Sub(in.Now), minWake), in.CheckInterval)
}

// retryDelay is the wait after the n-th consecutive failure that heals by
// itself: the provider's Retry-After when it gave one, else exponential
// back-off from 5s up to 1h. Either is at most CheckInterval and, while the
// token is still valid, at most half the time it has left (but not under
// minWake), so a retry always happens before expiry. After expiry the
// back-off stays exponential.
func retryDelay(n int32, retryAfter time.Duration, now time.Time, t *provider.Token, checkInterval time.Duration) time.Duration {
	d := backoffBase
	for i := int32(1); i < n && d < backoffMax; i++ {
		d *= 2
	}
	d = min(d, backoffMax)
	if retryAfter > 0 {
		d = retryAfter
	}
	d = min(d, checkInterval)
	if t != nil && t.Expires && now.Before(t.ExpiresAt) {
		if left := t.ExpiresAt.Sub(now) / 2; left < d {
			d = left
		}
	}
	return max(d, minWake)
}

// tokenJitter spreads tokens deterministically: a fraction in [0, 1)
// derived from the token's UID, so the same token always gets the same
// offset (a restart does not move its schedule) while different tokens are
// spread out. jitterOf scales it by the interval it shifts.
func tokenJitter(uid string) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(uid))
	return float64(h.Sum64()%1_000_000) / 1_000_000
}

// jitterOf is the offset for a fraction f of min(interval/10, 5m).
func jitterOf(f float64, interval time.Duration) time.Duration {
	span := min(interval/10, 5*time.Minute)
	if span <= 0 || f <= 0 {
		return 0
	}
	return time.Duration(f * float64(span))
}
