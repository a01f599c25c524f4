// Command demo is what `make demo` runs: the operator, for real, on a local
// control plane, against sandbox providers, with nothing to set up.
//
// It starts kube-apiserver and etcd (envtest, CRDs from config/crd/bases),
// writes an admin kubeconfig to .demo/kubeconfig, builds and starts
// bin/tokenkeeper-sandbox (fake AmoCRM and Facebook) and bin/manager, creates
// namespace demo with credentials Secrets and four ManagedTokens through
// kubectl, then prints what the operator does every 20 seconds: the
// ManagedTokens, each output Secret's keys, expiry and a short sha256
// fingerprint of its token (never the token), and the sandbox's counters.
//
// Ctrl-C (SIGINT or SIGTERM) stops the manager, the sandbox and the control
// plane, in that order, and exits 0. DEMO_DURATION (such as 150s) stops it
// by itself after that long and then exits non-zero unless the AmoCRM token
// became Ready, was refreshed at least once after the bootstrap, no refresh
// token was ever reused and no provider was called far more often than the
// schedule allows.
//
// Environment: KUBEBUILDER_ASSETS (the folder with kube-apiserver and etcd;
// `make demo` sets it, else hack/envtest-assets.sh is run), DEMO_DURATION,
// KUBECTL (the kubectl to use; default: kubectl on PATH), DEMO_MANAGER_ARGS
// (extra manager flags, such as --zap-log-level=debug).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/hack/internal/devenv"
	"github.com/tokenkeeper/tokenkeeper/hack/sandbox/state"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

const (
	namespace   = "demo"
	metricsAddr = "127.0.0.1:8080"
	probeAddr   = "127.0.0.1:8081"
	// authzAddr is the manager's authorization endpoint; the sandbox's
	// integration and app redirect there.
	authzAddr = "127.0.0.1:8082"
	// authorizeMTName is the ManagedToken created without a grant, which the
	// demo authorizes with kubectl tokenkeeper authorize.
	authorizeMTName = "amocrm-authorized"
	tickEvery       = 20 * time.Second
	accessTTL       = 3 * time.Minute
	amoCRMMTName    = "amocrm"
	// amoCRMDomain is the sandbox account's host: the referer its consent
	// page sends, which the callback checks against spec.amocrm.domain.
	amoCRMDomain = amocrmfake.DefaultDomain
	// fbCheckInterval is the Facebook tokens' checkInterval: the minimum, so
	// the demo shows each token being checked.
	fbCheckInterval = time.Minute
)

// token is one ManagedToken the demo creates, with its credentials Secret.
type token struct {
	name, provider, credentials, output, what string
	refreshBefore, checkInterval              string
	data                                      func(*state.State) map[string]string
	// page: publish the token of the sandbox's Page (spec.facebook.pageID).
	page bool
}

var tokens = []token{
	{
		name: amoCRMMTName, provider: "AmoCRM", credentials: "amocrm-credentials", output: "amocrm-token",
		refreshBefore: "2m", checkInterval: "1m",
		what: "AmoCRM OAuth: 3-minute access tokens, single-use rotating refresh tokens",
		data: func(s *state.State) map[string]string { return s.Credentials.AmoCRM.Secret() },
	},
	{
		name: authorizeMTName, provider: "AmoCRM", credentials: "amocrm-authorized-credentials", output: "amocrm-authorized-token",
		refreshBefore: "2m", checkInterval: "1m",
		what: "AmoCRM with no grant: authorized by the demo with kubectl tokenkeeper authorize",
		data: func(s *state.State) map[string]string {
			return map[string]string{"client_id": s.Credentials.AmoCRM.ClientID, "client_secret": s.Credentials.AmoCRM.ClientSecret}
		},
	},
	{
		name: "facebook-user", provider: "Facebook", credentials: "facebook-user-credentials", output: "facebook-user-token",
		refreshBefore: "168h", checkInterval: "1m",
		what: "Facebook short-lived user token, exchanged for a ~60-day one",
		data: func(s *state.State) map[string]string { return s.Credentials.FacebookUserShort.Secret() },
	},
	{
		name: "facebook-system-user", provider: "Facebook", credentials: "facebook-system-user-credentials", output: "facebook-system-user-token",
		refreshBefore: "168h", checkInterval: "1m",
		what: "Facebook system-user token expiring in 3 days, refreshed at once (refreshBefore 168h)",
		data: func(s *state.State) map[string]string { return s.Credentials.FacebookSystemUserExpiring.Secret() },
	},
	{
		name: "facebook-never-expires", provider: "Facebook", credentials: "facebook-never-expires-credentials", output: "facebook-never-expires-token",
		refreshBefore: "168h", checkInterval: "1m",
		what: "Facebook system-user token that never expires: checked, never refreshed",
		data: func(s *state.State) map[string]string { return s.Credentials.FacebookSystemUserNonExpiring.Secret() },
	},
	{
		name: "facebook-page", provider: "Facebook", credentials: "facebook-page-credentials", output: "facebook-page-token",
		refreshBefore: "168h", checkInterval: "1m", page: true,
		what: "Facebook Page token, derived from a long-lived user token with a role on the Page",
		data: func(s *state.State) map[string]string { return s.Credentials.FacebookPageUser.Secret() },
	},
}

