// Package manifests holds no code: only tests of the deployment manifests
// outside Go, so that `go test ./...` checks them like everything else.
//
// The tests render config/ with `kubectl kustomize` and charts/tokenkeeper
// with `helm template`, and check that both deploy the same operator (RBAC,
// manager flags, probes, Pod Security; with the authorization endpoint on,
// config/components/authorization and the chart's authorization values add
// the same flag, port, Service and Ingress), that the chart's copies of the CRD,
// the manager's ClusterRole rules, the alert rules and the dashboard are
// byte-identical to the files under config/, that the alert rules pass
// `promtool check rules` and the unit tests in
// config/prometheus/rules_test.yaml, and that the samples and rendered
// objects are accepted by a real kube-apiserver (envtest) with the CRD's CEL
// rules installed.
//
// helm and promtool are built once from the Go module proxy by
// hack/tools.sh, kube-apiserver and etcd by hack/envtest-assets.sh, and all
// are cached under ${TOKENKEEPER_CACHE:-$HOME/.cache/tokenkeeper}. A test
// fails, never skips, when a tool cannot be had.
package manifests
