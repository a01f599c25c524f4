package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// managerUser is the user the manager runs as: a client certificate of its
// own, so that the audit log tells its requests from the driver's.
const managerUser = "tokenkeeper-manager"

// auditPolicy records the manager's requests, and nothing else, at level
// Metadata (verb, resource, name; no bodies). apiserver_request_total has
// no user or user-agent label, so it cannot separate the manager's requests
// from the driver's; the audit log, written by the API server itself, can.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["` + managerUser + `"]
- level: None
`

// request is one API request of the manager, from the audit log.
type request struct {
	at        time.Time // when the API server received it
	verb      string    // get, list, watch, create, update, patch, delete
	resource  string    // such as secrets, managedtokens/status, events
	namespace string
	name      string
}

// isWrite reports whether the request changes something.
func (r request) isWrite() bool {
	switch r.verb {
	case "create", "update", "patch", "delete", "deletecollection":
		return true
	}
	return false
}

// key names the request's kind in the tables: verb and resource.
func (r request) key() string { return r.verb + " " + r.resource }

type auditEvent struct {
	AuditID string `json:"auditID"`
	Verb    string `json:"verb"`
	User    struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	RequestReceivedTimestamp time.Time `json:"requestReceivedTimestamp"`
}

// readAudit reads the manager's requests from an audit log (JSON lines).
// A request appears once per stage (a watch has ResponseStarted and, when
// it ends, ResponseComplete): it is counted once, by audit ID.
func readAudit(r io.Reader) ([]request, error) {
	seen := map[string]bool{}
	var out []request
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		var ev auditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		if ev.User.Username != managerUser || seen[ev.AuditID] {
			continue
		}
		seen[ev.AuditID] = true
		req := request{at: ev.RequestReceivedTimestamp, verb: ev.Verb, resource: "(non-resource)"}
		if o := ev.ObjectRef; o != nil {
			req.resource, req.namespace, req.name = o.Resource, o.Namespace, o.Name
			if o.Subresource != "" {
				req.resource += "/" + o.Subresource
			}
		}
		out = append(out, req)
	}
	return out, sc.Err()
}

func readAuditFile(path string) ([]request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAudit(f)
}

// window selects the requests received in [from, to) that keep says to.
func window(reqs []request, from, to time.Time, keep func(request) bool) []request {
	var out []request
	for _, r := range reqs {
		if !r.at.Before(from) && r.at.Before(to) && (keep == nil || keep(r)) {
			out = append(out, r)
		}
	}
	return out
}

// counts is a number of requests by key (verb and resource).
type counts map[string]int

func count(reqs []request, keep func(request) bool) counts {
	c := counts{}
	for _, r := range reqs {
		if keep == nil || keep(r) {
			c[r.key()]++
		}
	}
	return c
}

func (c counts) total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// minus returns c - o, without the kinds that did not change.
func (c counts) minus(o counts) counts {
	out := counts{}
	for k, v := range c {
		if d := v - o[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// keys returns the keys with a count, the most frequent first.
func (c counts) keys() []string {
	ks := make([]string, 0, len(c))
	for k, v := range c {
		if v != 0 {
			ks = append(ks, k)
		}
	}
	sort.Slice(ks, func(i, j int) bool {
		if c[ks[i]] != c[ks[j]] {
			return c[ks[i]] > c[ks[j]]
		}
		return ks[i] < ks[j]
	})
	return ks
}

// String renders "3 (2 get secrets, 1 get managedtokens)".
func (c counts) String() string {
	if c.total() == 0 {
		return "0"
	}
	parts := make([]string, 0, len(c))
	for _, k := range c.keys() {
		parts = append(parts, fmt.Sprintf("%d %s", c[k], k))
	}
	return fmt.Sprintf("%d (%s)", c.total(), strings.Join(parts, ", "))
}

func isRead(r request) bool  { return r.verb == "get" || r.verb == "list" }
func isWatch(r request) bool { return r.verb == "watch" }
func isWrite(r request) bool { return r.isWrite() }