func main() {
	// Children get SIGTERM when the thread that started them dies
	// (Pdeathsig); keeping main on one thread ties that to the process.
	runtime.LockOSThread()
	os.Exit(realMain())
}

func realMain() int {
	logf.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	d := &demo{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigc
		d.interrupted.Store(true)
		devenv.Say("\nreceived %s: stopping the demo (Ctrl-C again to kill everything at once)", s)
		cancel()
		<-sigc
		devenv.Say("second signal: killing the manager and the sandbox")
		devenv.KillAll()
	}()

	err := d.run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		// A Ctrl-C also reaches a running go build or kubectl, which may fail
		// just before the signal handler cancels ctx: give it a moment.
		time.Sleep(200 * time.Millisecond)
	}
	stopped := d.interrupted.Load()
	if err != nil && !stopped {
		devenv.Say("\ndemo failed: %v", err)
		d.showLogTails()
	}
	d.cleanup()
	devenv.Say("demo stopped")
	if err != nil && !stopped {
		return 1
	}
	return 0
}

type demo struct {
	interrupted atomic.Bool

	root, dir, kubeconfig, kubectlPath string
	duration                           time.Duration

	sandbox  *devenv.Child
	manager  *devenv.Child
	st       *state.State
	started  time.Time
	cleanups []func()

	// What the ticks saw, for the final verdict.
	everReady   map[string]bool
	lastPrint   map[string]string // output Secret -> fingerprint
	amoVersions int               // distinct AmoCRM access tokens seen
}

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.root, err = devenv.RepoRoot(); err != nil {
		return err
	}
	if v := os.Getenv("DEMO_DURATION"); v != "" {
		if d.duration, err = parseDuration(v); err != nil {
			return fmt.Errorf("DEMO_DURATION=%q: %w (use a duration such as 150s or 5m)", v, err)
		}
		if d.duration < 90*time.Second {
			devenv.Say("note: the first AmoCRM refresh comes about a minute after start; with DEMO_DURATION=%s the refresh check will likely fail (use 150s)", d.duration)
		}
	}
	d.dir = filepath.Join(d.root, ".demo")
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return err
	}
	d.kubeconfig = filepath.Join(d.dir, "kubeconfig")
	d.everReady = map[string]bool{}
	d.lastPrint = map[string]string{}

	// Preflight: fail before starting anything.
	if d.kubectlPath, err = devenv.FindKubectl(); err != nil {
		return err
	}
	for _, a := range []string{metricsAddr, probeAddr, authzAddr} {
		if err := devenv.PortFree(a); err != nil {
			return fmt.Errorf("%s is in use (another demo or manager running?): %w", a, err)
		}
	}
	assets, err := devenv.Assets(ctx, d.root)
	if err != nil {
		return err
	}

	devenv.Say("==> building bin/manager, bin/tokenkeeper-sandbox and bin/kubectl-tokenkeeper (the first build takes a few minutes)")
	for _, b := range [][2]string{{"bin/manager", "./cmd"}, {"bin/tokenkeeper-sandbox", "./hack/sandbox"}, {"bin/kubectl-tokenkeeper", "./cmd/kubectl-tokenkeeper"}} {
		if err := devenv.GoBuild(ctx, d.root, b[0], b[1]); err != nil {
			return err
		}
	}

	devenv.Say("==> starting the control plane (kube-apiserver and etcd from %s)", assets)
	if err := d.startControlPlane(ctx, assets); err != nil {
		return err
	}

	devenv.Say("==> starting the sandbox providers (fake AmoCRM and Facebook on loopback)")
	if err := d.startSandbox(ctx); err != nil {
		return err
	}

	devenv.Say("==> starting the manager (log: .demo/manager.log)")
	if err := d.startManager(ctx); err != nil {
		return err
	}

	devenv.Say("==> creating namespace %s, credentials Secrets and ManagedTokens with kubectl", namespace)
	if err := d.createObjects(ctx); err != nil {
		return err
	}
	d.started = time.Now()
	devenv.Say("==> authorizing %s: kubectl tokenkeeper authorize, then the sandbox's consent page (it approves at once)", authorizeMTName)
	if err := d.authorize(ctx); err != nil {
		return fmt.Errorf("kubectl tokenkeeper authorize %s: %w", authorizeMTName, err)
	}
	d.banner()
	return d.watch(ctx)
}

