package controllers

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// haltedAt is a stored halt with the inputs in force then.
func haltedAt(inputs string) *failureRecord {
	return &failureRecord{Kind: "Reauthorize", Reason: "RefreshTokenRevoked", Count: 1, Halted: true, Inputs: inputs}
}

// backoffUntil is a stored transient failure retried at t, with the base
// inputs of TestDecide.
func backoffUntil(t time.Time) *failureRecord {
	return &failureRecord{Kind: "Transient", Reason: "ProviderUnavailable", Count: 1, RetryAt: t, Inputs: "generation=1,credentials=v1"}
}

func TestDecide(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC))
	now := clk.Now()
	amo := func(expiresIn time.Duration) *provider.Token {
		// A 24h AmoCRM token.
		return &provider.Token{Expires: true, ExpiresAt: now.Add(expiresIn), Refreshable: true,
			ObtainedAt: now.Add(expiresIn - 24*time.Hour), RefreshTokenExpiresAt: now.Add(89 * 24 * time.Hour)}
	}
	fbUser := func(expiresIn time.Duration) *provider.Token {
		return &provider.Token{Expires: true, ExpiresAt: now.Add(expiresIn), ObtainedAt: now.Add(-time.Hour)}
	}
	never := &provider.Token{ObtainedAt: now.Add(-time.Hour)}
	base := func(tok *provider.Token) decisionInput {
		return decisionInput{Now: now, Token: tok, RefreshBefore: 2 * time.Hour, CheckInterval: 2 * time.Hour, LastCheck: now.Add(-10 * time.Minute),
			Inputs: "generation=1,credentials=v1"}
	}
	tests := []struct {
		name string
		in   func() decisionInput
		want action
		why  string
	}{
		{"fresh token, recently checked: nothing", func() decisionInput { return base(amo(20 * time.Hour)) }, actionNone, whyNotDue},
		{"inside refreshBefore: refresh", func() decisionInput { return base(amo(90 * time.Minute)) }, actionRefresh, whyExpiresSoon},
		{"exactly at nextRefreshTime: refresh", func() decisionInput { return base(amo(2 * time.Hour)) }, actionRefresh, whyExpiresSoon},
		{"one minute before nextRefreshTime: not yet", func() decisionInput { return base(amo(2*time.Hour + time.Minute)) }, actionNone, whyNotDue},
		{"jitter brings the refresh forward", func() decisionInput {
			in := base(amo(2*time.Hour + time.Minute))
			in.RefreshJitter = 0.5 // of min(2h/10, 5m): 2.5m
			return in
		}, actionRefresh, whyExpiresSoon},
		{"expired refreshable token: refresh", func() decisionInput { return base(amo(-time.Hour)) }, actionRefresh, whyExpiresSoon},
		{"check interval elapsed: probe", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.LastCheck = now.Add(-2 * time.Hour)
			return in
		}, actionProbe, whyCheckDue},
		{"never checked (restart with a new status): probe, not refresh", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.LastCheck = time.Time{}
			return in
		}, actionProbe, whyCheckDue},
		{"new grant in credentials: bootstrap", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.Grant = "refresh_token"
			return in
		}, actionBootstrap, whyNewGrant},
		{"no token and no grant: nothing", func() decisionInput { return base(nil) }, actionNone, whyNoToken},
		{"forced refresh of a refreshable token", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.ForceRequested = true
			return in
		}, actionRefresh, whyForced},
		{"forced refresh of a long-lived user token only probes", func() decisionInput {
			in := base(fbUser(30 * 24 * time.Hour))
			in.ForceRequested = true
			return in
		}, actionProbe, whyForced},
		{"force beats back-off", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.ForceRequested, in.Failure = true, backoffUntil(now.Add(time.Hour))
			return in
		}, actionRefresh, whyForced},
		{"halted: nothing, even when due", func() decisionInput {
			in := base(amo(-time.Hour))
			in.Failure = haltedAt(in.Inputs)
			return in
		}, actionNone, whyHalted},
		{"inputs changed after a halt: one refresh of a refreshable token", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.Failure = haltedAt("generation=1,credentials=old")
			return in
		}, actionRefresh, whyResume},
		{"inputs changed after a halt: one probe of a monitored token", func() decisionInput {
			in := base(fbUser(30 * 24 * time.Hour))
			in.Failure = haltedAt("generation=1,credentials=old")
			return in
		}, actionProbe, whyResume},
		{"inputs changed after a halt with a new grant: bootstrap", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.Failure, in.Grant = haltedAt("generation=1,credentials=old"), "refresh_token"
			return in
		}, actionBootstrap, whyNewGrant},
		{"backing off: nothing, even when due", func() decisionInput {
			in := base(amo(time.Hour))
			in.Failure = backoffUntil(now.Add(time.Minute))
			return in
		}, actionNone, whyBackoff},
		{"a changed credentials Secret ends a back-off at once", func() decisionInput {
			in := base(amo(time.Hour))
			in.Failure = backoffUntil(now.Add(time.Hour))
			in.Inputs = "generation=1,credentials=new"
			return in
		}, actionRefresh, whyExpiresSoon},
		{"a spend in progress elsewhere: wait for it, even when due", func() decisionInput {
			in := base(amo(-time.Hour))
			in.Intent = &spendIntent{Op: opRefresh, Started: now.Add(-5 * time.Second), Deadline: now.Add(40 * time.Second)}
			return in
		}, actionNone, whySpendInProgress},
		{"a spend that never reported back: refresh now to find out", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.Intent = &spendIntent{Op: opRefresh, Started: now.Add(-time.Hour), Deadline: now.Add(-time.Hour)}
			return in
		}, actionRefresh, whyUnanswered},
		{"refreshBefore longer than the lifetime is capped: not due right after a refresh", func() decisionInput {
			tok := amo(24 * time.Hour)
			tok.ObtainedAt = now.Add(-time.Minute)
			in := base(tok)
			in.RefreshBefore = 168 * time.Hour
			in.LastCheck = now
			return in
		}, actionNone, whyNotDue},
		{"blocked: nothing, even when due", func() decisionInput {
			in := base(amo(-time.Hour))
			in.Blocked = true
			return in
		}, actionNone, whyBlocked},
		{"back-off over: refresh", func() decisionInput {
			in := base(amo(time.Hour))
			in.Failure = backoffUntil(now.Add(-time.Second))
			return in
		}, actionRefresh, whyExpiresSoon},
		{"non-refreshable token inside refreshBefore is never refreshed", func() decisionInput { return base(fbUser(time.Hour)) }, actionNone, whyNotDue},
		{"non-expiring token: probe when the check is due", func() decisionInput {
			in := base(never)
			in.LastCheck = now.Add(-3 * time.Hour)
			return in
		}, actionProbe, whyCheckDue},
		{"idle refresh token is rotated before it dies", func() decisionInput {
			tok := amo(300 * 24 * time.Hour) // a long-lived access token
			tok.ObtainedAt = now.Add(-31 * 24 * time.Hour)
			return base(tok)
		}, actionRefresh, whyRefreshTokenAged},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := decide(tc.in())
			if p.Action != tc.want || p.Why != tc.why {
				t.Fatalf("decide = %v (%s), want %v (%s)", p.Action, p.Why, tc.want, tc.why)
			}
			if p.Action == actionNone && (p.Wake < minWake || p.Wake > tc.in().CheckInterval) {
				t.Fatalf("wake %v outside [%v, checkInterval]", p.Wake, minWake)
			}
		})
	}
}

