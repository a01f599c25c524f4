// Command manager runs the tokenkeeper controller manager.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/controllers"
	"github.com/tokenkeeper/tokenkeeper/internal/callback"
	"github.com/tokenkeeper/tokenkeeper/internal/metrics"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook"
	"github.com/tokenkeeper/tokenkeeper/internal/version"
)

const inClusterNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func main() {
	var (
		metricsAddr, probeAddr, leaderNS string
		facebookURL, amocrmURL           string
		leaderElect, secureMetrics       bool
		qps                              float64
		burst, maxConcurrent             int
		providerTimeout, shutdownTimeout time.Duration
		orphanRetention                  time.Duration
		authzAddr, amoConsent, fbDialog  string
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "The address the metrics endpoint binds to. Use 0 to disable it.")
	flag.BoolVar(&secureMetrics, "metrics-secure", false, "Serve metrics over HTTPS (a self-signed certificate) to clients the API server authenticates and authorizes for get on /metrics; the manager then needs create on tokenreviews and subjectaccessreviews (config/components/secure-metrics).")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "The address the probe endpoint binds to.")
	flag.BoolVar(&leaderElect, "leader-elect", false, "Enable leader election, so that only one manager refreshes tokens at a time.")
	flag.StringVar(&leaderNS, "leader-election-namespace", "", "Namespace of the leader election lease. Default: the pod's namespace in a cluster, \"default\" outside one.")
	flag.StringVar(&facebookURL, "facebook-url", "https://graph.facebook.com", "Base URL of the Graph API (for egress proxies and tests); http:// only on loopback.")
	flag.StringVar(&amocrmURL, "amocrm-url", "", "Base URL for every AmoCRM call; empty means https://<spec.amocrm.domain>. http:// only on loopback.")
	// Client-side limits protect an API server that has no flow control of
	// its own. Every supported API server has API Priority and Fairness,
	// which queues or rejects (429 with Retry-After, which client-go obeys)
	// by priority level; the client-side limits are only a first brake.
	flag.Float64Var(&qps, "kube-api-qps", 50, "Client-side limit of queries per second to the Kubernetes API server, for each API client of the manager (one per resource kind, one for direct reads, one for events). Negative: no client-side limit; the API server's priority and fairness alone paces the manager.")
	flag.IntVar(&burst, "kube-api-burst", 100, "Client-side burst of queries to the Kubernetes API server, for each API client of the manager.")
	flag.IntVar(&maxConcurrent, "max-concurrent-reconciles", 4, "How many ManagedTokens are reconciled at once.")
	flag.DurationVar(&providerTimeout, "provider-timeout", 30*time.Second, "Timeout of one request to a provider.")
	flag.DurationVar(&shutdownTimeout, "graceful-shutdown-timeout", 75*time.Second, "How long a stopping manager waits for refreshes in flight to finish and be stored. Must exceed --provider-timeout by at least 15s; the pod's terminationGracePeriodSeconds must exceed it.")
	flag.DurationVar(&orphanRetention, "orphaned-state-retention", controllers.DefaultOrphanRetention, "How long the state Secret of a deleted ManagedToken is kept, so that re-creating the ManagedToken resumes from the stored token.")
	flag.StringVar(&authzAddr, "authorization-bind-address", "0", "The address the authorization endpoint (the OAuth callbacks /callback/amocrm and /callback/facebook for kubectl tokenkeeper authorize) binds to, such as :8082. \"0\" disables it. Serve it behind an Ingress that terminates TLS.")
	flag.StringVar(&amoConsent, "amocrm-consent-url", "", "The AmoCRM/Kommo OAuth page that kubectl tokenkeeper authorize sends humans to; empty means https://www.amocrm.ru/oauth, https://www.amocrm.com/oauth or https://www.kommo.com/oauth, by the account's domain.")
	flag.StringVar(&fbDialog, "facebook-dialog-url", facebook.DefaultDialogBaseURL, "Base URL of Facebook's login dialog for kubectl tokenkeeper authorize.")
	opts := zap.Options{Development: false}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	setupLog := ctrl.Log.WithName("setup")
	// An error is logged by setMemoryLimit; the manager then runs with the
	// Go runtime's default (no soft limit), as it did before.
	_, _ = setMemoryLimit(setupLog, memlimit.FromCgroup)

	if err := run(runConfig{
		metricsAddr: metricsAddr, secureMetrics: secureMetrics, probeAddr: probeAddr,
		leaderElect: leaderElect, leaderNS: leaderNS,
		facebookURL: facebookURL, amocrmURL: amocrmURL,
		qps: float32(qps), burst: burst, maxConcurrent: maxConcurrent, providerTimeout: providerTimeout,
		shutdownTimeout: shutdownTimeout, orphanRetention: orphanRetention,
		authzAddr: authzAddr, amoConsent: amoConsent, fbDialog: fbDialog,
	}); err != nil {
		setupLog.Error(err, "manager exited")
		os.Exit(1)
	}
}

type runConfig struct {
	metricsAddr, probeAddr, leaderNS string
	facebookURL, amocrmURL           string
	leaderElect, secureMetrics       bool
	qps                              float32
	burst, maxConcurrent             int
	providerTimeout, shutdownTimeout time.Duration
	orphanRetention                  time.Duration
	authzAddr, amoConsent, fbDialog  string
}

// spendMargin is the time a spend may take beyond the provider call: the
// state write that stores its outcome, with retries.
const spendMargin = 15 * time.Second

