package controllers

import (
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// timeline is one simulated life of a refreshable token under the pure
// scheduler: decide, act against a model provider with outages, Retry-After
// answers and manager restarts, and repeat.
type timeline struct {
	lifetime, refreshBefore, checkInterval time.Duration
	// outages are [start, end) windows in which every provider call fails.
	outages [][2]time.Time
	// retryAfter is the Retry-After of a throttled answer (0: transient).
	retryAfter time.Duration
	// restartPct is the chance, per step, that the manager restarts and
	// forgets lastCheckTime (status lost) or dies with a spend in flight.
	restartPct int
	rng        *rand.Rand
}

// timelineStats is what a run measured.
type timelineStats struct {
	refreshes, probes, steps, failures int
	minSpacing                         time.Duration
	expiredWhileReachable              int
	busyLoops                          int
	overshoots                         int
}

func (tl *timeline) reachable(t time.Time) bool {
	for _, o := range tl.outages {
		if !t.Before(o[0]) && t.Before(o[1]) {
			return false
		}
	}
	return true
}

// reachableThroughout reports whether no outage touches [from, to).
func (tl *timeline) reachableThroughout(from, to time.Time) bool {
	for _, o := range tl.outages {
		if o[0].Before(to) && o[1].After(from) {
			return false
		}
	}
	return true
}

// run simulates until horizon and checks the scheduler's properties.
func (tl *timeline) run(t *testing.T, horizon time.Duration) timelineStats {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	tok := &provider.Token{Expires: true, ExpiresAt: now.Add(tl.lifetime), ObtainedAt: now, Refreshable: true}
	in := decisionInput{RefreshBefore: tl.refreshBefore, CheckInterval: tl.checkInterval, Inputs: "i",
		RefreshJitter: tl.rng.Float64(), CheckJitter: tl.rng.Float64(), IntentGrace: 10 * time.Second, LastCheck: now}
	st := timelineStats{minSpacing: time.Duration(1<<63 - 1)}
	lastRefresh := now
	prevBusy := false
	expiredCounted := time.Time{}
	for now.Before(start.Add(horizon)) && st.steps < 200000 {
		st.steps++
		in.Now, in.Token = now, tok
		p := decide(in)
		// Property: a token does not expire while the provider is
		// reachable from the moment it was due until its expiry.
		if !now.Before(tok.ExpiresAt) && !expiredCounted.Equal(tok.ExpiresAt) {
			expiredCounted = tok.ExpiresAt
			if tl.reachableThroughout(p.RefreshAt, tok.ExpiresAt) {
				st.expiredWhileReachable++
				t.Errorf("token expired at %v though the provider was reachable since its refresh time %v (lifetime %v, refreshBefore %v)",
					tok.ExpiresAt.Sub(start), p.RefreshAt.Sub(start), tl.lifetime, tl.refreshBefore)
			}
		}
		if p.Action == actionNone {
			// Property: no requeue under 1s, and never two short ones in a
			// row without an action in between.
			busy := p.Wake <= minWake
			if p.Wake < minWake || (busy && prevBusy) {
				st.busyLoops++
				t.Errorf("busy loop: wake %v after %s at %v", p.Wake, p.Why, now.Sub(start))
			}
			prevBusy = busy
			// Property: a wait never runs past the expiry of a token that
			// is still valid (except the at-least-1s floor).
			if now.Before(tok.ExpiresAt) && now.Add(p.Wake).After(tok.ExpiresAt.Add(minWake)) {
				st.overshoots++
				t.Errorf("wait %v (%s) at %v overshoots the expiry at %v", p.Wake, p.Why, now.Sub(start), tok.ExpiresAt.Sub(start))
			}
			now = now.Add(p.Wake)
			continue
		}
		prevBusy = false
		ok := tl.reachable(now)
		restart := tl.restartPct > 0 && tl.rng.Intn(100) < tl.restartPct
		switch {
		case ok && p.Action == actionRefresh && restart:
			// The manager dies with this spend in flight: the intent
			// stays, and no answer is stored.
			in.Intent = &spendIntent{Op: opRefresh, Started: now, Deadline: now.Add(45 * time.Second)}
			now = now.Add(time.Second)
			continue
		case ok && p.Action == actionRefresh:
			if spacing := now.Sub(lastRefresh); spacing < st.minSpacing {
				st.minSpacing = spacing
			}
			// Property: at most one refresh per half lifetime.
			if now.Sub(lastRefresh) < tl.lifetime/2 {
				t.Errorf("refresh %v after the previous one, under half the lifetime %v (%s)", now.Sub(lastRefresh), tl.lifetime, p.Why)
			}
			lastRefresh = now
			tok = &provider.Token{Expires: true, ExpiresAt: now.Add(tl.lifetime), ObtainedAt: now, Refreshable: true}
			in.Failure, in.Intent, in.LastCheck = nil, nil, now
			st.refreshes++
		case ok:
			in.Failure, in.LastCheck = nil, now
			st.probes++
		default:
			st.failures++
			n := int32(1)
			if in.Failure != nil {
				n = in.Failure.Count + 1
			}
			in.Failure = &failureRecord{Count: n, Inputs: in.Inputs,
				RetryAt: now.Add(retryDelay(n, tl.retryAfter, now, tok, tl.checkInterval))}
		}
		// Each call takes a little time.
		now = now.Add(time.Duration(50+tl.rng.Intn(500)) * time.Millisecond)
		if restart {
			// A restart that lost the status: lastCheckTime is unknown.
			in.LastCheck = time.Time{}
		}
	}
	return st
}

// horizon is how long a timeline runs: 20 lifetimes, but at most 3000
// check intervals, so a short checkInterval on a 60-day token stays cheap.
func (tl *timeline) horizon() time.Duration {
	return min(20*tl.lifetime, 3000*tl.checkInterval)
}

// newTimeline builds a timeline from fuzz parameters.
func newTimeline(seed int64, lifetimeSec, refreshBeforeSec uint32, checkIntervalMin uint16, outagePct uint8, retryAfterSec uint32, restartPct uint8) *timeline {
	rng := rand.New(rand.NewSource(seed))
	tl := &timeline{
		lifetime:      time.Duration(90+int64(lifetimeSec)%(60*24*3600)) * time.Second,
		refreshBefore: time.Duration(60+int64(refreshBeforeSec)%(400*3600)) * time.Second,
		checkInterval: time.Duration(1+int64(checkIntervalMin)%120) * time.Minute,
		retryAfter:    time.Duration(int64(retryAfterSec)%(48*3600)) * time.Second,
		restartPct:    int(restartPct % 5),
		rng:           rng,
	}
	// Outages of random length covering about outagePct% of the horizon.
	horizon := 20 * tl.lifetime
	pct := int(outagePct % 50)
	for at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC); pct > 0 && at.Before(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(horizon)); {
		length := time.Duration(rng.Int63n(int64(tl.lifetime/4) + 1))
		gap := time.Duration(float64(length) * float64(100-pct) / float64(pct))
		at = at.Add(gap)
		tl.outages = append(tl.outages, [2]time.Time{at, at.Add(length)})
		at = at.Add(length)
	}
	return tl
}

