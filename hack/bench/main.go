// Command bench is what `make bench` runs: it measures how fast tokenkeeper
// brings N ManagedTokens to Ready and what that costs the API server, the
// providers and the manager's memory. It is a benchmark, not a test: it
// prints what it measured and fails only when it cannot run.
//
// It starts a local control plane (kube-apiserver with an audit log, and
// etcd; envtest, CRDs from config/crd/bases), the sandbox providers
// (bin/tokenkeeper-sandbox) and the real manager binary (bin/manager), then:
//
//  1. sync: creates N credentials Secrets and N ManagedTokens (-provider:
//     AmoCRM refresh tokens, or expiring Facebook system-user tokens), spread
//     over -namespaces namespaces, and times apply (the first ManagedToken
//     created) to all Ready, and each token's create to Ready;
//  2. idle: once the manager has made no request for 3 s, counts its
//     requests and provider calls over -idle;
//  3. scrape: times one GET /metrics and prints its size;
//  4. memory: the manager's VmRSS and VmHWM (from /proc) before and after
//     -unrelated Secrets of -unrelated-size bytes are created in a namespace
//     that holds no ManagedToken;
//  5. restart: stops the manager and starts it again; once the new one is
//     ready it requests a refresh of one token (so that token falls due
//     while every other one is being looked at), and measures until every
//     token was examined (the reconciler's V(1) "decided" log line) and the
//     due token was refreshed;
//  6. raw-write baseline: with the manager stopped, a plain client makes the
//     writes the manager made during sync (the same verbs, resources and
//     counts, with copies of the same objects) at the same client limits
//     and worker count, in namespace bench-raw.
//
// API requests are counted from the kube-apiserver's audit log (see
// auditPolicy): the manager runs as a user of its own, so the driver's
// requests are not counted. Logs, the audit log and the kubeconfigs are
// kept in .bench/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/hack/internal/devenv"
	"github.com/tokenkeeper/tokenkeeper/hack/sandbox/state"
)

const (
	driverUser  = "tokenkeeper-bench"
	unrelatedNS = "bench-unrelated"
	rawNS       = "bench-raw"
	// quiet is how long the manager must make no request for a phase to
	// end, so that trailing requests (a second reconcile after an owned
	// Secret's create event) count in the phase that caused them.
	quiet = 3 * time.Second
)

type config struct {
	n, namespaces, workers        int
	qps                           float64
	burst                         int
	unrelated, unrelatedSize      int
	idle, timeout, restartTimeout time.Duration
	managerArgs, managerBin       string
	provider                      tokensv1alpha1.Provider
}

func main() {
	// Children get SIGTERM when the thread that started them dies
	// (Pdeathsig); keeping main on one thread ties that to the process.
	runtime.LockOSThread()
	var c config
	flag.IntVar(&c.n, "n", 1000, "ManagedTokens to create (the issue's goals are stated for 10000).")
	provider := flag.String("provider", "amocrm", "The ManagedTokens' provider: amocrm (a refresh token each: every first publish spends it, behind a spend intent) or facebook (an expiring system-user token each: adopted, nothing spent).")
	flag.IntVar(&c.namespaces, "namespaces", 4, "Namespaces to spread the ManagedTokens over.")
	flag.IntVar(&c.workers, "workers", 1, "The manager's --max-concurrent-reconciles, and the baseline's workers.")
	flag.Float64Var(&c.qps, "qps", 20, "The manager's --kube-api-qps, and the baseline client's.")
	flag.IntVar(&c.burst, "burst", 30, "The manager's --kube-api-burst, and the baseline client's.")
	flag.IntVar(&c.unrelated, "unrelated", 10000, "Unrelated Secrets created for the memory measurement.")
	flag.IntVar(&c.unrelatedSize, "unrelated-size", 10*1024, "Bytes of data in each unrelated Secret.")
	flag.DurationVar(&c.idle, "idle", time.Minute, "Length of the idle window.")
	flag.DurationVar(&c.timeout, "timeout", 0, "How long the sync may take before the bench gives up (0: 10m plus 300ms per token).")
	flag.DurationVar(&c.restartTimeout, "restart-timeout", 0, "How long the restart may take before the bench gives up (0: 5m plus 100ms per token).")
	flag.StringVar(&c.managerArgs, "manager-args", "", "Extra manager flags, space separated.")
	flag.StringVar(&c.managerBin, "manager-bin", "", "A manager binary to measure instead of building bin/manager from this tree (such as one built from an earlier commit).")
	flag.Parse()
	if c.n < 1 || c.namespaces < 1 || c.workers < 1 || c.unrelated < 0 || c.unrelatedSize < 0 {
		fmt.Fprintln(os.Stderr, "bench: -n, -namespaces and -workers must be positive, -unrelated and -unrelated-size not negative")
		os.Exit(2)
	}
	switch *provider {
	case "amocrm":
		c.provider = tokensv1alpha1.ProviderAmoCRM
	case "facebook":
		c.provider = tokensv1alpha1.ProviderFacebook
	default:
		fmt.Fprintf(os.Stderr, "bench: -provider must be amocrm or facebook, got %q\n", *provider)
		os.Exit(2)
	}
	if c.timeout == 0 {
		c.timeout = 10*time.Minute + time.Duration(c.n)*300*time.Millisecond
	}
	if c.restartTimeout == 0 {
		c.restartTimeout = 5*time.Minute + time.Duration(c.n)*100*time.Millisecond
	}
	os.Exit(realMain(c))
}

