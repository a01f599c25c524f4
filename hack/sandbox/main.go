// Command tokenkeeper-sandbox serves fake AmoCRM and Facebook (Graph API)
// endpoints on loopback, for the demo (make demo) and for trying the
// operator by hand without real accounts.
//
// At start it mints demo credentials: an AmoCRM refresh token, a Facebook
// short-lived user token, a system-user token that expires in about 3 days,
// a system-user token that never expires, and a long-lived user token with
// a role on the Page DemoPageID (for a ManagedToken with
// spec.facebook.pageID). With --state-file it writes them, with both base
// URLs, to a JSON file (mode 0600) that hack/demo reads to create the
// credentials Secrets.
//
// Both fakes also serve the consent side of one-click authorization: the
// AmoCRM OAuth page (<amocrmURL>/oauth, for --amocrm-consent-url) and the
// Facebook login dialog (<facebookURL>/{version}/dialog/oauth, for
// --facebook-dialog-url). Both approve at once and redirect the browser to
// the redirect URI with a code: point --redirect-uri (the AmoCRM
// integration's) and --facebook-redirect-uri (the Facebook app's) at the
// operator's callback endpoint, such as
// http://127.0.0.1:PORT/callback/amocrm and .../callback/facebook.
//
// GET /_sandbox/status on the AmoCRM listener returns call counters (no
// secret values). Request lines are logged without query strings or bodies,
// which carry secrets. SIGINT or SIGTERM stops it.
//
//	go run ./hack/sandbox --state-file /tmp/sandbox.json
//	manager --amocrm-url <amocrmURL> --facebook-url <facebookURL> \
//	  --amocrm-consent-url <amocrmConsentURL> --facebook-dialog-url <facebookDialogURL>
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tokenkeeper/tokenkeeper/hack/sandbox/state"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// Fixed demo values: they are accepted by this sandbox only.
const (
	DefaultClientID     = "8e2f9c1a-4b7d-4e3a-9f6c-2d1b0a9e8c7d"
	DefaultClientSecret = "tokenkeeper-demo-client-secret-0123456789abcdefghijklmnopqrstu"
	DefaultRedirectURI  = "https://tokenkeeper-demo.example.com/amocrm/oauth/callback"
	DefaultAppID        = "100000000000042"
	DefaultAppSecret    = "0d3e0a55b1e2c4d6f8a9b7c5d3e1f2a4"
	// DemoPageID is the fake Page the minted long-lived user token has a
	// role on.
	DemoPageID = "104169029247128"
)

type config struct {
	amocrmListen, facebookListen     string
	accessTokenTTL, longLivedTTL     time.Duration
	systemUserExpiresIn              time.Duration
	clientID, clientSecret, redirect string
	appID, appSecret                 string
	facebookRedirectURI              string
	stateFile                        string
	extraRefreshTokens               int
	extraSystemUserTokens            int
}

