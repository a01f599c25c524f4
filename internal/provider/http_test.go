package provider

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

func TestValidateBaseURL(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"https://graph.facebook.com", true},
		{"https://proxy.internal:8443/graph", true},
		{"http://127.0.0.1:8080", true},
		{"http://localhost:9000", true},
		{"http://[::1]:9000", true},
		{"http://graph.facebook.com", false},
		{"http://10.0.0.5", false},
		{"ftp://127.0.0.1", false},
		{"https://x.example.com?client_secret=1", false},
		{"https://user:pw@x.example.com", false},
		{"not a url", false},
		{"https://", false},
	}
	for _, tc := range tests {
		err := ValidateBaseURL(tc.url)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateBaseURL(%q) = %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		h    string
		want time.Duration
	}{
		{"", 0},
		{"120", 120 * time.Second},
		{" 7 ", 7 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		// Counts past time.Duration's range wrapped around to 290ms or a
		// negative wait: now at most ten years.
		{"18446744074", maxSeconds},
		{"9223372037", maxSeconds},
		{"99999999999999999999", 0}, // not an int64: unreadable
		{now.AddDate(100, 0, 0).Format(http.TimeFormat), maxSeconds},
	}
	for _, tc := range tests {
		if got := ParseRetryAfter(tc.h, now); got != tc.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tc.h, got, tc.want)
		}
	}
}

// TestSeconds: provider counts of seconds (Retry-After, expires_in) never
// wrap around.
func TestSeconds(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want time.Duration
	}{
		{-5, 0}, {0, 0}, {86400, 24 * time.Hour}, {5183944, 5183944 * time.Second},
		{int64(maxSeconds / time.Second), maxSeconds}, {1 << 40, maxSeconds}, {1<<63 - 1, maxSeconds},
	} {
		if got := Seconds(tc.n); got != tc.want || got < 0 {
			t.Errorf("Seconds(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

// TestTransportErrorDropsTheURL: http.Client errors carry the full URL, query
// string included; the classified error must not.
func TestTransportErrorDropsTheURL(t *testing.T) {
	const secret = "client_secret=s3cr3t-value-that-must-not-leak"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(200 * time.Millisecond)
	}))
	defer srv.Close()
	c := &http.Client{Timeout: 20 * time.Millisecond}
	_, err := c.Get(srv.URL + "/oauth/access_token?" + secret)
	if err == nil || !strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("precondition: the raw client error carries the URL: %v", err)
	}
	pe := TransportError("exchange", err)
	if strings.Contains(pe.Error(), "s3cr3t") || strings.Contains(pe.Error(), "access_token") {
		t.Fatalf("classified error leaks the URL: %q", pe.Error())
	}
	if pe.Kind != KindTransient || pe.Message != "request timed out" {
		t.Fatalf("got %v %q, want a transient timeout", pe.Kind, pe.Message)
	}

	srv.Close() // now: connection refused
	_, err = (&http.Client{}).Get(srv.URL + "/x?" + secret)
	pe = TransportError("exchange", err)
	if strings.Contains(pe.Error(), "s3cr3t") || !strings.Contains(pe.Message, "network error") {
		t.Fatalf("connection refused: %q", pe.Error())
	}
	if pe := TransportError("x", context.Canceled); pe.Message != "request canceled" {
		t.Fatalf("canceled: %q", pe.Message)
	}
}

func TestAsErrorHidesUnclassifiedText(t *testing.T) {
	if AsError(nil) != nil {
		t.Fatal("AsError(nil) must be nil")
	}
	pe := AsError(errors.New("GET https://x/?client_secret=abc failed"))
	if strings.Contains(pe.Error(), "abc") || pe.Kind != KindTransient {
		t.Fatalf("unclassified error text must not survive: %q", pe.Error())
	}
	want := &Error{Kind: KindBlocked, Reason: "ProviderBlocked", Message: "m", Op: "refresh"}
	if got := AsError(errors.Join(errors.New("ctx"), want)); got != want {
		t.Fatalf("AsError must find a wrapped *Error, got %+v", got)
	}
}