func (d *demo) startControlPlane(ctx context.Context, assets string) error {
	start := time.Now()
	cp, err := devenv.StartControlPlane(ctx, d.root, assets, filepath.Join(d.dir, "controlplane.log"), nil)
	if err != nil {
		return err
	}
	d.onCleanup(func() {
		devenv.Say("    stopping the control plane")
		if err := cp.Stop(); err != nil {
			devenv.Say("    stopping the control plane: %v", err)
		}
	})
	cfg, err := cp.AddAdmin("tokenkeeper-demo-admin", d.kubeconfig)
	if err != nil {
		return err
	}
	kubeconfig := d.kubeconfig
	d.onCleanup(func() { _ = os.Remove(kubeconfig) })
	devenv.Say("    control plane up in %s at %s; admin kubeconfig: .demo/kubeconfig", time.Since(start).Round(time.Second), cfg.Host)
	return nil
}

func (d *demo) startSandbox(ctx context.Context) error {
	sb, st, err := devenv.StartSandbox(ctx, d.root, d.dir, "--access-token-ttl", accessTTL.String(),
		"--redirect-uri", "http://"+authzAddr+tokensv1alpha1.AmoCRMCallbackPath,
		"--facebook-redirect-uri", "http://"+authzAddr+tokensv1alpha1.FacebookCallbackPath)
	if sb != nil {
		d.sandbox = sb
		d.onCleanup(func() { sb.Stop(10 * time.Second) })
	}
	if err != nil {
		return err
	}
	d.st = st
	devenv.Say("    AmoCRM fake %s, Facebook fake %s", d.st.AmoCRMURL, d.st.FacebookURL)
	return nil
}

func (d *demo) startManager(ctx context.Context) error {
	var err error
	args := []string{
		"--kubeconfig", d.kubeconfig,
		"--amocrm-url", d.st.AmoCRMURL,
		"--facebook-url", d.st.FacebookURL,
		"--metrics-bind-address", metricsAddr,
		"--health-probe-bind-address", probeAddr,
		"--leader-elect",
		"--authorization-bind-address", authzAddr,
		"--amocrm-consent-url", d.st.AmoCRMConsentURL,
		"--facebook-dialog-url", d.st.FacebookDialogURL,
	}
	// DEMO_MANAGER_ARGS adds flags, such as --zap-log-level=debug.
	args = append(args, strings.Fields(os.Getenv("DEMO_MANAGER_ARGS"))...)
	d.manager, err = devenv.StartChild("manager", filepath.Join(d.root, "bin", "manager"), args, filepath.Join(d.dir, "manager.log"), d.root)
	if err != nil {
		return err
	}
	m := d.manager
	d.onCleanup(func() { m.Stop(30 * time.Second) })

	start := time.Now()
	if err := devenv.WaitReady(ctx, m, "http://"+probeAddr+"/readyz", 90*time.Second); err != nil {
		return err
	}
	devenv.Say("    manager ready in %s (pid %d)", time.Since(start).Round(100*time.Millisecond), m.Pid())
	return nil
}

func (d *demo) createObjects(ctx context.Context) error {
	if _, err := d.kubectl(ctx, "", "create", "namespace", namespace); err != nil {
		return err
	}
	for _, t := range tokens {
		args := []string{"create", "secret", "generic", t.credentials, "-n", namespace}
		data := t.data(d.st)
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			args = append(args, "--from-literal="+k+"="+data[k])
		}
		if _, err := d.kubectl(ctx, "", args...); err != nil {
			return err
		}
	}
	out, err := d.kubectl(ctx, manifests(d.st.Credentials.AmoCRM.RedirectURI, d.st.Credentials.FacebookPageID), "apply", "-f", "-")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		devenv.Say("    %s", l)
	}
	return nil
}