func realMain(c config) int {
	logf.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigc
		devenv.Say("\ninterrupted: stopping (again to kill everything at once)")
		cancel()
		<-sigc
		devenv.KillAll()
	}()
	b := &bench{cfg: c}
	err := b.run(ctx)
	b.cleanup()
	if err != nil {
		devenv.Say("\nbench failed: %v", err)
		return 1
	}
	return 0
}

// token is one ManagedToken of the bench.
type token struct{ ns, name string }

func (t token) key() string         { return t.ns + "/" + t.name }
func (t token) credentials() string { return t.name + "-creds" }
func (t token) output() string      { return t.name + "-token" }

type bench struct {
	cfg       config
	root, dir string
	cp        *devenv.ControlPlane
	sandbox   *devenv.Child
	st        *state.State
	mgr       *devenv.Child
	cleanups  []func()

	managerKubeconfig, auditLog string
	metricsAddr, probeAddr      string
	driverCfg                   *rest.Config
	cl                          client.Client
	tokens                      []token
	track                       *tracker
	res                         results
}

func (b *bench) onCleanup(f func()) { b.cleanups = append(b.cleanups, f) }

func (b *bench) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}

func (b *bench) run(ctx context.Context) error {
	var err error
	if b.root, err = devenv.RepoRoot(); err != nil {
		return err
	}
	b.dir = filepath.Join(b.root, ".bench")
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return err
	}
	assets, err := devenv.Assets(ctx, b.root)
	if err != nil {
		return err
	}
	builds := [][2]string{{"bin/tokenkeeper-sandbox", "./hack/sandbox"}}
	if b.cfg.managerBin == "" {
		builds = append(builds, [2]string{"bin/manager", "./cmd"})
		b.cfg.managerBin = filepath.Join(b.root, "bin", "manager")
	}
	devenv.Say("==> building %d binaries", len(builds))
	for _, x := range builds {
		if err := devenv.GoBuild(ctx, b.root, x[0], x[1]); err != nil {
			return err
		}
	}
	if err := b.startControlPlane(ctx, assets); err != nil {
		return err
	}
	// Access tokens live a day, system-user tokens 3 days: nothing falls
	// due by itself during the bench.
	mint := "--amocrm-refresh-tokens"
	if b.cfg.provider == tokensv1alpha1.ProviderFacebook {
		mint = "--facebook-system-user-tokens"
	}
	devenv.Say("==> starting the sandbox providers (%s %d)", mint, b.cfg.n)
	b.sandbox, b.st, err = devenv.StartSandbox(ctx, b.root, b.dir, "--access-token-ttl", "24h", mint, fmt.Sprint(b.cfg.n))
	if b.sandbox != nil {
		sb := b.sandbox
		b.onCleanup(func() { sb.Stop(10 * time.Second) })
	}
	if err != nil {
		return err
	}
	// The tracker's watch ends before the control plane stops (cleanups
	// run in reverse): an open watch held kube-apiserver's shutdown until
	// it was killed 30 s later.
	trackCtx, stopTracker := context.WithCancel(ctx)
	b.onCleanup(stopTracker)
	if b.track, err = startTracker(trackCtx, b.driverCfg); err != nil {
		return err
	}
	if err := b.startManager(ctx, "manager.log"); err != nil {
		return err
	}
	b.res.rssStart, _ = readRSS(b.mgr.Pid())
	for _, phase := range []func(context.Context) error{b.sync, b.idle, b.scrape, b.memory, b.restart, b.baseline} {
		if err := phase(ctx); err != nil {
			return err
		}
	}
	reqs, err := readAuditFile(b.auditLog)
	if err != nil {
		return err
	}
	b.res.requests = reqs
	b.res.print(os.Stdout, b.cfg)
	return nil
}

