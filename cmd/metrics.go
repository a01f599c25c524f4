package main

import (
	"crypto/tls"

	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// metricsServerOptions serves the metrics endpoint on addr. Plain HTTP by
// default; secure (--metrics-secure) serves HTTPS with a self-signed
// certificate and lets only authenticated, authorized clients scrape, as
// kubebuilder scaffolds it: the API server checks each request's bearer
// token (TokenReview) and whether its user may get the non-resource URL
// /metrics (SubjectAccessReview). The manager then needs create on both
// (config/components/secure-metrics); a scraper needs the metrics-reader
// ClusterRole (TestSecureMetricsAuthenticateAndAuthorize).
func metricsServerOptions(addr string, secure bool) metricsserver.Options {
	o := metricsserver.Options{
		BindAddress:   addr,
		SecureServing: secure,
		// HTTP/2 is off: CVE-2023-44487 and CVE-2023-39325 (rapid reset),
		// as kubebuilder's scaffold does.
		TLSOpts: []func(*tls.Config){func(t *tls.Config) { t.NextProtos = []string{"http/1.1"} }},
	}
	if secure {
		o.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return o
}