// manifests renders the demo's ManagedTokens as YAML, for the AmoCRM
// integration's redirect URI and the sandbox's Facebook Page.
func manifests(redirectURI, pageID string) string {
	var b strings.Builder
	for i, t := range tokens {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, "# %s\n", t.what)
		fmt.Fprintf(&b, "apiVersion: %s\nkind: ManagedToken\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n", tokensv1alpha1.GroupVersion.String(), t.name, namespace)
		fmt.Fprintf(&b, "  provider: %s\n  credentialsSecretRef:\n    name: %s\n  secretName: %s\n", t.provider, t.credentials, t.output)
		fmt.Fprintf(&b, "  refreshBefore: %s\n  checkInterval: %s\n", t.refreshBefore, t.checkInterval)
		if t.provider == "AmoCRM" {
			fmt.Fprintf(&b, "  amocrm:\n    domain: %s\n    redirectURI: %s\n", amoCRMDomain, strconv.Quote(redirectURI))
		}
		if t.page {
			fmt.Fprintf(&b, "  facebook:\n    pageID: %s\n", strconv.Quote(pageID))
		}
	}
	return b.String()
}

func (d *demo) banner() {
	stop := "Press Ctrl-C to stop everything."
	if d.duration > 0 {
		stop = fmt.Sprintf("The demo stops by itself after %s (DEMO_DURATION); Ctrl-C stops it sooner.", d.duration)
	}
	devenv.Say(`
================================================================================
 tokenkeeper demo is running
================================================================================
 Control plane  kube-apiserver + etcd (envtest), CRDs from config/crd/bases
 Providers      sandbox fakes on loopback: AmoCRM %s, Facebook %s
 Operator       bin/manager (leader election on), log: .demo/manager.log
 Namespace      %s, with %d ManagedTokens:`, d.st.AmoCRMURL, d.st.FacebookURL, namespace, len(tokens))
	for _, t := range tokens {
		devenv.Say("   %-24s %s", t.name, t.what)
	}
	devenv.Say(`
 AmoCRM access tokens live %s and refreshBefore is 2m, so the operator
 refreshes the amocrm token about once a minute. Each refresh consumes a
 single-use refresh token: "reused refresh tokens" must stay 0.

 Poke around from another terminal (in this folder):
   export KUBECONFIG=$PWD/.demo/kubeconfig
   kubectl get managedtokens -n %s -o wide
   kubectl describe managedtoken %s -n %s
   kubectl get events -n %s
   PATH=$PWD/bin:$PATH kubectl tokenkeeper authorize %s -n %s
     (prints the sandbox's consent URL and waits; open it in a browser, or
      curl -sL it, and the token is authorized again)
   curl -s %s/metrics | grep tokenkeeper_
   curl -s %s

 Status every %s; tokens are shown as sha256 fingerprints, never in clear.
 %s
================================================================================`,
		accessTTL, namespace, amoCRMMTName, namespace, namespace, authorizeMTName, namespace, metricsAddr, d.st.StatusURL, tickEvery, stop)
}

// watch prints the status every tickEvery until ctx is done, DEMO_DURATION
// has passed, or the manager or the sandbox dies.
func (d *demo) watch(ctx context.Context) error {
	ticker := time.NewTicker(tickEvery)
	defer ticker.Stop()
	var deadline <-chan time.Time
	if d.duration > 0 {
		t := time.NewTimer(d.duration)
		defer t.Stop()
		deadline = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.manager.Done():
			return fmt.Errorf("the manager exited unexpectedly (%s); see .demo/manager.log", d.manager.ExitErr())
		case <-d.sandbox.Done():
			return fmt.Errorf("the sandbox exited unexpectedly (%s); see .demo/sandbox.log", d.sandbox.ExitErr())
		case <-ticker.C:
			d.tick(ctx, "")
		case <-deadline:
			s := d.tick(ctx, "final status, DEMO_DURATION reached")
			return d.verdict(s)
		}
	}
}

