// Package callback is the HTTP side of the operator's authorization
// endpoint: it parses the OAuth callbacks of AmoCRM (Kommo) and Facebook,
// bounds their size and rate, counts them, and answers a small page. What
// a callback means (which ManagedToken, whether its state is live, the code
// exchange) is the Handler's business; this package never sees a
// Kubernetes object.
//
// The page names the ManagedToken and the result in words. It never holds a
// code, a state or a token: Handler results carry only safe text, and the
// page is built with html/template.
package callback

import (
	"context"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/time/rate"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/authz"
)

// Results: "accepted", or why a callback was refused. They are the values
// of the result label of tokenkeeper_authorization_callbacks_total.
const (
	Accepted          = "accepted"
	MissingState      = "MissingState"
	UnknownState      = "UnknownState"
	Expired           = "Expired"
	Replayed          = "Replayed"
	RefererNotAllowed = "RefererNotAllowed"
	ConsentDenied     = "ConsentDenied"
	ProviderError     = "ProviderError"
	Unsolicited       = "Unsolicited"
	Malformed         = "Malformed"
	RateLimited       = "RateLimited"
	NotStored         = "NotStored"
)

// Results lists every result, for metrics that start at 0.
var Results = []string{Accepted, MissingState, UnknownState, Expired, Replayed, RefererNotAllowed,
	ConsentDenied, ProviderError, Unsolicited, Malformed, RateLimited, NotStored}

const (
	// maxQuery bounds the raw query string: a callback carries a code
	// (AmoCRM's are about 700 characters), a state of 43, a referer and a
	// few short fields.
	maxQuery = 4096
	// maxCode bounds a code; maxField any other field.
	maxCode  = 2048
	maxField = 256
)

// Params is a parsed callback.
type Params struct {
	Provider tokensv1alpha1.Provider
	// State is the OAuth state ("" when the provider sent none).
	State string
	// Code is the authorization code ("" when consent was denied).
	Code string
	// Referer is AmoCRM's account host, lowercased, without scheme, port
	// or path ("" for Facebook).
	Referer string
	// ClientID is AmoCRM's client_id parameter.
	ClientID string
	// Denied is the provider's error parameter when the human refused
	// consent (for example access_denied); Description its description.
	Denied, Description string
}

// Result is what a Handler decided.
type Result struct {
	// Outcome is Accepted or a refusal from the list above.
	Outcome string
	// ManagedToken is namespace/name when the callback was matched to one.
	ManagedToken string
	// Message says what happened, in words a human can act on. It must
	// hold no secret.
	Message string
}

// Handler carries out a parsed callback.
type Handler func(ctx context.Context, p Params) Result

// Recorder counts callbacks (tokenkeeper_authorization_callbacks_total).
type Recorder func(provider, result string)

// Options configures NewServer.
type Options struct {
	// Handler is required.
	Handler Handler
	// Record, when set, counts every callback.
	Record Recorder
	// RatePerSecond and Burst bound callbacks across all clients; 0 means 5
	// a second with a burst of 20: a human clicks once, Kommo sends once,
	// and a flood of forged callbacks must not become a flood of reads.
	// Not per client, by decision: behind an ingress every request has the
	// ingress's address, and X-Forwarded-For is whatever the sender wrote.
	RatePerSecond float64
	Burst         int
	// Timeout bounds one callback's handling, the code exchange included
	// (default 60s).
	Timeout time.Duration
}

// NewServer returns the endpoint's handler: the two callback paths and
// /healthz.
func NewServer(o Options) http.Handler {
	if o.RatePerSecond <= 0 {
		o.RatePerSecond, o.Burst = 5, 20
	}
	if o.Burst <= 0 {
		o.Burst = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	s := &server{o: o, limiter: rate.NewLimiter(rate.Limit(o.RatePerSecond), o.Burst)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+tokensv1alpha1.AmoCRMCallbackPath, s.serve(tokensv1alpha1.ProviderAmoCRM))
	mux.HandleFunc("GET "+tokensv1alpha1.FacebookCallbackPath, s.serve(tokensv1alpha1.ProviderFacebook))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	return mux
}

type server struct {
	o       Options
	limiter *rate.Limiter
}

func (s *server) serve(p tokensv1alpha1.Provider) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var res Result
		switch {
		case !s.limiter.Allow():
			res = Result{Outcome: RateLimited, Message: "too many authorization callbacks right now; wait a minute and run kubectl tokenkeeper authorize again"}
		default:
			params, refusal := Parse(p, r.URL.RawQuery)
			if refusal != nil {
				res = *refusal
				break
			}
			ctx, cancel := context.WithTimeout(r.Context(), s.o.Timeout)
			res = s.o.Handler(ctx, params)
			cancel()
		}
		if s.o.Record != nil {
			s.o.Record(string(p), res.Outcome)
		}
		writePage(w, p, res)
	}
}