func main() {
	var c config
	flag.StringVar(&c.amocrmListen, "amocrm-listen", "127.0.0.1:0", "Loopback address of the fake AmoCRM (token endpoint, /api/v4/account, "+state.StatusPath+").")
	flag.StringVar(&c.facebookListen, "facebook-listen", "127.0.0.1:0", "Loopback address of the fake Graph API.")
	flag.DurationVar(&c.accessTokenTTL, "access-token-ttl", 3*time.Minute, "Lifetime of AmoCRM access tokens (expires_in).")
	flag.DurationVar(&c.longLivedTTL, "facebook-long-lived-ttl", 60*24*time.Hour, "Lifetime of exchanged Facebook user tokens and refreshed system-user tokens.")
	flag.DurationVar(&c.systemUserExpiresIn, "facebook-system-user-expires-in", 72*time.Hour, "Time left on the minted expiring system-user token.")
	flag.StringVar(&c.clientID, "client-id", DefaultClientID, "AmoCRM integration client_id the fake accepts.")
	flag.StringVar(&c.clientSecret, "client-secret", DefaultClientSecret, "AmoCRM integration client_secret the fake accepts.")
	flag.StringVar(&c.redirect, "redirect-uri", DefaultRedirectURI, "AmoCRM integration redirect URI the fake requires (spec.amocrm.redirectURI); its OAuth page redirects there. https://, or http:// on loopback (the operator's /callback/amocrm).")
	flag.StringVar(&c.facebookRedirectURI, "facebook-redirect-uri", "", "The Facebook app's Valid OAuth Redirect URI (spec.facebook.redirectURI, such as http://127.0.0.1:PORT/callback/facebook); the login dialog accepts only it. Empty accepts any https:// or loopback http:// URI.")
	flag.StringVar(&c.appID, "app-id", DefaultAppID, "Facebook app ID the fake accepts.")
	flag.StringVar(&c.appSecret, "app-secret", DefaultAppSecret, "Facebook app secret the fake accepts.")
	flag.IntVar(&c.extraRefreshTokens, "amocrm-refresh-tokens", 0, "Also mint this many AmoCRM refresh tokens into the state file (for make bench: one per ManagedToken).")
	flag.IntVar(&c.extraSystemUserTokens, "facebook-system-user-tokens", 0, "Also mint this many expiring Facebook system-user tokens (expiring in --facebook-system-user-expires-in) into the state file (for make bench -provider facebook).")
	flag.StringVar(&c.stateFile, "state-file", "", "Write the URLs and the minted demo credentials to this JSON file (mode 0600); removed on exit.")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "tokenkeeper-sandbox: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := log.New(os.Stderr, "sandbox: ", log.LstdFlags|log.LUTC)
	if err := run(ctx, c, logger, nil); err != nil {
		logger.Printf("error: %v", err)
		os.Exit(1)
	}
}