func TestCredentialsGetTrims(t *testing.T) {
	c := Credentials{"refresh_token": []byte(" def50200\n"), "empty": []byte("  ")}
	if c.Get("refresh_token") != "def50200" || c.Has("empty") || c.Has("missing") {
		t.Fatalf("Get/Has: %q %v %v", c.Get("refresh_token"), c.Has("empty"), c.Has("missing"))
	}
}

// TestNoRedirects: a redirect answer is returned as is; its target never
// gets a request, so the previous URL (client_secret, tokens) cannot reach
// it as Referer.
func TestNoRedirects(t *testing.T) {
	var targetHits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		targetHits.Add(1)
		t.Errorf("the redirect target got a request (Referer %q)", r.Referer())
	}))
	defer target.Close()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/steal", http.StatusFound)
	}))
	defer origin.Close()

	follows := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return nil }}
	for name, hc := range map[string]*http.Client{
		"NewHTTPClient":                   NewHTTPClient(time.Second),
		"NoRedirects(nil)":                NoRedirects(nil),
		"NoRedirects(a following client)": NoRedirects(follows),
	} {
		resp, err := hc.Get(origin.URL + "/oauth/access_token?client_secret=s3cr3t")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body, perr := ReadBody("Facebook", "exchange", resp)
		if perr != nil || resp.StatusCode != http.StatusFound || !IsRedirect(resp.StatusCode) {
			t.Fatalf("%s: status %d, err %v, want the 302 itself", name, resp.StatusCode, perr)
		}
		_ = body
	}
	if follows.CheckRedirect == nil {
		t.Fatal("NoRedirects must not modify the client it is given")
	}
	if n := targetHits.Load(); n != 0 {
		t.Fatalf("redirect target got %d requests", n)
	}
	pe := RedirectError("AmoCRM", "account", http.StatusFound, "spec.amocrm.domain")
	if pe.Kind != KindTransient || pe.Reason != "UnexpectedRedirect" || !strings.Contains(pe.Message, "HTTP 302") ||
		!strings.Contains(pe.Message, "spec.amocrm.domain") || strings.Contains(pe.Message, target.URL) {
		t.Fatalf("RedirectError = %+v", pe)
	}
	if NewHTTPClient(0).Timeout != DefaultHTTPTimeout || NewHTTPClient(5*time.Second).Timeout != 5*time.Second {
		t.Fatal("NewHTTPClient timeout")
	}
}

// TestReadBodyCap: a body over MaxBodyBytes is refused, one at the cap is read.
func TestReadBodyCap(t *testing.T) {
	for _, tc := range []struct {
		size int
		ok   bool
	}{{MaxBodyBytes, true}, {MaxBodyBytes + 1, false}, {8 * MaxBodyBytes, false}, {0, true}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(strings.Repeat("a", tc.size)))
		}))
		resp, err := NewHTTPClient(5 * time.Second).Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, perr := ReadBody("AmoCRM", "account", resp)
		srv.Close()
		if tc.ok && (perr != nil || len(body) != tc.size) {
			t.Fatalf("size %d: %d bytes, %v", tc.size, len(body), perr)
		}
		if !tc.ok && (perr == nil || perr.Reason != "ResponseTooLarge" || perr.Kind != KindTransient || body != nil) {
			t.Fatalf("size %d: want ResponseTooLarge, got %v", tc.size, perr)
		}
	}
}

func TestRedact(t *testing.T) {
	secret := "app-secret-value"
	tok := "EAAF" + strings.Repeat("x", 40)
	got := Redact("bad "+secret+" and "+tok+" at https://x/?client_secret=abc&code=def\nnext line", secret, tok, "ab")
	for _, bad := range []string{secret, tok, "abc", "def", "\n"} {
		if strings.Contains(got, bad) {
			t.Errorf("Redact left %q in %q", bad, got)
		}
	}
	if !strings.Contains(got, "next line") || !strings.Contains(got, "bad") {
		t.Errorf("Redact dropped plain text: %q", got)
	}
	long := Redact(strings.Repeat("слово ", 100))
	if len(long) > maxRedactedLen+3 || !strings.HasSuffix(long, "...") || !utf8.ValidString(long) {
		t.Errorf("Redact must cut long text on a rune boundary: %d bytes", len(long))
	}
	if Redact("Token has been revoked") != "Token has been revoked" {
		t.Error("Redact must keep short plain text")
	}
}