func TestWake(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tok := &provider.Token{Expires: true, ExpiresAt: now.Add(3 * time.Hour), Refreshable: true, ObtainedAt: now.Add(-21 * time.Hour)}
	in := decisionInput{Now: now, Token: tok, RefreshBefore: 2 * time.Hour, CheckInterval: 2 * time.Hour, LastCheck: now, Inputs: "i"}
	if got, want := decide(in).Wake, time.Hour; got != want {
		t.Errorf("wake before nextRefreshTime = %v, want %v", got, want)
	}
	tok.ExpiresAt = now.Add(48 * time.Hour)
	if got, want := decide(in).Wake, 2*time.Hour; got != want {
		t.Errorf("wake is capped at checkInterval: got %v, want %v", got, want)
	}
	in.Failure = &failureRecord{Count: 1, RetryAt: now.Add(30 * time.Second), Inputs: "i"}
	if got, want := decide(in).Wake, 30*time.Second; got != want {
		t.Errorf("wake at a pending retry: got %v, want %v", got, want)
	}
	in.Failure = nil
	fb := &provider.Token{Expires: true, ExpiresAt: now.Add(10 * 24 * time.Hour), DataAccessExpiresAt: now.Add(7*24*time.Hour + 30*time.Minute)}
	in = decisionInput{Now: now, Token: fb, RefreshBefore: 7 * 24 * time.Hour, CheckInterval: 2 * time.Hour, LastCheck: now}
	if got, want := decide(in).Wake, 30*time.Minute; got != want {
		t.Errorf("wake when the data-access warning starts: got %v, want %v", got, want)
	}
	// Blocked, halted and never-checked tokens without a token wake at
	// checkInterval, not every second (the old hot loop).
	for name, d := range map[string]decisionInput{
		"blocked":         {Now: now, Blocked: true, CheckInterval: 2 * time.Hour},
		"no token":        {Now: now, CheckInterval: 2 * time.Hour},
		"halted, expired": {Now: now, Token: &provider.Token{Expires: true, ExpiresAt: now.Add(-time.Hour)}, Failure: haltedAt("x"), Inputs: "x", CheckInterval: 2 * time.Hour},
	} {
		if p := decide(d); p.Action != actionNone || p.Wake != 2*time.Hour {
			t.Errorf("%s: %v after %v, want None after checkInterval", name, p.Action, p.Wake)
		}
	}
}

