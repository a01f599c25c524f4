package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// results is what the phases measured.
type results struct {
	requests []request

	rssStart                              rss
	applyStart, allReady, syncEnd         time.Time
	latencies                             []time.Duration
	syncCalls                             counts
	idleStart, idleEnd                    time.Time
	idleCalls                             counts
	scrapeTime                            time.Duration
	scrapeBytes                           int
	rssBefore, rssAfter, rssRestart       rss
	restartStart, madeDue                 time.Time
	allExamined, dueRefreshed, restartEnd time.Time
	restartCalls                          counts
	dueToken                              token
	baseline                              time.Duration
	baselineWrites, syncWrites            int
	unreplayed                            counts
}

// table prints rows of a label and a value.
type table struct{ w io.Writer }

func (t table) head(s string) { fmt.Fprintf(t.w, "%s\n", s) }
func (t table) row(label, format string, a ...any) {
	fmt.Fprintf(t.w, "  %-50s %s\n", label, fmt.Sprintf(format, a...))
}

// perToken prints a per-token figure and, under it, one line per kind.
func (t table) perToken(label string, c counts, n int) {
	t.row(label, "%.2f", float64(c.total())/float64(n))
	for _, k := range c.keys() {
		t.row("    "+k, "%.2f  (%d)", float64(c[k])/float64(n), c[k])
	}
}

func (r *results) print(w io.Writer, c config) {
	n := c.n
	t := table{w}
	sec := func(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }
	fmt.Fprintf(w, "\n================================================================================\n")
	fmt.Fprintf(w, "tokenkeeper bench: %d %s ManagedTokens in %d namespaces\n", n, c.provider, c.namespaces)
	fmt.Fprintf(w, "manager: %s\n", c.managerBin)
	fmt.Fprintf(w, "flags: --kube-api-qps %g --kube-api-burst %d --max-concurrent-reconciles %d %s\n", c.qps, c.burst, c.workers, c.managerArgs)
	fmt.Fprintf(w, "machine: %s, %d CPUs, %s, %s\n", cpuModel(), runtime.NumCPU(), runtime.Version(), time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(w, "API requests are the manager's own, from the kube-apiserver audit log\n")
	fmt.Fprintf(w, "================================================================================\n")

	syncReqs := window(r.requests, r.applyStart, r.syncEnd, nil)
	total := r.allReady.Sub(r.applyStart)
	t.head("Sync: apply to all Ready")
	t.row("seconds to all Ready", "%s", sec(total))
	t.row("per token, create to Ready: p50 / p99", "%s / %s", sec(percentile(r.latencies, 50)), sec(percentile(r.latencies, 99)))
	t.row("raw-write baseline (same writes, plain client)", "%s for %d of %d writes", sec(r.baseline), r.baselineWrites, r.syncWrites)
	if len(r.unreplayed) > 0 {
		t.row("    not replayed", "%s", r.unreplayed)
	}
	if total > 0 && r.baseline > 0 {
		t.row("tokenkeeper's rate / raw write rate", "%.0f%%", 100*r.baseline.Seconds()/total.Seconds())
	}
	t.row("requests counted until the manager went quiet", "%s after all Ready", sec(r.syncEnd.Sub(r.allReady)))
	t.perToken("API reads per token (get, list)", count(syncReqs, isRead), n)
	t.perToken("API writes per token", count(syncReqs, isWrite), n)
	t.row("watch requests (whole sync)", "%s", count(syncReqs, isWatch))
	t.row("provider calls per token", "%.2f  %s", float64(r.syncCalls.total())/float64(n), r.syncCalls)

	idle := window(r.requests, r.idleStart, r.idleEnd, nil)
	t.head(fmt.Sprintf("Idle: %s with nothing due", r.idleEnd.Sub(r.idleStart).Round(time.Second)))
	t.row("writes", "%s", count(idle, isWrite))
	t.row("reads", "%s", count(idle, isRead))
	t.row("provider calls", "%s", r.idleCalls)

	t.head("Scrape")
	t.row("one GET /metrics", "%s, %.0f KiB", r.scrapeTime.Round(time.Millisecond), float64(r.scrapeBytes)/1024)

	mib := func(x rss) string {
		return fmt.Sprintf("%.1f / %.1f MiB", float64(x.current)/1024, float64(x.peak)/1024)
	}
	t.head("Memory: manager VmRSS / VmHWM")
	t.row("fresh, before any ManagedToken", "%s", mib(r.rssStart))
	t.row(fmt.Sprintf("after sync (%d tokens)", n), "%s", mib(r.rssBefore))
	growth := 0.0
	if r.rssBefore.current > 0 {
		growth = 100 * float64(r.rssAfter.current-r.rssBefore.current) / float64(r.rssBefore.current)
	}
	t.row(fmt.Sprintf("+ %d unrelated %d KiB Secrets", c.unrelated, c.unrelatedSize/1024), "%s (RSS %+.0f%%)", mib(r.rssAfter), growth)
	t.row("restarted manager, with both", "%s", mib(r.rssRestart))

	due := r.dueToken
	ofDue := func(q request) bool { return strings.Contains(q.name, due.name) }
	restart := window(r.requests, r.restartStart, r.restartEnd, nil)
	others := func(keep func(request) bool) func(request) bool {
		return func(q request) bool { return keep(q) && !ofDue(q) }
	}
	perTokenGets := count(restart, others(func(q request) bool { return q.verb == "get" && q.name != "" }))
	t.head(fmt.Sprintf("Restart with %d Ready tokens; one (%s) made due when the new manager was ready", n, due.key()))
	t.row("every token examined after (since start)", "%s", sec(r.allExamined.Sub(r.restartStart)))
	t.row("due token refreshed after (since made due)", "%s", sec(r.dueRefreshed.Sub(r.madeDue)))
	t.row("per-token reads, other tokens", "%.2f per token  %s", float64(perTokenGets.total())/float64(n-1), perTokenGets)
	t.row("lists and watches", "%s", count(restart, func(q request) bool { return q.verb == "list" || q.verb == "watch" }))
	t.row("writes, other tokens", "%s", count(restart, others(isWrite)))
	t.row("writes, the due token", "%s", count(restart, func(q request) bool { return isWrite(q) && ofDue(q) }))
	t.row("provider calls (the due token's refresh included)", "%s", r.restartCalls)
	fmt.Fprintf(w, "================================================================================\n")
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