// FuzzSchedule checks the scheduler's properties over random timelines of
// lifetimes, refreshBefore values, check intervals, outages, Retry-After
// values and restarts. Its seed corpus runs in `make test`.
func FuzzSchedule(f *testing.F) {
	for _, s := range scheduleSeeds {
		f.Add(s.seed, s.lifetime, s.refreshBefore, s.checkInterval, s.outagePct, s.retryAfter, s.restartPct)
	}
	f.Fuzz(func(t *testing.T, seed int64, lifetimeSec, refreshBeforeSec uint32, checkIntervalMin uint16, outagePct uint8, retryAfterSec uint32, restartPct uint8) {
		tl := newTimeline(seed, lifetimeSec, refreshBeforeSec, checkIntervalMin, outagePct, retryAfterSec, restartPct)
		tl.run(t, tl.horizon())
	})
}

type scheduleSeed struct {
	seed                    int64
	lifetime, refreshBefore uint32
	checkInterval           uint16
	outagePct               uint8
	retryAfter              uint32
	restartPct              uint8
}

var scheduleSeeds = []scheduleSeed{
	{1, 24 * 3600, 2 * 3600, 120, 0, 0, 0},            // AmoCRM defaults, no faults
	{2, 24 * 3600, 168 * 3600, 120, 0, 0, 0},          // refreshBefore far above the lifetime
	{3, 90, 2 * 3600, 1, 10, 0, 2},                    // 90-second tokens, outages, restarts
	{4, 60 * 24 * 3600, 168 * 3600, 120, 20, 0, 1},    // Facebook 60-day tokens
	{5, 24 * 3600, 2 * 3600, 120, 30, 24 * 3600, 0},   // 429 asking for 24h
	{6, 24 * 3600, 23 * 3600, 30, 5, 0, 4},            // refreshBefore just under the lifetime
	{7, 3600, 60, 1, 40, 7, 3},                        // short tokens, many faults
	{8, 5 * 24 * 3600, 2 * 3600, 120, 45, 3600, 1},    // long outages
	{9, 24 * 3600, 2 * 3600, 120, 25, 48 * 3600, 4},   // huge Retry-After and restarts
	{10, 600, 400 * 3600, 1, 15, 30, 2},               // 10-minute tokens, absurd refreshBefore
	{11, 24 * 3600, 2 * 3600, 1, 49, 0, 4},            // outages half the time
	{12, 7 * 24 * 3600, 7 * 24 * 3600, 120, 10, 0, 0}, // refreshBefore equal to the lifetime
}