func (b *bench) startControlPlane(ctx context.Context, assets string) error {
	devenv.Say("==> starting the control plane (kube-apiserver with an audit log of the manager's requests, etcd)")
	policy := filepath.Join(b.dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return err
	}
	b.auditLog = filepath.Join(b.dir, "audit.log")
	_ = os.Remove(b.auditLog)
	cp, err := devenv.StartControlPlane(ctx, b.root, assets, filepath.Join(b.dir, "controlplane.log"), func(a *envtest.APIServer) {
		a.Configure().Set("audit-policy-file", policy).Set("audit-log-path", b.auditLog).Set("audit-log-maxbackup", "0")
	})
	if err != nil {
		return err
	}
	b.cp = cp
	b.onCleanup(func() {
		devenv.Say("    stopping the control plane")
		if err := cp.Stop(); err != nil {
			devenv.Say("    stopping the control plane: %v", err)
		}
	})
	b.managerKubeconfig = filepath.Join(b.dir, "manager.kubeconfig")
	if _, err := cp.AddAdmin(managerUser, b.managerKubeconfig); err != nil {
		return err
	}
	if b.driverCfg, err = cp.AddAdmin(driverUser, filepath.Join(b.dir, "kubeconfig")); err != nil {
		return err
	}
	// The driver is not what is measured: it may go fast.
	b.driverCfg.QPS, b.driverCfg.Burst = 500, 1000
	b.cl, err = client.New(b.driverCfg, client.Options{Scheme: scheme})
	return err
}

func (b *bench) startManager(ctx context.Context, logName string) error {
	var err error
	if b.metricsAddr, err = devenv.FreeAddr(); err != nil {
		return err
	}
	if b.probeAddr, err = devenv.FreeAddr(); err != nil {
		return err
	}
	args := []string{
		"--kubeconfig", b.managerKubeconfig,
		"--amocrm-url", b.st.AmoCRMURL,
		"--facebook-url", b.st.FacebookURL,
		"--metrics-bind-address", b.metricsAddr,
		"--health-probe-bind-address", b.probeAddr,
		"--kube-api-qps", fmt.Sprint(b.cfg.qps),
		"--kube-api-burst", fmt.Sprint(b.cfg.burst),
		"--max-concurrent-reconciles", fmt.Sprint(b.cfg.workers),
		// V(1) logs each token's "decided" line: how the restart counts
		// the tokens it examined. Development mode turns off zap's
		// production sampling (100 identical lines a second, then one in
		// 100), which would hide most of them once reconciles run faster
		// than that; the JSON encoder keeps the production field names.
		"--zap-log-level=debug",
		"--zap-devel=true",
		"--zap-encoder=json",
	}
	args = append(args, strings.Fields(b.cfg.managerArgs)...)
	m, err := devenv.StartChild("manager", b.cfg.managerBin, args, filepath.Join(b.dir, logName), b.root)
	if err != nil {
		return err
	}
	b.mgr = m
	b.onCleanup(func() { m.Stop(30 * time.Second) })
	start := time.Now()
	if err := devenv.WaitReady(ctx, m, "http://"+b.probeAddr+"/readyz", 90*time.Second); err != nil {
		return err
	}
	devenv.Say("    manager ready in %s (pid %d, log .bench/%s)", time.Since(start).Round(100*time.Millisecond), m.Pid(), logName)
	return nil
}

func (b *bench) stopManager() {
	if b.mgr != nil {
		b.mgr.Stop(30 * time.Second)
	}
}