// tick prints one status block and returns the sandbox counters (nil when
// they could not be read).
func (d *demo) tick(ctx context.Context, title string) *state.Status {
	if title == "" {
		title = "running for " + time.Since(d.started).Round(time.Second).String()
	}
	devenv.Say("\n--- %s  %s ---", time.Now().Format("15:04:05"), title)
	devenv.Say("$ kubectl get mt -n %s -o wide", namespace)
	if out, err := d.kubectl(ctx, "", "get", "mt", "-n", namespace, "-o", "wide"); err != nil {
		d.warn(ctx, err)
	} else {
		fmt.Print(out)
	}
	d.recordReady(ctx)
	if ctx.Err() != nil {
		return nil // interrupted: print nothing half-read
	}

	devenv.Say("Output Secrets (access_token shown as a sha256 fingerprint, never in clear):")
	secrets, err := d.outputSecrets(ctx)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		d.warn(ctx, err)
	}
	now := time.Now()
	for _, t := range tokens {
		sec, ok := secrets[t.output]
		if !ok {
			devenv.Say("  %-29s (not created yet)", t.output)
			continue
		}
		keys := make([]string, 0, len(sec))
		for k := range sec {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		exp := "none (never expires)"
		if v, ok := sec[tokensv1alpha1.OutputExpiresAtKey]; ok {
			exp = v
			if at, err := time.Parse(time.RFC3339, v); err == nil {
				exp += " (in " + human(at.Sub(now)) + ")"
			}
		}
		fp := fingerprint(sec[tokensv1alpha1.OutputAccessTokenKey])
		mark := ""
		if prev, seen := d.lastPrint[t.output]; !seen || prev != fp {
			mark = "  <- new token"
			if t.name == amoCRMMTName {
				d.amoVersions++
			}
		}
		d.lastPrint[t.output] = fp
		devenv.Say("  %-29s keys=%s  expires_at=%s  access_token=%s%s", t.output, strings.Join(keys, ","), exp, fp, mark)
	}

	s, err := devenv.SandboxStatus(ctx, d.st.StatusURL)
	if err != nil {
		d.warn(ctx, err)
		return nil
	}
	refreshes := max(s.RefreshGrants-1, 0)
	devenv.Say("Sandbox: AmoCRM refresh grants %d (bootstrap + %d refreshes), reused refresh tokens %d (must stay 0), account probes %d",
		s.RefreshGrants, refreshes, s.ReusedRefreshTokens, s.AccountProbes)
	devenv.Say("         Facebook exchanges %d, system-user refreshes %d, debug_token calls %d, Page token requests %d",
		s.FacebookExchanges, s.FacebookRefreshes, s.DebugTokenCalls, s.PageTokenCalls)
	if s.ReusedRefreshTokens > 0 {
		devenv.Say("WARNING: the operator presented an already consumed AmoCRM refresh token %d time(s)", s.ReusedRefreshTokens)
	}
	for _, p := range overBudget(s, time.Since(d.started)) {
		devenv.Say("WARNING: %s", p)
	}
	return s
}

// overBudget reports provider call counts far above what the schedule
// allows after elapsed: a sign of a reconcile loop hammering a provider.
// The bounds are generous (twice the schedule, plus start-up calls).
func overBudget(s *state.Status, elapsed time.Duration) []string {
	var out []string
	periods := func(every time.Duration) int { return int(elapsed/every) + 1 }
	fbTokens := 0
	for _, t := range tokens {
		if t.provider == "Facebook" {
			fbTokens++
		}
	}
	// AmoCRM: one refresh per (accessTTL - refreshBefore - jitter), at
	// least 45s apart; a probe at most every checkInterval (1m).
	if limit := 2 + 2*periods(45*time.Second); s.RefreshGrants > limit {
		out = append(out, fmt.Sprintf("%d AmoCRM refresh grants in %s (expected at most %d): is the operator refreshing in a loop?",
			s.RefreshGrants, elapsed.Round(time.Second), limit))
	}
	if limit := 2 + 2*periods(time.Minute); s.AccountProbes > limit {
		out = append(out, fmt.Sprintf("%d AmoCRM account probes in %s (expected at most %d with checkInterval 1m): is the operator probing in a loop?",
			s.AccountProbes, elapsed.Round(time.Second), limit))
	}
	// Facebook: a debug_token call at bootstrap and after a refresh, then
	// one per checkInterval (brought forward by at most 5m of jitter).
	if limit := fbTokens * (4 + 2*periods(fbCheckInterval/2)); s.DebugTokenCalls > limit {
		out = append(out, fmt.Sprintf("%d Facebook debug_token calls in %s (expected at most %d with checkInterval %s): is the operator probing in a loop?",
			s.DebugTokenCalls, elapsed.Round(time.Second), limit, fbCheckInterval))
	}
	if limit := fbTokens * (2 + periods(fbCheckInterval)); s.FacebookExchanges+s.FacebookRefreshes > limit {
		out = append(out, fmt.Sprintf("%d Facebook token exchanges and refreshes in %s (expected at most %d): is the operator refreshing in a loop?",
			s.FacebookExchanges+s.FacebookRefreshes, elapsed.Round(time.Second), limit))
	}
	return out
}

