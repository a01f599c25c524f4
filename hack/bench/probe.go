package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// rss is a process's resident set (VmRSS) and its peak (VmHWM), in KiB.
type rss struct{ current, peak int64 }

// readRSS reads VmRSS and VmHWM from /proc/<pid>/status.
func readRSS(pid int) (rss, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return rss{}, err
	}
	return parseRSS(b)
}

func parseRSS(status []byte) (rss, error) {
	var r rss
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return rss{}, fmt.Errorf("unexpected %s line %q", k, sc.Text())
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return rss{}, err
		}
		if k == "VmRSS" {
			r.current = n
		} else {
			r.peak = n
		}
	}
	if r.current == 0 {
		return rss{}, fmt.Errorf("no VmRSS in /proc status")
	}
	return r, sc.Err()
}

// scrapeMetrics times one GET of url and returns the body's size.
func scrapeMetrics(ctx context.Context, url string) (time.Duration, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	d := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("scraping %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("scraping %s: HTTP %d", url, resp.StatusCode)
	}
	return d, int(n), nil
}

// decisionCounter follows a manager log (JSON lines) and collects the
// tokens the reconciler logged a "decided" line for.
type decisionCounter struct {
	path    string
	offset  int64
	partial []byte
	seen    map[string]bool // namespace/name
}

func newDecisionCounter(path string) *decisionCounter {
	return &decisionCounter{path: path, seen: map[string]bool{}}
}

// read reads what was appended since the last call.
func (d *decisionCounter) read() error {
	f, err := os.Open(d.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(d.offset, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	d.offset += int64(len(b))
	d.feed(b)
	return nil
}

func (d *decisionCounter) feed(b []byte) {
	data := append(d.partial, b...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := data[:i]
		data = data[i+1:]
		if !bytes.Contains(line, []byte(`"decided"`)) {
			continue
		}
		var l struct {
			Msg       string `json:"msg"`
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		}
		if json.Unmarshal(line, &l) == nil && l.Msg == "decided" && l.Name != "" {
			d.seen[l.Namespace+"/"+l.Name] = true
		}
	}
	d.partial = append([]byte(nil), data...)
}

func (d *decisionCounter) count(tokens []token) int {
	n := 0
	for _, t := range tokens {
		if d.seen[t.key()] {
			n++
		}
	}
	return n
}