// sync creates the tokens and waits until all are Ready.
func (b *bench) sync(ctx context.Context) error {
	n := b.cfg.n
	devenv.Say("==> sync: creating %d credentials Secrets, then %d ManagedTokens in %d namespaces", n, n, b.cfg.namespaces)
	for i := range b.cfg.namespaces {
		if err := b.createNamespace(ctx, fmt.Sprintf("bench-%d", i)); err != nil {
			return err
		}
	}
	b.tokens = make([]token, n)
	for i := range n {
		b.tokens[i] = token{ns: fmt.Sprintf("bench-%d", i%b.cfg.namespaces), name: fmt.Sprintf("bt-%05d", i)}
	}
	creds, err := b.credentials(n)
	if err != nil {
		return err
	}
	if err := parallel(ctx, n, 16, func(i int) error {
		t := b.tokens[i]
		return b.cl.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: t.ns, Name: t.credentials()},
			StringData: creds(i),
		})
	}); err != nil {
		return fmt.Errorf("creating credentials Secrets: %w", err)
	}
	created := make([]time.Time, n)
	b.res.applyStart = time.Now()
	if err := parallel(ctx, n, 16, func(i int) error {
		created[i] = time.Now()
		return b.cl.Create(ctx, b.managedToken(b.tokens[i], b.tokens[i].ns))
	}); err != nil {
		return fmt.Errorf("creating ManagedTokens: %w", err)
	}
	devenv.Say("    created in %s; waiting for all to be Ready (progress every 15s)", time.Since(b.res.applyStart).Round(100*time.Millisecond))
	deadline := time.Now().Add(b.cfg.timeout)
	lastSay := time.Now()
	for {
		ready := b.track.readyCount(b.tokens)
		if ready == n {
			break
		}
		if b.mgr.Exited() {
			return fmt.Errorf("the manager exited (%s); see %s", b.mgr.ExitErr(), b.mgr.LogPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d ManagedTokens Ready after %s (-timeout)", ready, n, b.cfg.timeout)
		}
		if time.Since(lastSay) >= 15*time.Second {
			devenv.Say("    %d/%d Ready after %s", ready, n, time.Since(b.res.applyStart).Round(time.Second))
			lastSay = time.Now()
		}
		if err := devenv.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	b.res.latencies = make([]time.Duration, n)
	for i, t := range b.tokens {
		at := b.track.readyAt(t.key())
		b.res.allReady = maxTime(b.res.allReady, at)
		b.res.latencies[i] = at.Sub(created[i])
	}
	devenv.Say("    all %d Ready %s after apply", n, b.res.allReady.Sub(b.res.applyStart).Round(100*time.Millisecond))
	if err := b.waitQuiet(ctx); err != nil {
		return err
	}
	b.res.syncEnd = time.Now()
	b.res.syncCalls, _ = b.providerCalls(ctx)
	return nil
}

// credentials returns the data of the i-th credentials Secret, from what
// the sandbox minted.
func (b *bench) credentials(n int) (func(i int) map[string]string, error) {
	c := b.st.Credentials
	if b.cfg.provider == tokensv1alpha1.ProviderFacebook {
		if len(c.FacebookSystemUserTokens) < n {
			return nil, fmt.Errorf("the sandbox minted %d system-user tokens, want %d", len(c.FacebookSystemUserTokens), n)
		}
		return func(i int) map[string]string {
			app := c.FacebookSystemUserExpiring
			app.AccessToken = c.FacebookSystemUserTokens[i]
			return app.Secret()
		}, nil
	}
	if len(c.AmoCRMRefreshTokens) < n {
		return nil, fmt.Errorf("the sandbox minted %d refresh tokens, want %d", len(c.AmoCRMRefreshTokens), n)
	}
	return func(i int) map[string]string {
		amo := c.AmoCRM
		amo.RefreshToken = c.AmoCRMRefreshTokens[i]
		return amo.Secret()
	}, nil
}

func (b *bench) managedToken(t token, ns string) *tokensv1alpha1.ManagedToken {
	mt := &tokensv1alpha1.ManagedToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: t.name},
		Spec: tokensv1alpha1.ManagedTokenSpec{
			Provider:             b.cfg.provider,
			CredentialsSecretRef: tokensv1alpha1.SecretReference{Name: t.credentials()},
			SecretName:           t.output(),
		},
	}
	if b.cfg.provider == tokensv1alpha1.ProviderAmoCRM {
		// One AmoCRM account per token, as in real use: the manager
		// limits calls per account (7 per second), which one shared
		// account would make the bottleneck.
		mt.Spec.AmoCRM = &tokensv1alpha1.AmoCRMSpec{Domain: t.name + ".amocrm.ru", RedirectURI: b.st.Credentials.AmoCRM.RedirectURI}
	}
	return mt
}

