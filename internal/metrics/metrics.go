// Package metrics exposes tokenkeeper's Prometheus metrics on the
// controller-runtime metrics endpoint. Per-token gauges are computed at
// scrape time from the informer cache (like cert-manager's collector), so a
// deleted ManagedToken leaves no stale series. No label ever holds a token.
package metrics

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/version"
)

var tokenLabels = []string{"namespace", "name", "provider"}

var (
	expirationDesc = prometheus.NewDesc("tokenkeeper_token_expiration_timestamp_seconds",
		"Expiry of the published access token, in Unix seconds. Absent for tokens that never expire.", tokenLabels, nil)
	dataAccessDesc = prometheus.NewDesc("tokenkeeper_token_data_access_expiration_timestamp_seconds",
		"When Facebook data access lapses, in Unix seconds.", tokenLabels, nil)
	refreshTokenDesc = prometheus.NewDesc("tokenkeeper_token_refresh_token_expiration_timestamp_seconds",
		"Estimated expiry of the rotating refresh token (AmoCRM), in Unix seconds.", tokenLabels, nil)
	nextRefreshDesc = prometheus.NewDesc("tokenkeeper_token_next_refresh_timestamp_seconds",
		"When the operator plans the next refresh, in Unix seconds.", tokenLabels, nil)
	readyDesc = prometheus.NewDesc("tokenkeeper_token_ready",
		"The Ready condition, one series per condition status (True, False, Unknown) with value 1 for the current one.",
		append(append([]string{}, tokenLabels...), "condition"), nil)
	reauthDesc = prometheus.NewDesc("tokenkeeper_token_reauthorization_required",
		"1 when a human must re-authorize this token (ReauthorizationRequired=True), else 0.", tokenLabels, nil)
	failuresDesc = prometheus.NewDesc("tokenkeeper_token_consecutive_failures",
		"Failed provider calls since the last success.", tokenLabels, nil)
)

// Metrics holds the counters and the cache-backed collector.
type Metrics struct {
	refreshes *prometheus.CounterVec
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	callbacks *prometheus.CounterVec
	buildInfo prometheus.Collector
	reader    client.Reader
}

// New creates the metrics; Register exposes them.
func New() *Metrics {
	return &Metrics{
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_refresh_total",
			Help: "Token refreshes and bootstraps by provider and result (success, or the failure kind: Transient, Throttled, Reauthorize, Configuration, Blocked, TokenRejected).",
		}, []string{"provider", "result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_provider_requests_total",
			Help: "HTTP requests to providers by operation and HTTP status code (\"error\" when no response arrived).",
		}, []string{"provider", "operation", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tokenkeeper_provider_request_duration_seconds",
			Help:    "Duration of HTTP requests to providers.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"provider", "operation"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_authorization_callbacks_total",
			Help: "Requests to the authorization endpoint's OAuth callbacks by provider and result: accepted, or why one was refused (MissingState, UnknownState, Expired, Replayed, RefererNotAllowed, ConsentDenied, ProviderError, Unsolicited, Malformed, RateLimited, NotStored).",
		}, []string{"provider", "result"}),
		buildInfo: newBuildInfo(version.Get()),
	}
}

// newBuildInfo is tokenkeeper_build_info: always 1, with the build's
// version, revision and Go version as labels (the Prometheus convention, as
// in go_build_info), so dashboards and alerts can tell releases apart.
func newBuildInfo(i version.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tokenkeeper_build_info",
		Help:        "Always 1; the labels tell the manager's version, source revision and Go version.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Revision, "goversion": i.GoVersion},
	})
	g.Set(1)
	return g
}

// Register adds the metrics to controller-runtime's registry, with reader
// (the manager's cache) as the source of the per-token gauges.
func (m *Metrics) Register(reader client.Reader) error {
	return m.RegisterWith(crmetrics.Registry, reader)
}

// RegisterWith registers on reg (tests use a fresh registry).
func (m *Metrics) RegisterWith(reg prometheus.Registerer, reader client.Reader) error {
	m.reader = reader
	for _, c := range []prometheus.Collector{m.refreshes, m.requests, m.duration, m.callbacks, m.buildInfo, &tokenCollector{m: m}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// RecordRefresh counts one refresh or bootstrap.
func (m *Metrics) RecordRefresh(provider, result string) {
	m.refreshes.WithLabelValues(provider, result).Inc()
}

// InitCallbacks creates the callback series at 0, so that increase() in
// alerts sees the first refusal after a restart.
func (m *Metrics) InitCallbacks(providers, results []string) {
	for _, p := range providers {
		for _, r := range results {
			m.callbacks.WithLabelValues(p, r)
		}
	}
}

// RecordCallback counts one request to an OAuth callback.
func (m *Metrics) RecordCallback(provider, result string) {
	m.callbacks.WithLabelValues(provider, result).Inc()
}

// ObserveRequest records one provider HTTP request; it matches
// provider.RequestObserver.
func (m *Metrics) ObserveRequest(provider, operation string, code int, elapsed time.Duration) {
	c := "error"
	if code > 0 {
		c = strconv.Itoa(code)
	}
	m.requests.WithLabelValues(provider, operation, c).Inc()
	m.duration.WithLabelValues(provider, operation).Observe(elapsed.Seconds())
}

type tokenCollector struct{ m *Metrics }

func (c *tokenCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{expirationDesc, dataAccessDesc, refreshTokenDesc, nextRefreshDesc, readyDesc, reauthDesc, failuresDesc} {
		ch <- d
	}
}

func (c *tokenCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.reader == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var list tokensv1alpha1.ManagedTokenList
	// The collector only reads: list the cache's own objects, without a deep
	// copy of every ManagedToken per scrape. Nothing here may modify them.
	if err := c.m.reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return
	}
	for i := range list.Items {
		collectToken(ch, &list.Items[i])
	}
}

func collectToken(ch chan<- prometheus.Metric, mt *tokensv1alpha1.ManagedToken) {
	lv := []string{mt.Namespace, mt.Name, string(mt.Spec.Provider)}
	st := &mt.Status
	ts := func(d *prometheus.Desc, t *metav1.Time) {
		if t != nil {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(t.Unix()), lv...)
		}
	}
	ts(expirationDesc, st.ExpirationTimestamp)
	ts(dataAccessDesc, st.DataAccessExpirationTimestamp)
	ts(refreshTokenDesc, st.RefreshTokenExpirationTimestamp)
	ts(nextRefreshDesc, st.NextRefreshTime)

	current := "Unknown"
	if c := meta.FindStatusCondition(st.Conditions, tokensv1alpha1.ConditionReady); c != nil {
		current = string(c.Status)
	}
	for _, s := range []string{"True", "False", "Unknown"} {
		v := 0.0
		if strings.EqualFold(s, current) {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, v, append(lv, s)...)
	}
	reauth := 0.0
	if meta.IsStatusConditionTrue(st.Conditions, tokensv1alpha1.ConditionReauthorizationRequired) {
		reauth = 1
	}
	ch <- prometheus.MustNewConstMetric(reauthDesc, prometheus.GaugeValue, reauth, lv...)
	ch <- prometheus.MustNewConstMetric(failuresDesc, prometheus.GaugeValue, float64(st.ConsecutiveFailures), lv...)
}