// TestMonitoredTokenWarningIsNotCapped: the cap of refreshBefore by half
// the observed lifetime prevents refresh storms, so it applies to tokens
// the operator refreshes only. A long-lived token adopted with 3 days left
// and refreshBefore 336h asks for a human at once; capped at half of those
// 3 days it said "no human action needed" for 36 hours.
func TestMonitoredTokenWarningIsNotCapped(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	mt := &tokensv1alpha1.ManagedToken{ObjectMeta: metav1.ObjectMeta{Name: "crm", Namespace: "ns"}}
	for _, tc := range []struct {
		name        string
		refreshable bool
		wantReauth  metav1.ConditionStatus
		wantCapped  bool
	}{
		{"monitored (long-lived)", false, metav1.ConditionTrue, false},
		{"refreshable", true, metav1.ConditionFalse, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := &provider.Token{Expires: true, ExpiresAt: now.Add(72 * time.Hour), ObtainedAt: now, Refreshable: tc.refreshable}
			in := decisionInput{Now: now, Token: tok, RefreshBefore: 336 * time.Hour, CheckInterval: 2 * time.Hour, LastCheck: now}
			at, rb, capped := refreshSchedule(in)
			if capped != tc.wantCapped {
				t.Errorf("capped %v, want %v", capped, tc.wantCapped)
			}
			if s, reason, _ := reauthorization(tok, now, rb, mt); s != tc.wantReauth {
				t.Errorf("ReauthorizationRequired %s (%s) with %v left, want %s", s, reason, tok.ExpiresAt.Sub(now), tc.wantReauth)
			}
			if !tc.refreshable && !at.Equal(now.Add(72*time.Hour-336*time.Hour)) {
				t.Errorf("warning at %v, want expiry minus 336h", at)
			}
			if p := decide(in); p.Action != actionNone && !tc.refreshable {
				t.Errorf("a monitored token: decide %v (%s), want None", p.Action, p.Why)
			}
		})
	}
}