// run serves until ctx is done. ready, when not nil, gets the state once
// both listeners serve.
func run(ctx context.Context, c config, logger *log.Logger, ready func(*state.State)) error {
	if err := c.validate(); err != nil {
		return err
	}
	amo := amocrmfake.New(amocrmfake.Options{
		ClientID: c.clientID, ClientSecret: c.clientSecret, RedirectURI: c.redirect,
		AccessTokenTTL: c.accessTokenTTL,
	})
	fbOpts := facebookfake.Options{
		AppID: c.appID, AppSecret: c.appSecret, LongLivedTTL: c.longLivedTTL,
	}
	if c.facebookRedirectURI != "" {
		fbOpts.RedirectURIs = []string{c.facebookRedirectURI}
	}
	fb := facebookfake.New(fbOpts)

	amoLn, err := listenLoopback(c.amocrmListen)
	if err != nil {
		return fmt.Errorf("--amocrm-listen: %w", err)
	}
	defer amoLn.Close()
	fbLn, err := listenLoopback(c.facebookListen)
	if err != nil {
		return fmt.Errorf("--facebook-listen: %w", err)
	}
	defer fbLn.Close()

	amoMux := http.NewServeMux()
	amoMux.HandleFunc(state.StatusPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(status(amo, fb))
	})
	amoMux.Handle("/", amo)

	servers := []*http.Server{
		{Handler: logRequests(logger, "amocrm", amoMux), ReadHeaderTimeout: 10 * time.Second, ErrorLog: logger},
		{Handler: logRequests(logger, "facebook", fb), ReadHeaderTimeout: 10 * time.Second, ErrorLog: logger},
	}
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for i, ln := range []net.Listener{amoLn, fbLn} {
		wg.Add(1)
		go func(srv *http.Server, ln net.Listener) {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}(servers[i], ln)
	}

	now := time.Now()
	st := &state.State{
		AmoCRMURL:   "http://" + amoLn.Addr().String(),
		FacebookURL: "http://" + fbLn.Addr().String(),
		PID:         os.Getpid(),
	}
	st.StatusURL = st.AmoCRMURL + state.StatusPath
	st.AmoCRMConsentURL = st.AmoCRMURL + amocrmfake.ConsentPath
	st.FacebookDialogURL = st.FacebookURL
	st.FacebookRedirectURI = c.facebookRedirectURI
	st.Credentials.AmoCRM = state.AmoCRM{
		ClientID: c.clientID, ClientSecret: c.clientSecret, RedirectURI: c.redirect,
		RefreshToken: amo.IssueRefreshToken(),
	}
	fbCreds := func(kind facebookfake.Kind, exp time.Time) state.Facebook {
		return state.Facebook{AppID: fb.AppID(), AppSecret: fb.AppSecret(), AccessToken: fb.IssueToken(kind, exp)}
	}
	for range c.extraRefreshTokens {
		st.Credentials.AmoCRMRefreshTokens = append(st.Credentials.AmoCRMRefreshTokens, amo.IssueRefreshToken())
	}
	for range c.extraSystemUserTokens {
		st.Credentials.FacebookSystemUserTokens = append(st.Credentials.FacebookSystemUserTokens, fb.IssueToken(facebookfake.KindSystemUserExpiring, now.Add(c.systemUserExpiresIn)))
	}
	st.Credentials.FacebookUserShort = fbCreds(facebookfake.KindUserShort, time.Time{})
	st.Credentials.FacebookSystemUserExpiring = fbCreds(facebookfake.KindSystemUserExpiring, now.Add(c.systemUserExpiresIn))
	st.Credentials.FacebookSystemUserNonExpiring = fbCreds(facebookfake.KindSystemUserNonExpiring, time.Time{})
	st.Credentials.FacebookPageUser = fbCreds(facebookfake.KindUserLong, now.Add(c.longLivedTTL))
	st.Credentials.FacebookPageID = DemoPageID
	fb.AddPage(DemoPageID, st.Credentials.FacebookPageUser.AccessToken)

	if c.stateFile != "" {
		if err := state.Write(c.stateFile, st); err != nil {
			shutdown(servers)
			return fmt.Errorf("writing --state-file: %w", err)
		}
		defer os.Remove(c.stateFile)
	}
	logger.Printf("AmoCRM fake on %s (access tokens live %s), Graph API fake on %s; counters at %s",
		st.AmoCRMURL, c.accessTokenTTL, st.FacebookURL, st.StatusURL)
	logger.Printf("consent pages approve at once: AmoCRM %s redirects to %s; Facebook dialog %s/{version}/dialog/oauth redirects to %s",
		st.AmoCRMConsentURL, c.redirect, st.FacebookDialogURL, orAny(c.facebookRedirectURI))
	logger.Printf("minted demo credentials: 1 AmoCRM refresh token, Facebook USER (short-lived), SYSTEM_USER (expires in %s), SYSTEM_USER (never expires), USER (long-lived, with a role on Page %s)", c.systemUserExpiresIn, DemoPageID)
	if ready != nil {
		ready(st)
	}

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Printf("stopping")
	case serveErr = <-errc:
	}
	shutdown(servers)
	wg.Wait()
	s := status(amo, fb)
	logger.Printf("stopped: %d AmoCRM refresh grants, %d reused refresh tokens, %d account probes; Facebook: %d exchanges, %d refreshes, %d debug_token calls",
		s.RefreshGrants, s.ReusedRefreshTokens, s.AccountProbes, s.FacebookExchanges, s.FacebookRefreshes, s.DebugTokenCalls)
	return serveErr
}

