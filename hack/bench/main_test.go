package main

import (
	"strings"
	"testing"
	"time"
)

func TestReadAudit(t *testing.T) {
	log := strings.Join([]string{
		// A watch: two stages, one request.
		`{"auditID":"w1","stage":"ResponseStarted","verb":"watch","user":{"username":"tokenkeeper-manager"},"objectRef":{"resource":"secrets"},"requestReceivedTimestamp":"2025-01-01T00:00:01.000000Z"}`,
		`{"auditID":"a1","stage":"ResponseComplete","verb":"get","user":{"username":"tokenkeeper-manager"},"objectRef":{"resource":"secrets","namespace":"bench-0","name":"bt-00001-creds"},"requestReceivedTimestamp":"2025-01-01T00:00:02.000000Z"}`,
		`{"auditID":"a2","stage":"ResponseComplete","verb":"patch","user":{"username":"tokenkeeper-manager"},"objectRef":{"resource":"managedtokens","subresource":"status","namespace":"bench-0","name":"bt-00001"},"requestReceivedTimestamp":"2025-01-01T00:00:03.000000Z"}`,
		// Someone else's request is not the manager's.
		`{"auditID":"d1","stage":"ResponseComplete","verb":"create","user":{"username":"tokenkeeper-bench"},"objectRef":{"resource":"secrets"},"requestReceivedTimestamp":"2025-01-01T00:00:03.000000Z"}`,
		`{"auditID":"w1","stage":"ResponseComplete","verb":"watch","user":{"username":"tokenkeeper-manager"},"objectRef":{"resource":"secrets"},"requestReceivedTimestamp":"2025-01-01T00:00:01.000000Z"}`,
		`{"auditID":"h1","stage":"ResponseComplete","verb":"get","user":{"username":"tokenkeeper-manager"},"requestReceivedTimestamp":"2025-01-01T00:00:04.000000Z"}`,
	}, "\n") + "\n"
	reqs, err := readAudit(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 4 {
		t.Fatalf("%d requests, want 4: %+v", len(reqs), reqs)
	}
	all := count(reqs, nil)
	want := counts{"watch secrets": 1, "get secrets": 1, "patch managedtokens/status": 1, "get (non-resource)": 1}
	if all.String() != want.String() {
		t.Errorf("counts %s, want %s", all, want)
	}
	t0 := time.Date(2025, 1, 1, 0, 0, 2, 0, time.UTC)
	in := window(reqs, t0, t0.Add(2*time.Second), nil)
	if got := count(in, isWrite).String(); got != "1 (1 patch managedtokens/status)" {
		t.Errorf("writes in window: %s", got)
	}
	if got := count(in, isRead).String(); got != "1 (1 get secrets)" {
		t.Errorf("reads in window: %s", got)
	}
	if _, err := readAudit(strings.NewReader("not json\n")); err == nil {
		t.Error("a broken audit log was accepted")
	}
}

func TestPlanReplay(t *testing.T) {
	w := counts{"create secrets": 7, "patch managedtokens/status": 3, "create events": 6, "delete secrets": 2}
	plan, unknown := planReplay(w, 3)
	if unknown.String() != "2 (2 delete secrets)" {
		t.Errorf("unknown = %s", unknown)
	}
	sum := counts{}
	for i := range 3 {
		for k, v := range plan(i) {
			sum[k] += v
		}
	}
	if sum.String() != (counts{"create secrets": 7, "patch managedtokens/status": 3, "create events": 6}).String() {
		t.Errorf("the plan makes %s", sum)
	}
	if p := plan(0); p["create secrets"] != 3 {
		t.Errorf("token 0 creates %d Secrets, want 3", p["create secrets"])
	}
	if p := plan(2); p["create secrets"] != 2 {
		t.Errorf("token 2 creates %d Secrets, want 2", p["create secrets"])
	}
}

func TestDecisionCounter(t *testing.T) {
	d := newDecisionCounter("")
	d.feed([]byte(`{"level":"debug","msg":"decided","namespace":"bench-0","name":"bt-00000","action":"none"}` + "\n" + `{"level":"debug","msg":"decided","namesp`))
	d.feed([]byte(`ace":"bench-1","name":"bt-00001"}` + "\n" + `{"msg":"not decided","namespace":"bench-2","name":"bt-00002"}` + "\n" + `{"msg":"decided","namespace":"bench-0","name":"bt-00000"}` + "\n"))
	tokens := []token{{"bench-0", "bt-00000"}, {"bench-1", "bt-00001"}, {"bench-2", "bt-00002"}}
	if got := d.count(tokens); got != 2 {
		t.Errorf("%d tokens examined, want 2 (a line split across reads; one token twice; another message)", got)
	}
}

func TestParseRSSAndPercentile(t *testing.T) {
	r, err := parseRSS([]byte("Name:\tmanager\nVmHWM:\t   52000 kB\nVmRSS:\t   41000 kB\nThreads:\t9\n"))
	if err != nil || r.current != 41000 || r.peak != 52000 {
		t.Errorf("parseRSS = %+v, %v", r, err)
	}
	if _, err := parseRSS([]byte("Name:\tx\n")); err == nil {
		t.Error("a status without VmRSS was accepted")
	}
	ds := []time.Duration{5, 1, 4, 2, 3}
	if p := percentile(ds, 50); p != 3 {
		t.Errorf("p50 = %d", p)
	}
	if p := percentile(ds, 99); p != 5 {
		t.Errorf("p99 = %d", p)
	}
}