// TestShortCheckIntervalWithLongRefreshBefore is the regression test for a
// probe hot loop: a jitter derived from a long refreshBefore must not push
// the next check of a 1m checkInterval into the past.
func TestShortCheckIntervalWithLongRefreshBefore(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tok := &provider.Token{Expires: true, ExpiresAt: now.Add(59 * 24 * time.Hour), ObtainedAt: now}
	for _, uid := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		in := decisionInput{Now: now, Token: tok, RefreshBefore: 168 * time.Hour, CheckInterval: time.Minute, LastCheck: now,
			RefreshJitter: tokenJitter(uid), CheckJitter: tokenJitter("check/" + uid)}
		p := decide(in)
		if p.Action != actionNone {
			t.Fatalf("uid %s: just checked, yet decide = %v (%s)", uid, p.Action, p.Why)
		}
		if p.Wake < 54*time.Second || p.Wake > time.Minute {
			t.Fatalf("uid %s: wake = %v, want within [54s, 1m]", uid, p.Wake)
		}
	}
}

func TestTokenJitterIsDeterministicAndBounded(t *testing.T) {
	a1 := jitterOf(tokenJitter("uid-a"), 2*time.Hour)
	if a2 := jitterOf(tokenJitter("uid-a"), 2*time.Hour); a1 != a2 {
		t.Fatalf("jitter moved between calls: %v vs %v", a1, a2)
	}
	spread := map[time.Duration]bool{}
	for _, uid := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		j := jitterOf(tokenJitter(uid), 2*time.Hour)
		if j < 0 || j >= 5*time.Minute {
			t.Fatalf("jitter %v out of [0, 5m)", j)
		}
		spread[j] = true
	}
	if len(spread) < 6 {
		t.Fatalf("jitter does not spread tokens: %d distinct values of 8", len(spread))
	}
	if j := jitterOf(tokenJitter("x"), 60*time.Second); j >= 6*time.Second {
		t.Fatalf("jitter %v not within refreshBefore/10", j)
	}
}