func (b *bench) createNamespace(ctx context.Context, name string) error {
	return b.cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
}

// idle counts what the manager does while nothing changes.
func (b *bench) idle(ctx context.Context) error {
	devenv.Say("==> idle for %s", b.cfg.idle)
	before, err := b.providerCalls(ctx)
	if err != nil {
		return err
	}
	b.res.idleStart = time.Now()
	if err := devenv.Sleep(ctx, b.cfg.idle); err != nil {
		return err
	}
	b.res.idleEnd = time.Now()
	after, err := b.providerCalls(ctx)
	if err != nil {
		return err
	}
	b.res.idleCalls = after.minus(before)
	return nil
}

// scrape times one GET /metrics (after a first one, which may warm up).
func (b *bench) scrape(ctx context.Context) error {
	devenv.Say("==> scraping /metrics")
	for range 2 {
		d, size, err := scrapeMetrics(ctx, "http://"+b.metricsAddr+"/metrics")
		if err != nil {
			return err
		}
		b.res.scrapeTime, b.res.scrapeBytes = d, size
	}
	return nil
}

// memory measures the manager's RSS before and after unrelated Secrets
// appear in a namespace that holds no ManagedToken.
func (b *bench) memory(ctx context.Context) error {
	var err error
	if b.res.rssBefore, err = readRSS(b.mgr.Pid()); err != nil {
		return err
	}
	devenv.Say("==> memory: creating %d unrelated Secrets of %d bytes in namespace %s", b.cfg.unrelated, b.cfg.unrelatedSize, unrelatedNS)
	if err := b.createNamespace(ctx, unrelatedNS); err != nil {
		return err
	}
	blob := make([]byte, b.cfg.unrelatedSize)
	for i := range blob {
		blob[i] = byte('a' + i%26)
	}
	if err := parallel(ctx, b.cfg.unrelated, 16, func(i int) error {
		return b.cl.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: unrelatedNS, Name: fmt.Sprintf("unrelated-%05d", i)},
			Data:       map[string][]byte{"blob": blob},
		})
	}); err != nil {
		return fmt.Errorf("creating unrelated Secrets: %w", err)
	}
	// Let watches deliver and the Go runtime settle.
	if err := devenv.Sleep(ctx, 20*time.Second); err != nil {
		return err
	}
	b.res.rssAfter, err = readRSS(b.mgr.Pid())
	return err
}

// restart stops the manager, starts it again and makes one token due as
// soon as the new manager is ready.
func (b *bench) restart(ctx context.Context) error {
	devenv.Say("==> restart: stopping the manager, starting it again, then requesting a refresh of one token")
	before, err := b.providerCalls(ctx)
	if err != nil {
		return err
	}
	b.stopManager()
	b.res.restartStart = time.Now()
	if err := b.startManager(ctx, "manager-restart.log"); err != nil {
		return err
	}
	// The token the informers list last (by namespace, then name), so it
	// is the last in line if the manager works in list order.
	due := b.tokens[0]
	for _, t := range b.tokens {
		if t.key() > due.key() {
			due = t
		}
	}
	b.res.dueToken = due
	value := time.Now().UTC().Format(time.RFC3339Nano)
	mt := &tokensv1alpha1.ManagedToken{}
	if err := b.cl.Get(ctx, client.ObjectKey{Namespace: due.ns, Name: due.name}, mt); err != nil {
		return err
	}
	patch := client.MergeFrom(mt.DeepCopy())
	if mt.Annotations == nil {
		mt.Annotations = map[string]string{}
	}
	mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation] = value
	if err := b.cl.Patch(ctx, mt, patch); err != nil {
		return err
	}
	b.res.madeDue = time.Now()

	examined := newDecisionCounter(b.mgr.LogPath)
	deadline := time.Now().Add(b.cfg.restartTimeout)
	for b.res.allExamined.IsZero() || b.res.dueRefreshed.IsZero() {
		if err := examined.read(); err != nil {
			return err
		}
		now := time.Now()
		if b.res.allExamined.IsZero() && examined.count(b.tokens) == len(b.tokens) {
			b.res.allExamined = now
		}
		if b.res.dueRefreshed.IsZero() && b.track.handled(due.key()) == value {
			b.res.dueRefreshed = now
		}
		if b.mgr.Exited() {
			return fmt.Errorf("the manager exited (%s); see %s", b.mgr.ExitErr(), b.mgr.LogPath)
		}
		if now.After(deadline) {
			return fmt.Errorf("restart: %d of %d tokens examined, due token refreshed: %t, after %s (-restart-timeout)",
				examined.count(b.tokens), len(b.tokens), !b.res.dueRefreshed.IsZero(), b.cfg.restartTimeout)
		}
		if err := devenv.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	if err := b.waitQuiet(ctx); err != nil {
		return err
	}
	b.res.restartEnd = time.Now()
	after, err := b.providerCalls(ctx)
	if err != nil {
		return err
	}
	b.res.restartCalls = after.minus(before)
	b.res.rssRestart, err = readRSS(b.mgr.Pid())
	return err
}