// Parse reads a callback's query. It refuses, without calling anyone, a
// query that is too long, repeats a parameter, carries a field that is too
// long or holds control characters, or has neither a code nor a denial.
// A missing state is not refused here: AmoCRM sends none when an
// administrator installs the integration from inside the account, and the
// Handler decides about those.
func Parse(p tokensv1alpha1.Provider, rawQuery string) (Params, *Result) {
	malformed := func(msg string) (Params, *Result) {
		return Params{}, &Result{Outcome: Malformed, Message: "this is not a callback the operator can read: " + msg}
	}
	if len(rawQuery) > maxQuery {
		return malformed("the query is too long")
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return malformed("the query cannot be parsed")
	}
	get := func(key string, max int) (string, bool) {
		v := q[key]
		switch {
		case len(v) == 0:
			return "", true
		case len(v) > 1 || len(v[0]) > max || !printable(v[0]):
			return "", false
		}
		return v[0], true
	}
	out := Params{Provider: p}
	type field struct {
		key string
		max int
		dst *string
	}
	fields := []field{
		{"state", authz.MaxStateLength, &out.State},
		{"code", maxCode, &out.Code},
		{"error", maxField, &out.Denied},
		{"error_description", maxField, &out.Description},
	}
	if p == tokensv1alpha1.ProviderAmoCRM {
		fields = append(fields, field{"referer", maxField, &out.Referer}, field{"client_id", maxField, &out.ClientID})
	}
	for _, f := range fields {
		v, ok := get(f.key, f.max)
		if !ok {
			return malformed("parameter " + f.key + " is repeated, too long or not printable")
		}
		*f.dst = v
	}
	if out.Referer != "" {
		h, ok := NormalizeHost(out.Referer)
		if !ok {
			return malformed("referer is not a host name")
		}
		out.Referer = h
	}
	if out.Code == "" && out.Denied == "" {
		return malformed("it carries neither a code nor an error")
	}
	if out.Code != "" && out.Denied != "" {
		return malformed("it carries both a code and an error")
	}
	return out, nil
}

// NormalizeHost turns an AmoCRM referer ("sub.amocrm.ru",
// "https://sub.amocrm.ru/", "SUB.kommo.com:443") into a lowercase host. It
// reports false for anything that is not a plain DNS name.
func NormalizeHost(v string) (string, bool) {
	v = strings.ToLower(strings.TrimSpace(v))
	if i := strings.Index(v, "://"); i >= 0 {
		v = v[i+3:]
	}
	if i := strings.IndexAny(v, "/?#"); i >= 0 {
		v = v[:i]
	}
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		v = v[:i]
	}
	if v == "" || len(v) > 253 {
		return "", false
	}
	for _, label := range strings.Split(v, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", false
			}
		}
	}
	return v, true
}

func printable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == '\uFFFD' {
			return false
		}
	}
	return true
}

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>tokenkeeper: {{.Title}}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>{{.Title}}</h1>
{{if .ManagedToken}}<p>ManagedToken <code>{{.ManagedToken}}</code> ({{.Provider}})</p>{{end}}
<p>{{.Message}}</p>
{{if .Done}}<p>You can close this window.</p>{{end}}
</body></html>
`))

func writePage(w http.ResponseWriter, p tokensv1alpha1.Provider, res Result) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// The callback URL holds a code: keep it out of caches and out of any
	// Referer, and let nobody frame or script this page.
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	status, title := http.StatusBadRequest, "Authorization refused"
	switch res.Outcome {
	case Accepted:
		status, title = http.StatusOK, "Authorized"
	case RateLimited:
		status = http.StatusTooManyRequests
	case ProviderError:
		status, title = http.StatusBadGateway, "Authorization failed"
	case NotStored:
		status, title = http.StatusServiceUnavailable, "Authorization not finished"
	case ConsentDenied:
		status, title = http.StatusOK, "Authorization denied"
	case UnknownState, Expired, Replayed:
		status = http.StatusForbidden
	}
	w.WriteHeader(status)
	_ = page.Execute(w, struct {
		Title, ManagedToken, Provider, Message string
		Done                                   bool
	}{title, res.ManagedToken, string(p), res.Message, res.Outcome == Accepted || res.Outcome == ConsentDenied})
}