// TestScheduleProperties runs the seed timelines and 300 random ones, and
// prints what it measured.
func TestScheduleProperties(t *testing.T) {
	rng := rand.New(rand.NewSource(42))
	seeds := append([]scheduleSeed(nil), scheduleSeeds...)
	for i := 0; i < 300; i++ {
		seeds = append(seeds, scheduleSeed{rng.Int63(), rng.Uint32(), rng.Uint32(), uint16(rng.Intn(1 << 16)), uint8(rng.Intn(256)), rng.Uint32(), uint8(rng.Intn(256))})
	}
	var total timelineStats
	total.minSpacing = time.Duration(1<<63 - 1)
	minRatio := 1e9
	for _, s := range seeds {
		tl := newTimeline(s.seed, s.lifetime, s.refreshBefore, s.checkInterval, s.outagePct, s.retryAfter, s.restartPct)
		st := tl.run(t, tl.horizon())
		total.refreshes += st.refreshes
		total.probes += st.probes
		total.steps += st.steps
		total.failures += st.failures
		total.expiredWhileReachable += st.expiredWhileReachable
		total.busyLoops += st.busyLoops
		total.overshoots += st.overshoots
		if st.refreshes > 1 {
			if r := float64(st.minSpacing) / float64(tl.lifetime); r < minRatio {
				minRatio = r
			}
		}
		if lives := int(tl.horizon() / tl.lifetime); s.outagePct%50 == 0 && st.refreshes < lives-1 {
			t.Errorf("seed %d: only %d refreshes over %d lifetimes without outages", s.seed, st.refreshes, lives)
		}
	}
	fmt.Printf("measured: schedule properties over %d timelines: %d steps, %d refreshes, %d probes, %d failed calls; "+
		"expired while reachable: %d; busy loops: %d; waits past expiry: %d; shortest refresh spacing: %.2f of the lifetime\n",
		len(seeds), total.steps, total.refreshes, total.probes, total.failures, total.expiredWhileReachable, total.busyLoops, total.overshoots, minRatio)
}