func (c config) validate() error {
	switch {
	case c.accessTokenTTL < time.Second:
		return fmt.Errorf("--access-token-ttl must be at least 1s, got %s", c.accessTokenTTL)
	case c.longLivedTTL < time.Second:
		return fmt.Errorf("--facebook-long-lived-ttl must be at least 1s, got %s", c.longLivedTTL)
	case c.systemUserExpiresIn < time.Second:
		return fmt.Errorf("--facebook-system-user-expires-in must be at least 1s, got %s", c.systemUserExpiresIn)
	case c.extraRefreshTokens < 0 || c.extraRefreshTokens > 100000:
		return fmt.Errorf("--amocrm-refresh-tokens must be between 0 and 100000, got %d", c.extraRefreshTokens)
	case c.extraSystemUserTokens < 0 || c.extraSystemUserTokens > 100000:
		return fmt.Errorf("--facebook-system-user-tokens must be between 0 and 100000, got %d", c.extraSystemUserTokens)
	case c.clientID == "" || c.clientSecret == "" || c.appID == "" || c.appSecret == "":
		return errors.New("--client-id, --client-secret, --app-id and --app-secret must not be empty")
	}
	if err := redirectURIOK(c.redirect); err != nil {
		return fmt.Errorf("--redirect-uri %w", err)
	}
	if c.facebookRedirectURI != "" {
		if err := redirectURIOK(c.facebookRedirectURI); err != nil {
			return fmt.Errorf("--facebook-redirect-uri %w", err)
		}
	}
	return nil
}

// redirectURIOK applies the ManagedToken API's rule for redirect URIs: an
// absolute https URL, or http on localhost, 127.0.0.1 or [::1].
func redirectURIOK(raw string) error {
	u, err := url.Parse(raw)
	if err == nil && u.Hostname() != "" {
		switch h := u.Hostname(); {
		case u.Scheme == "https":
			return nil
		case u.Scheme == "http" && (h == "localhost" || h == "127.0.0.1" || h == "::1"):
			return nil
		}
	}
	return fmt.Errorf("must be an absolute https:// URL, or http:// on localhost, 127.0.0.1 or [::1] (the ManagedToken API requires one), got %q", raw)
}

func orAny(redirectURI string) string {
	if redirectURI == "" {
		return "any https:// or loopback http:// redirect_uri"
	}
	return redirectURI
}

func status(amo *amocrmfake.Server, fb *facebookfake.Server) state.Status {
	return state.Status{
		RefreshGrants:           amo.Calls("refresh_token"),
		AuthorizationCodeGrants: amo.Calls("authorization_code"),
		ReusedRefreshTokens:     amo.ReusedRefreshTokens(),
		AccountProbes:           amo.Calls("account"),
		FacebookExchanges:       fb.Calls(facebookfake.OpExchange),
		FacebookRefreshes:       fb.Calls(facebookfake.OpRefresh),
		DebugTokenCalls:         fb.Calls(facebookfake.OpDebugToken),
		PageTokenCalls:          fb.Calls(facebookfake.OpPage),
		AmoCRMConsents:          amo.Calls("consent"),
		FacebookDialogs:         fb.Calls(facebookfake.OpDialog),
		FacebookCodeGrants:      fb.Calls(facebookfake.OpAuthorizationCode),
	}
}

// listenLoopback listens on addr, which must be a loopback address: the
// fakes hand out credentials to anyone who asks.
func listenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%q is not a loopback address (use 127.0.0.1:PORT)", addr)
	}
	return net.Listen("tcp", addr)
}

func shutdown(servers []*http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		if err := s.Shutdown(ctx); err != nil {
			_ = s.Close()
		}
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// logRequests logs one line per request: method, path, status and time
// taken. Never the query string (Graph API calls carry the app secret and
// tokens there), the body or a header.
func logRequests(logger *log.Logger, name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		logger.Printf("%s %s %s %d %s", name, r.Method, safePath(r.URL.Path), rec.status, time.Since(start).Round(100*time.Microsecond))
	})
}

// safePath keeps printable ASCII of the path, at most 96 characters.
func safePath(p string) string {
	var b strings.Builder
	for _, r := range p {
		if b.Len() >= 96 {
			b.WriteString("...")
			break
		}
		if r >= 0x21 && r < 0x7f {
			b.WriteRune(r)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}