// providerCalls are the sandboxs call counters, by provider and operation.
func (b *bench) providerCalls(ctx context.Context) (counts, error) {
	s, err := devenv.SandboxStatus(ctx, b.st.StatusURL)
	if err != nil {
		return counts{}, err
	}
	return counts{
		"AmoCRM refresh_token": s.RefreshGrants, "AmoCRM authorization_code": s.AuthorizationCodeGrants,
		"AmoCRM account": s.AccountProbes, "Facebook exchange": s.FacebookExchanges,
		"Facebook refresh": s.FacebookRefreshes, "Facebook debug_token": s.DebugTokenCalls,
	}, nil
}

// waitQuiet waits until the manager has made no API request for quiet: the
// audit log, which records only the manager's requests, stops growing.
func (b *bench) waitQuiet(ctx context.Context) error {
	start := time.Now()
	var size int64 = -1
	changed := time.Now()
	for {
		fi, err := os.Stat(b.auditLog)
		if err != nil {
			return err
		}
		if fi.Size() != size {
			size, changed = fi.Size(), time.Now()
		} else if time.Since(changed) >= quiet {
			if d := time.Since(start); d > 2*quiet {
				devenv.Say("    the manager went quiet %s later", (d - quiet).Round(100*time.Millisecond))
			}
			return nil
		}
		if time.Since(start) > b.cfg.timeout {
			return fmt.Errorf("the manager did not go quiet within %s", b.cfg.timeout)
		}
		if err := devenv.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// parallel runs f(0..n-1) on workers goroutines; the first error stops it.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var once sync.Once
	var firstErr error
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}

var scheme = k8sruntime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tokensv1alpha1.AddToScheme(scheme))
}

// tracker follows the ManagedTokens through a watch: when each first became
// Ready, and the refresh request each has handled.
type tracker struct {
	mu      sync.Mutex
	ready   map[string]time.Time
	handles map[string]string
}

func startTracker(ctx context.Context, cfg *rest.Config) (*tracker, error) {
	t := &tracker{ready: map[string]time.Time{}, handles: map[string]string{}}
	c, err := cache.New(cfg, cache.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	inf, err := c.GetInformer(ctx, &tokensv1alpha1.ManagedToken{})
	if err != nil {
		return nil, err
	}
	see := func(obj any) {
		mt, ok := obj.(*tokensv1alpha1.ManagedToken)
		if !ok {
			return
		}
		now := time.Now()
		k := mt.Namespace + "/" + mt.Name
		t.mu.Lock()
		defer t.mu.Unlock()
		if _, seen := t.ready[k]; !seen && meta.IsStatusConditionTrue(mt.Status.Conditions, tokensv1alpha1.ConditionReady) {
			t.ready[k] = now
		}
		t.handles[k] = mt.Status.LastHandledRefreshRequest
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    see,
		UpdateFunc: func(_, o any) { see(o) },
	}); err != nil {
		return nil, err
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return nil, errors.New("the driver's ManagedToken watch did not sync")
	}
	return t, nil
}

func (t *tracker) readyCount(tokens []token) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, tk := range tokens {
		if _, ok := t.ready[tk.key()]; ok {
			n++
		}
	}
	return n
}

func (t *tracker) readyAt(k string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ready[k]
}

func (t *tracker) handled(k string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.handles[k]
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// percentile returns the p-th percentile (0..100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
