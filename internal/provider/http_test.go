package provider

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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
	}
	for _, tc := range tests {
		if got := ParseRetryAfter(tc.h, now); got != tc.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tc.h, got, tc.want)
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