func TestRetryDelay(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	far := &provider.Token{Expires: true, ExpiresAt: now.Add(30 * 24 * time.Hour)}
	expired := &provider.Token{Expires: true, ExpiresAt: now.Add(-time.Hour)}
	tests := []struct {
		name       string
		n          int32
		retryAfter time.Duration
		tok        *provider.Token
		want       time.Duration
	}{
		{"first", 1, 0, far, 5 * time.Second},
		{"second", 2, 0, far, 10 * time.Second},
		{"fifth", 5, 0, far, 80 * time.Second},
		{"capped at 1h", 30, 0, far, time.Hour},
		{"half the time left", 30, 0, &provider.Token{Expires: true, ExpiresAt: now.Add(20 * time.Minute)}, 10 * time.Minute},
		{"seconds before expiry: not under 1s", 30, 0, &provider.Token{Expires: true, ExpiresAt: now.Add(1 * time.Second)}, time.Second},
		{"no token", 30, 0, nil, time.Hour},
		{"after expiry the back-off stays exponential", 6, 0, expired, 160 * time.Second},
		{"Retry-After honoured", 1, 90 * time.Second, far, 90 * time.Second},
		{"Retry-After of 24h bounded by checkInterval", 1, 24 * time.Hour, far, 2 * time.Hour},
		{"Retry-After of 24h, 2h before expiry: retried before expiry", 1, 24 * time.Hour, &provider.Token{Expires: true, ExpiresAt: now.Add(2 * time.Hour)}, time.Hour},
	}
	for _, tc := range tests {
		if got := retryDelay(tc.n, tc.retryAfter, now, tc.tok, 2*time.Hour); got != tc.want {
			t.Errorf("%s: retryDelay = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := retryDelay(30, 0, now, far, 10*time.Minute); got != 10*time.Minute {
		t.Errorf("back-off is capped by checkInterval: got %v", got)
	}
}

func TestStateRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	in := tokenState{
		Token: &provider.Token{AccessToken: "a", RefreshToken: "r", Expires: true, ExpiresAt: now.Add(time.Hour),
			RefreshTokenExpiresAt: now.Add(90 * 24 * time.Hour), ObtainedAt: now, Type: "AmoCRMOAuth", Scopes: []string{"crm", "files"}, Refreshable: true},
	}.withConsumed(fingerprint("refresh_token", "r0"))
	out, err := decodeState(encodeState(in))
	if err != nil {
		t.Fatal(err)
	}
	if !out.Token.ExpiresAt.Equal(in.Token.ExpiresAt) || out.Token.RefreshToken != "r" ||
		!out.Token.Refreshable || out.Token.Type != "AmoCRMOAuth" || len(out.Token.Scopes) != 2 || !out.hasConsumed(fingerprint("refresh_token", "r0")) {
		t.Fatalf("round trip lost data: %+v", out.Token)
	}
	never, err := decodeState(encodeState(tokenState{Token: &provider.Token{AccessToken: "x"}}))
	if err != nil || never.Token.Expires {
		t.Fatalf("a token without expiry must decode as never expiring: %+v %v", never.Token, err)
	}
	s := tokenState{}
	for i := 0; i < maxConsumed+5; i++ {
		s = s.withConsumed(fingerprint("k", string(rune('a'+i))))
	}
	if len(s.Consumed) != maxConsumed || !s.hasConsumed(fingerprint("k", string(rune('a'+maxConsumed+4)))) {
		t.Fatalf("consumed list must keep the newest %d: %d", maxConsumed, len(s.Consumed))
	}
	if fp := fingerprint("refresh_token", "secret-value"); len(fp) != len("sha256:")+64 || fp == "secret-value" {
		t.Fatalf("fingerprint looks wrong: %q", fp)
	}
}

// TestDecisionInputBoundsEachJitterByItsInterval covers the wiring of the
// jitters into the decision (the probe hot loop came from there).
func TestDecisionInputBoundsEachJitterByItsInterval(t *testing.T) {
	for _, uid := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		mt := validFacebook("ns", "fb")
		mt.UID = types.UID(uid)
		mt.Spec.CheckInterval = &metav1.Duration{Duration: time.Minute}
		in := &inputs{mt: mt, now: time.Now(), checkInterval: time.Minute, refreshBefore: 168 * time.Hour,
			refreshJitter: tokenJitter(uid), checkJitter: tokenJitter("check/" + uid)}
		d := in.decisionInput()
		if j := jitterOf(d.CheckJitter, d.CheckInterval); j >= 6*time.Second {
			t.Fatalf("uid %s: check jitter %v exceeds checkInterval/10", uid, j)
		}
		if j := jitterOf(d.RefreshJitter, d.RefreshBefore); j >= 5*time.Minute {
			t.Fatalf("uid %s: refresh jitter %v exceeds 5m", uid, j)
		}
	}
}

