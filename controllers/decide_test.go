package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

func TestDecide(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC))
	now := clk.Now()
	amo := func(expiresIn time.Duration) *provider.Token {
		return &provider.Token{Expires: true, ExpiresAt: now.Add(expiresIn), Refreshable: true,
			ObtainedAt: now.Add(-time.Hour), RefreshTokenExpiresAt: now.Add(89 * 24 * time.Hour)}
	}
	fbUser := func(expiresIn time.Duration) *provider.Token {
		return &provider.Token{Expires: true, ExpiresAt: now.Add(expiresIn), ObtainedAt: now.Add(-time.Hour)}
	}
	never := &provider.Token{ObtainedAt: now.Add(-time.Hour)}
	base := func(tok *provider.Token) decisionInput {
		return decisionInput{Now: now, Token: tok, RefreshBefore: 2 * time.Hour, CheckInterval: 2 * time.Hour, LastCheck: now.Add(-10 * time.Minute)}
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
			in.RefreshJitter = 2 * time.Minute
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
			in.ForceRequested, in.RetryAt = true, now.Add(time.Hour)
			return in
		}, actionRefresh, whyForced},
		{"halted: nothing, even when due", func() decisionInput {
			in := base(amo(-time.Hour))
			in.Halted = true
			return in
		}, actionNone, whyHalted},
		{"inputs changed after a halt: one refresh of a refreshable token", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.Resume = true
			return in
		}, actionRefresh, whyResume},
		{"inputs changed after a halt: one probe of a monitored token", func() decisionInput {
			in := base(fbUser(30 * 24 * time.Hour))
			in.Resume = true
			return in
		}, actionProbe, whyResume},
		{"inputs changed after a halt with a new grant: bootstrap", func() decisionInput {
			in := base(amo(20 * time.Hour))
			in.Resume, in.Grant = true, "refresh_token"
			return in
		}, actionBootstrap, whyNewGrant},
		{"backing off: nothing, even when due", func() decisionInput {
			in := base(amo(time.Hour))
			in.RetryAt = now.Add(time.Minute)
			return in
		}, actionNone, whyBackoff},
		{"back-off over: refresh", func() decisionInput {
			in := base(amo(time.Hour))
			in.RetryAt = now.Add(-time.Second)
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
			got, why := decide(tc.in())
			if got != tc.want || why != tc.why {
				t.Fatalf("decide = %v (%s), want %v (%s)", got, why, tc.want, tc.why)
			}
		})
	}
}

func TestRequeueAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tok := &provider.Token{Expires: true, ExpiresAt: now.Add(3 * time.Hour), Refreshable: true, ObtainedAt: now}
	in := decisionInput{Now: now, Token: tok, RefreshBefore: 2 * time.Hour, CheckInterval: 2 * time.Hour, LastCheck: now}
	if got, want := requeueAfter(in), time.Hour; got != want {
		t.Errorf("requeue before nextRefreshTime = %v, want %v", got, want)
	}
	tok.ExpiresAt = now.Add(48 * time.Hour)
	if got, want := requeueAfter(in), 2*time.Hour; got != want {
		t.Errorf("requeue is capped at checkInterval: got %v, want %v", got, want)
	}
	in.RetryAt = now.Add(30 * time.Second)
	if got, want := requeueAfter(in), 30*time.Second; got != want {
		t.Errorf("requeue at a pending retry: got %v, want %v", got, want)
	}
	in.RetryAt = time.Time{}
	fb := &provider.Token{Expires: true, ExpiresAt: now.Add(10 * 24 * time.Hour), DataAccessExpiresAt: now.Add(7*24*time.Hour + 30*time.Minute)}
	in = decisionInput{Now: now, Token: fb, RefreshBefore: 7 * 24 * time.Hour, CheckInterval: 2 * time.Hour, LastCheck: now}
	if got, want := requeueAfter(in), 30*time.Minute; got != want {
		t.Errorf("requeue when the data-access warning starts: got %v, want %v", got, want)
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
			RefreshJitter: tokenJitter(uid, 168*time.Hour), CheckJitter: tokenJitter(uid, time.Minute)}
		if act, why := decide(in); act != actionNone {
			t.Fatalf("uid %s: just checked, yet decide = %v (%s)", uid, act, why)
		}
		if d := requeueAfter(in); d < 54*time.Second || d > time.Minute {
			t.Fatalf("uid %s: requeueAfter = %v, want within [54s, 1m]", uid, d)
		}
	}
}

func TestTokenJitterIsDeterministicAndBounded(t *testing.T) {
	a1 := tokenJitter("uid-a", 2*time.Hour)
	if a2 := tokenJitter("uid-a", 2*time.Hour); a1 != a2 {
		t.Fatalf("jitter moved between calls: %v vs %v", a1, a2)
	}
	spread := map[time.Duration]bool{}
	for _, uid := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		j := tokenJitter(uid, 2*time.Hour)
		if j < 0 || j >= 5*time.Minute {
			t.Fatalf("jitter %v out of [0, 5m)", j)
		}
		spread[j] = true
	}
	if len(spread) < 6 {
		t.Fatalf("jitter does not spread tokens: %d distinct values of 8", len(spread))
	}
	if j := tokenJitter("x", 60*time.Second); j >= 6*time.Second {
		t.Fatalf("jitter %v not within refreshBefore/10", j)
	}
}

func TestBackoff(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	far := &provider.Token{Expires: true, ExpiresAt: now.Add(30 * 24 * time.Hour)}
	tests := []struct {
		n    int32
		tok  *provider.Token
		want time.Duration
	}{
		{1, far, 5 * time.Second},
		{2, far, 10 * time.Second},
		{5, far, 80 * time.Second},
		{30, far, time.Hour},
		{30, &provider.Token{Expires: true, ExpiresAt: now.Add(20 * time.Minute)}, 10 * time.Minute},
		{30, &provider.Token{Expires: true, ExpiresAt: now.Add(2 * time.Second)}, 5 * time.Second},
		{30, nil, time.Hour},
	}
	for _, tc := range tests {
		if got := backoff(tc.n, now, tc.tok, 2*time.Hour); got != tc.want {
			t.Errorf("backoff(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
	if got := backoff(30, now, far, 10*time.Minute); got != 10*time.Minute {
		t.Errorf("backoff is capped by checkInterval: got %v", got)
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
		rn := (&ManagedTokenReconciler{Clock: clocktesting.NewFakeClock(time.Now())}).begin(mt)
		in := rn.decisionInput()
		if in.CheckJitter >= 6*time.Second {
			t.Fatalf("uid %s: check jitter %v exceeds checkInterval/10", uid, in.CheckJitter)
		}
		if in.RefreshJitter >= 5*time.Minute {
			t.Fatalf("uid %s: refresh jitter %v exceeds 5m", uid, in.RefreshJitter)
		}
	}
}