func run(c runConfig) error {
	if err := provider.ValidateBaseURL(c.facebookURL); err != nil {
		return fmt.Errorf("--facebook-url: %w", err)
	}
	if c.amocrmURL != "" {
		if err := provider.ValidateBaseURL(c.amocrmURL); err != nil {
			return fmt.Errorf("--amocrm-url: %w", err)
		}
	}
	for flagName, u := range map[string]string{"--amocrm-consent-url": c.amoConsent, "--facebook-dialog-url": c.fbDialog} {
		if u == "" {
			continue
		}
		if err := provider.ValidateBaseURL(u); err != nil {
			return fmt.Errorf("%s: %w", flagName, err)
		}
	}
	spendTimeout := c.providerTimeout + spendMargin
	if c.shutdownTimeout < spendTimeout {
		return fmt.Errorf("--graceful-shutdown-timeout (%s) must be at least --provider-timeout plus %s (%s), so a refresh in flight is stored before the manager stops", c.shutdownTimeout, spendMargin, spendTimeout)
	}
	if c.leaderNS == "" {
		c.leaderNS = defaultLeaderElectionNamespace()
	}

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tokensv1alpha1.AddToScheme(scheme))

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = c.qps, c.burst
	if c.qps < 0 {
		// client-go builds no client-side rate limiter for a negative QPS;
		// burst is unused then.
		cfg.QPS = -1
	}
	cfg.UserAgent = "tokenkeeper-manager"

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsServerOptions(c.metricsAddr, c.secureMetrics),
		HealthProbeBindAddress:  c.probeAddr,
		LeaderElection:          c.leaderElect,
		LeaderElectionID:        "tokenkeeper.tokens.tokenkeeper.dev",
		LeaderElectionNamespace: c.leaderNS,
		// Release the lease on a clean stop so a new pod takes over at once.
		LeaderElectionReleaseOnCancel: true,
		// A refresh in flight finishes and is stored before the manager
		// exits (the reconciler's spend is not cut by cancellation).
		GracefulShutdownTimeout: &c.shutdownTimeout,
		Cache:                   controllers.ManagerCacheOptions(),
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}

	creds, err := controllers.NewCredentialsWatch(mgr)
	if err != nil {
		return fmt.Errorf("creating the credentials watch: %w", err)
	}
	if err := mgr.Add(creds); err != nil {
		return err
	}

	m := metrics.New()
	if err := m.Register(mgr.GetCache()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	httpClient := provider.NewHTTPClient(c.providerTimeout)
	clk := clock.RealClock{}
	providers := map[tokensv1alpha1.Provider]provider.Provider{
		tokensv1alpha1.ProviderAmoCRM: amocrm.New(amocrm.Options{
			HTTPClient: httpClient, BaseURL: c.amocrmURL, Clock: clk, Observe: m.ObserveRequest,
		}),
		tokensv1alpha1.ProviderFacebook: facebook.New(facebook.Options{
			HTTPClient: httpClient, BaseURL: c.facebookURL, Clock: clk, Observe: m.ObserveRequest,
		}),
	}

	r := &controllers.ManagedTokenReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Scheme:    mgr.GetScheme(),
		Recorder:  mgr.GetEventRecorder("tokenkeeper"),
		Clock:     clk,
		Providers: providers,
		Metrics:   m,

		SpendTimeout:    spendTimeout,
		OrphanRetention: c.orphanRetention,
	}
	if c.authzAddr != "" && c.authzAddr != "0" {
		// One-click authorization: the reconciler publishes consent URLs,
		// and the endpoint (on every replica) takes the callbacks.
		r.ConsentURL = consentURL(c.amoConsent, c.fbDialog)
		m.InitCallbacks([]string{string(tokensv1alpha1.ProviderAmoCRM), string(tokensv1alpha1.ProviderFacebook)}, callback.Results)
		if err := mgr.Add(&callback.Endpoint{Addr: c.authzAddr, Handler: callback.NewServer(callback.Options{
			Handler: r.HandleCallback, Record: m.RecordCallback, Timeout: spendTimeout + 15*time.Second,
		})}); err != nil {
			return err
		}
	}
	ctx := ctrl.SetupSignalHandler()
	if err := r.SetupWithManager(ctx, mgr, creds, c.maxConcurrent); err != nil {
		return fmt.Errorf("setting up controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return fmt.Errorf("cache not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	v := version.Get()
	ctrl.Log.WithName("setup").Info("starting manager", "version", v.Version, "revision", v.Revision, "goVersion", v.GoVersion,
		"leaderElection", c.leaderElect, "leaderElectionNamespace", c.leaderNS)
	// Run, not mgr.Start: it also waits for a refresh in flight to be stored
	// when the manager stops because its lease was lost.
	return r.Run(ctx, mgr)
}

// consentURL builds each provider's consent page (without the state) for
// status.authorization.
func consentURL(amoBase, fbBase string) func(*tokensv1alpha1.ManagedTokenSpec, provider.Credentials) (string, error) {
	return func(spec *tokensv1alpha1.ManagedTokenSpec, creds provider.Credentials) (string, error) {
		switch spec.Provider {
		case tokensv1alpha1.ProviderAmoCRM:
			return amocrm.ConsentURL(amoBase, spec, creds.Get(amocrm.KeyClientID))
		case tokensv1alpha1.ProviderFacebook:
			return facebook.ConsentURL(fbBase, spec, creds.Get(facebook.KeyAppID))
		}
		return "", fmt.Errorf("provider %s has no consent page", spec.Provider)
	}
}

// defaultLeaderElectionNamespace is the pod's namespace in a cluster and
// "default" outside one, so --leader-elect works with a plain kubeconfig.
func defaultLeaderElectionNamespace() string {
	if b, err := os.ReadFile(inClusterNamespaceFile); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return "default"
}