func TestEffectiveRefreshBefore(t *testing.T) {
	amo := validAmoCRM("ns", "a").Spec
	fb := validFacebook("ns", "f").Spec
	monitored := &provider.Token{Expires: true}
	for _, tc := range []struct {
		name string
		spec tokensv1alpha1.ManagedTokenSpec
		tok  *provider.Token
		want time.Duration
	}{
		{"AmoCRM OAuth", amo, &provider.Token{Refreshable: true}, 2 * time.Hour},
		{"AmoCRM, no token yet", amo, nil, 2 * time.Hour},
		{"AmoCRM long-lived (only a human renews it)", amo, monitored, 14 * 24 * time.Hour},
		{"Facebook system user (renewable)", fb, &provider.Token{Refreshable: true}, 168 * time.Hour},
		{"Facebook user token (only a human renews it)", fb, monitored, 14 * 24 * time.Hour},
	} {
		if got := effectiveRefreshBefore(&tc.spec, tc.tok); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	amo.RefreshBefore = &metav1.Duration{Duration: 5 * time.Hour}
	if got := effectiveRefreshBefore(&amo, monitored); got != 5*time.Hour {
		t.Errorf("an explicit refreshBefore wins: %v", got)
	}
}

// TestTakenRequestWithoutOutcomeEnds: a callback took an authorization
// request (its spend intent marked it used) and the manager died before
// recording the outcome. The request used to stay Pending forever, with no
// wake to change that, and kubectl tokenkeeper authorize waited out its
// timeout. It now ends as Failed, saying so, a grace after its expiry.
func TestTakenRequestWithoutOutcomeEnds(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	used := now.Add(time.Minute)
	a := &authzRecord{Hash: "h", Accepted: now, Expires: now.Add(15 * time.Minute), Used: &used}

	if st := projectAuthorization(a, now.Add(2*time.Minute)); st.Phase != tokensv1alpha1.AuthorizationPending {
		t.Fatalf("while its callback may still run: %s, want Pending", st.Phase)
	}
	wake := authorizationWake(a, now.Add(2*time.Minute))
	end := now.Add(2 * time.Minute).Add(wake)
	if wake <= 0 || end.Before(a.Expires.Add(takenOutcomeGrace)) {
		t.Fatalf("wake %v: want one at the end of the grace", wake)
	}
	st := projectAuthorization(a, end)
	if st.Phase != tokensv1alpha1.AuthorizationFailed || !strings.Contains(st.Message, "never recorded") || st.ConsentURL != "" {
		t.Fatalf("after the grace: %s %q, want Failed saying the outcome was never recorded", st.Phase, st.Message)
	}
	if w := authorizationWake(a, end); w != 0 {
		t.Fatalf("no more wakes once it ended: %v", w)
	}

	// An untaken request expires at its expiry, as before.
	open := &authzRecord{Hash: "h", Accepted: now, Expires: now.Add(15 * time.Minute)}
	if w := authorizationWake(open, now); w != 15*time.Minute+time.Second {
		t.Fatalf("untaken request: wake %v", w)
	}
	if st := projectAuthorization(open, open.Expires); st.Phase != tokensv1alpha1.AuthorizationExpired {
		t.Fatalf("untaken request at its expiry: %s", st.Phase)
	}
}

// TestPendingFencedPairIsNotReplaced: a ManagedToken has one slot for a pair
// not stored yet. The pair of a fenced spend (a code or refresh token used
// up for it) stays there when an unfenced spend's pair (a Facebook
// refresh) could not be stored either; another fenced pair, or the same
// pair again, replaces it.
func TestPendingFencedPairIsNotReplaced(t *testing.T) {
	key := types.NamespacedName{Namespace: "ns", Name: "ads"}
	fenced := memEntry{uid: "u", state: tokenState{Token: &provider.Token{AccessToken: "from-the-code"}}, intent: &spendIntent{Spent: "code"}}
	unfenced := memEntry{uid: "u", state: tokenState{Token: &provider.Token{AccessToken: "from-a-refresh"}}}
	m := newMemory()
	m.setPending(key, fenced)
	m.setPending(key, unfenced)
	if e, _ := m.pendingPair(key, "u"); e.state.Token.AccessToken != "from-the-code" {
		t.Fatalf("pending pair %q, want the fenced spend's", e.state.Token.AccessToken)
	}
	again := fenced
	again.attempts = 2
	m.setPending(key, again)
	if e, _ := m.pendingPair(key, "u"); e.attempts != 2 {
		t.Fatal("the same pair, tried again, must update its entry")
	}
	m2 := newMemory()
	m2.setPending(key, unfenced)
	m2.setPending(key, fenced)
	if e, _ := m2.pendingPair(key, "u"); e.state.Token.AccessToken != "from-the-code" {
		t.Fatal("a fenced pair must replace an unfenced one")
	}
}