// verdict checks a DEMO_DURATION run.
func (d *demo) verdict(s *state.Status) error {
	var problems []string
	if s == nil {
		problems = append(problems, "the sandbox counters could not be read")
	} else {
		if s.ReusedRefreshTokens > 0 {
			problems = append(problems, fmt.Sprintf("%d AmoCRM refresh token(s) were reused", s.ReusedRefreshTokens))
		}
		if s.RefreshGrants < 2 {
			problems = append(problems, fmt.Sprintf("no AmoCRM refresh beyond the bootstrap happened (refresh grants: %d)", s.RefreshGrants))
		}
		problems = append(problems, overBudget(s, time.Since(d.started))...)
	}
	if !d.everReady[amoCRMMTName] {
		problems = append(problems, "the amocrm ManagedToken never became Ready")
	}
	if !d.everReady[authorizeMTName] {
		problems = append(problems, "the "+authorizeMTName+" ManagedToken never became Ready after kubectl tokenkeeper authorize")
	}
	for _, t := range tokens {
		if t.name != amoCRMMTName && !d.everReady[t.name] {
			devenv.Say("note: ManagedToken %s never became Ready", t.name)
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	devenv.Say("\nOK: %s was authorized with kubectl tokenkeeper authorize; amocrm became Ready, AmoCRM refresh grants were %d beyond the bootstrap (%d distinct access tokens seen in amocrm's output Secret), and no refresh token was reused.",
		authorizeMTName, s.RefreshGrants-1, d.amoVersions)
	return nil
}

// authorize runs the real plugin as a user would (kubectl finds
// bin/kubectl-tokenkeeper on PATH), opens the consent URL it prints the way
// a browser would (the sandbox approves and redirects to the manager's
// callback), and waits until the command reports the token Ready.
func (d *demo) authorize(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, d.kubectlPath, "tokenkeeper", "authorize", authorizeMTName, "-n", namespace, "--timeout", "90s")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+d.kubeconfig, "PATH="+filepath.Join(d.root, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	devenv.Say("    $ kubectl tokenkeeper authorize %s -n %s", authorizeMTName, namespace)
	var (
		opened bool
		out    strings.Builder
	)
	buf := make([]byte, 4096)
	for {
		n, rerr := stdout.Read(buf)
		out.Write(buf[:n])
		if !opened {
			if u := consentURLIn(out.String()); u != "" {
				opened = true
				devenv.Say("    consent URL printed; opening it (the sandbox approves and redirects to the callback)")
				if err := openLikeABrowser(cctx, u); err != nil {
					return err
				}
			}
		}
		if rerr != nil {
			break
		}
	}
	werr := cmd.Wait()
	for _, l := range strings.Split(strings.TrimSpace(redact(out.String())), "\n") {
		if !strings.Contains(l, "state=") {
			devenv.Say("    %s", l)
		}
	}
	if werr != nil {
		return fmt.Errorf("%w: %s", werr, strings.TrimSpace(stderr.String()))
	}
	if !opened {
		return errors.New("the command printed no consent URL")
	}
	return nil
}

// consentURLIn finds the consent URL (the one with a state) in the
// command's output.
func consentURLIn(s string) string {
	for _, f := range strings.Fields(s) {
		if strings.HasPrefix(f, "http") && strings.Contains(f, "state=") {
			return f
		}
	}
	return ""
}

// openLikeABrowser follows the consent page's redirect to the callback
// and checks the callback's page says Authorized.
func openLikeABrowser(ctx context.Context, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("opening the consent URL: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Authorized") {
		// The page holds no secret: it names the ManagedToken and the result.
		return fmt.Errorf("the callback answered %d: %s", resp.StatusCode, pageText(string(body)))
	}
	devenv.Say("    the callback page says: Authorized")
	return nil
}

// pageText is the callback page's text without its markup.
func pageText(html string) string {
	return strings.Join(strings.Fields(regexp.MustCompile(`<[^>]*>`).ReplaceAllString(html, " ")), " ")
}

func (d *demo) warn(ctx context.Context, err error) {
	if ctx.Err() == nil {
		devenv.Say("  (%v)", err)
	}
}

type mtList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Status struct {
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	} `json:"items"`
}

func (d *demo) recordReady(ctx context.Context) {
	out, err := d.kubectl(ctx, "", "get", "mt", "-n", namespace, "-o", "json")
	if err != nil {
		return
	}
	var l mtList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return
	}
	for _, it := range l.Items {
		for _, c := range it.Status.Conditions {
			if c.Type == tokensv1alpha1.ConditionReady && c.Status == "True" {
				d.everReady[it.Metadata.Name] = true
			}
		}
	}
}

