package facebook

import (
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"time"
)

// App-level throttling. X-App-Usage carries call_count, total_cputime and
// total_time as percentages of the app's rolling one-hour limit, with no
// time to regain access; calls made with the app token (every debug_token)
// count against that limit, which is small for internal apps (200 x daily
// active users). The client therefore keeps, per app ID, a time before
// which it makes no call for that app and answers KindThrottled, reason
// AppUsageHigh, with the remaining wait as RetryAfter:
//   - after any answer whose X-App-Usage reaches the threshold (90% by
//     default): from 5 minutes at the threshold, growing linearly to 60
//     minutes at 100% (the window is one hour);
//   - after app-level throttling (codes 4 and 341): the wait Facebook asked
//     for, else the usage-based wait, else 15 minutes.
// A successful answer is always returned, whatever its usage header: a new
// token is never dropped to slow down.

const (
	minSlowDown        = 5 * time.Minute
	maxSlowDown        = time.Hour
	appThrottleDefault = 15 * time.Minute
)

// usagePercent is the highest of call_count, total_cputime and total_time
// in the X-App-Usage headers of h; ok is false when there is none.
func usagePercent(h http.Header) (float64, bool) {
	var best float64
	found := false
	for _, v := range h.Values("X-App-Usage") {
		var m map[string]any
		if json.Unmarshal([]byte(v), &m) != nil {
			continue
		}
		for _, k := range []string{"call_count", "total_cputime", "total_time"} {
			if x, ok := m[k]; ok {
				found = true
				best = math.Max(best, number(x))
			}
		}
	}
	return best, found
}

// slowDown is the wait for a usage percentage at or above threshold.
func slowDown(pct, threshold float64) time.Duration {
	if pct < threshold {
		return 0
	}
	if pct >= 100 || threshold >= 100 {
		return maxSlowDown
	}
	f := (pct - threshold) / (100 - threshold)
	return minSlowDown + time.Duration(f*float64(maxSlowDown-minSlowDown))
}

// appLevelThrottle reports whether a Graph error code (as in
// provider.Error.Code: "4", or "4/1504022" with a subcode) throttles the
// whole app rather than one user or Page (TestAppThrottleWithSubcode).
func appLevelThrottle(code string) bool {
	code, _, _ = strings.Cut(code, "/")
	return code == "4" || code == "341"
}

func (c *Client) heldBack(appID string) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.slowUntil[appID]
	if !ok {
		return 0
	}
	d := until.Sub(c.clock.Now())
	if d <= 0 {
		delete(c.slowUntil, appID)
		return 0
	}
	return d
}

// holdBack makes no call for appID for d (never shortening a longer wait).
func (c *Client) holdBack(appID string, d time.Duration) {
	if d <= 0 {
		return
	}
	// The app's limit is counted over a rolling hour: a longer wait (a
	// huge Retry-After) would hold back every token of the app past the
	// point where it has room again.
	d = min(d, maxSlowDown)
	until := c.clock.Now().Add(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	if until.After(c.slowUntil[appID]) {
		c.slowUntil[appID] = until
	}
}

func (c *Client) noteUsage(appID string, h http.Header) {
	if pct, ok := usagePercent(h); ok {
		c.holdBack(appID, slowDown(pct, c.usage))
	}
}