// outputSecrets returns the decoded data of the output Secrets, by name.
func (d *demo) outputSecrets(ctx context.Context) (map[string]map[string]string, error) {
	sel := tokensv1alpha1.ManagedByLabel + "=" + tokensv1alpha1.ManagedByValue + "," + tokensv1alpha1.SecretRoleLabel + "=output"
	out, err := d.kubectl(ctx, "", "get", "secrets", "-n", namespace, "-l", sel, "-o", "json")
	if err != nil {
		return nil, err
	}
	var l struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Data map[string]string `json:"data"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return nil, fmt.Errorf("parsing kubectl get secrets: %w", err)
	}
	res := map[string]map[string]string{}
	for _, it := range l.Items {
		m := map[string]string{}
		for k, v := range it.Data {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return nil, fmt.Errorf("Secret %s key %s is not base64", it.Metadata.Name, k)
			}
			m[k] = string(b)
		}
		res[it.Metadata.Name] = m
	}
	return res, nil
}

// kubectl runs the real kubectl against the demo cluster. Errors name the
// command with --from-literal values elided.
func (d *demo) kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, d.kubectlPath, append([]string{"--request-timeout=20s"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+d.kubeconfig)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("kubectl %s: %w: %s", describeArgs(args), devenv.CtxErr(cctx, err), redact(strings.TrimSpace(stderr.String())))
	}
	return stdout.String(), nil
}

func describeArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--from-literal="); ok {
			k, _, _ := strings.Cut(v, "=")
			a = "--from-literal=" + k + "=<elided>"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// cleanup stops what was started, in reverse order: the manager first (it
// releases its lease), then the sandbox, then the control plane.
func (d *demo) cleanup() {
	if len(d.cleanups) > 0 {
		devenv.Say("\n==> stopping")
	}
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
	if d.dir != "" {
		devenv.Say("logs kept in .demo/ (manager.log, sandbox.log, controlplane.log)")
	}
}

func (d *demo) onCleanup(f func()) { d.cleanups = append(d.cleanups, f) }

// showLogTails prints the end of the manager's and the sandbox's logs after
// a failure, with anything that looks like a token elided.
func (d *demo) showLogTails() {
	for _, c := range []*devenv.Child{d.manager, d.sandbox} {
		if c == nil {
			continue
		}
		b, err := os.ReadFile(c.LogPath)
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		devenv.Say("--- last lines of %s (long token-like strings elided) ---", c.LogPath)
		for _, l := range lines {
			devenv.Say("  %s", redact(l))
		}
	}
}

var (
	tokenLike = regexp.MustCompile(`[A-Za-z0-9_-]{32,}`)
	uuidLike  = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// redact elides anything long enough to be a token or a secret (each part
// of a JWT, hex or base64url strings of 32+ characters), but keeps UUIDs
// such as reconcile IDs.
func redact(s string) string {
	return tokenLike.ReplaceAllStringFunc(s, func(m string) string {
		if uuidLike.MatchString(m) {
			return m
		}
		return "<elided>"
	})
}

// fingerprint is a short sha256 of a token, safe to show.
func fingerprint(tok string) string {
	if tok == "" {
		return "(empty)"
	}
	sum := sha256.Sum256([]byte(tok))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// human renders a duration compactly: 59d23h, 2m51s, expired 5s ago.
func human(d time.Duration) string {
	if d < 0 {
		return "expired " + human(-d) + " ago"
	}
	switch {
	case d >= 48*time.Hour:
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	default:
		return d.Round(time.Second).String()
	}
}

func parseDuration(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		v = strconv.Itoa(n) + "s"
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}
