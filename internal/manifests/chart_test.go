package manifests

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// copies maps each file the chart carries a copy of to its source under
// config/. `make manifests` refreshes them.
var copies = map[string]string{
	"charts/tokenkeeper/crds/tokens.tokenkeeper.dev_managedtokens.yaml": "config/crd/bases/tokens.tokenkeeper.dev_managedtokens.yaml",
	"charts/tokenkeeper/files/manager-role.yaml":                        "config/rbac/role.yaml",
	"charts/tokenkeeper/files/rules.yaml":                               "config/prometheus/rules.yaml",
	"charts/tokenkeeper/files/dashboard.json":                           "config/prometheus/dashboard.json",
}

func TestChartCopiesInSync(t *testing.T) {
	t.Parallel()
	for dst, src := range copies {
		want, err := os.ReadFile(path(src))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path(dst))
		if err != nil {
			t.Errorf("%s: %v; run `make manifests` (or: cp %s %s)", dst, err, src, dst)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s: run `make manifests` (or: cp %s %s)", dst, src, src, dst)
		}
	}
}

func TestHelmLint(t *testing.T) {
	t.Parallel()
	helm := tool(t, "helm")
	run(t, helm, "lint", "--strict", path("charts", "tokenkeeper"))
	run(t, helm, "lint", "--strict", path("charts", "tokenkeeper"),
		"--set", "metrics.serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true")
	run(t, helm, "lint", "--strict", path("charts", "tokenkeeper"), "--set", chartAuthzValues)

	// Two active managers would refresh the same tokens.
	out, err := runErr(helm, "template", releaseName, path("charts", "tokenkeeper"),
		"--set", "replicaCount=2,leaderElection.enabled=false")
	if err == nil || !strings.Contains(err.Error(), "leaderElection.enabled") {
		t.Errorf("replicaCount=2 without leader election: want a template error naming leaderElection.enabled, got %v\n%s", err, out)
	}
}

// TestChartMatchesKustomize checks that the chart with its default values
// deploys the same operator as config/default.
func TestChartMatchesKustomize(t *testing.T) {
	t.Parallel()
	chart := helmTemplate(t)
	kust := kustomize(t, "config/default")

	for _, k := range []string{"ServiceMonitor", "PrometheusRule", "ConfigMap"} {
		if n := len(chart.all(k)); n != 0 {
			t.Errorf("default values render %d %s; want none", n, k)
		}
	}
	checkSameOperator(t, chart, kust, "config/default")
}

// checkSameOperator checks that a rendered chart and a kustomize rendering
// (config/default, or a release's install.yaml, named kustName in messages)
// deploy the same operator: RBAC rules and bindings, manager args, probes,
// resources, security contexts and the metrics Service.
func checkSameOperator(t *testing.T, chart, kust objects, kustName string) {
	t.Helper()
	t.Run("rbac", func(t *testing.T) {
		role := into[rbacv1.ClusterRole](t, readYAML(t, "config/rbac/role.yaml"))
		chartRole := into[rbacv1.ClusterRole](t, chart.one(t, "ClusterRole", "-manager").Object)
		kustRole := into[rbacv1.ClusterRole](t, kust.one(t, "ClusterRole", "manager-role").Object)
		equalYAML(t, "chart manager ClusterRole rules and config/rbac/role.yaml rules", chartRole.Rules, role.Rules)
		equalYAML(t, "chart and kustomize manager ClusterRole rules", chartRole.Rules, kustRole.Rules)

		for chartName, kustName := range map[string]string{
			"-managedtoken-editor": "managedtoken-editor-role",
			"-managedtoken-viewer": "managedtoken-viewer-role",
		} {
			c := into[rbacv1.ClusterRole](t, chart.one(t, "ClusterRole", chartName).Object)
			k := into[rbacv1.ClusterRole](t, kust.one(t, "ClusterRole", kustName).Object)
			equalYAML(t, chartName+" rules", c.Rules, k.Rules)
			for l, v := range k.Labels {
				if strings.HasPrefix(l, "rbac.authorization.k8s.io/") && c.Labels[l] != v {
					t.Errorf("chart ClusterRole %s: label %s=%q, want %q", c.Name, l, c.Labels[l], v)
				}
			}
		}

		cle := into[rbacv1.Role](t, chart.one(t, "Role", "-leader-election").Object)
		kle := into[rbacv1.Role](t, kust.one(t, "Role", "leader-election-role").Object)
		equalYAML(t, "leader election Role rules", cle.Rules, kle.Rules)

		dep := deploymentOf(t, chart)
		sa := dep.Spec.Template.Spec.ServiceAccountName
		chart.one(t, "ServiceAccount", sa)
		crb := into[rbacv1.ClusterRoleBinding](t, chart.one(t, "ClusterRoleBinding", "-manager").Object)
		checkBinding(t, crb.RoleRef, crb.Subjects, chartRole.Name, sa, managerNamespace)
		rb := into[rbacv1.RoleBinding](t, chart.one(t, "RoleBinding", "-leader-election").Object)
		checkBinding(t, rb.RoleRef, rb.Subjects, cle.Name, sa, managerNamespace)
		if cle.Namespace != managerNamespace || rb.Namespace != managerNamespace {
			t.Errorf("leader election Role/RoleBinding in %q/%q, want the release namespace %q", cle.Namespace, rb.Namespace, managerNamespace)
		}
	})

	t.Run("manager", func(t *testing.T) {
		cd, kd := deploymentOf(t, chart), deploymentOf(t, kust)
		cc, kc := managerContainer(t, cd), managerContainer(t, kd)

		// The chart passes the values-driven flags explicitly; with default
		// values they must be the manager's own defaults (cmd/main.go), and
		// the other flags must be exactly config/default's.
		valuesDriven := map[string]string{}
		for _, f := range []string{"kube-api-qps", "kube-api-burst", "max-concurrent-reconciles"} {
			valuesDriven["--"+f+"="+flagDefault(t, f)] = f
		}
		var rest []string
		for _, a := range cc.Args {
			if _, ok := valuesDriven[a]; ok {
				delete(valuesDriven, a)
				continue
			}
			rest = append(rest, a)
		}
		for a := range valuesDriven {
			t.Errorf("chart args %q lack %s (the default of cmd/main.go)", cc.Args, a)
		}
		slices.Sort(rest)
		want := slices.Clone(kc.Args)
		slices.Sort(want)
		if !slices.Equal(rest, want) {
			t.Errorf("chart args (less kube-api and concurrency flags) %q, %s args %q", rest, kustName, want)
		}
		for _, a := range []string{"--leader-elect", "--health-probe-bind-address=:8081", "--metrics-bind-address=:8080"} {
			if !slices.Contains(kc.Args, a) {
				t.Errorf("%s args %q lack %s", kustName, kc.Args, a)
			}
		}

		equalYAML(t, "command", cc.Command, kc.Command)
		equalYAML(t, "container ports", cc.Ports, kc.Ports)
		equalYAML(t, "liveness probe", cc.LivenessProbe, kc.LivenessProbe)
		equalYAML(t, "readiness probe", cc.ReadinessProbe, kc.ReadinessProbe)
		equalYAML(t, "resources", cc.Resources, kc.Resources)
		equalYAML(t, "container securityContext", cc.SecurityContext, kc.SecurityContext)
		equalYAML(t, "pod securityContext", cd.Spec.Template.Spec.SecurityContext, kd.Spec.Template.Spec.SecurityContext)
		if *cd.Spec.Replicas != *kd.Spec.Replicas {
			t.Errorf("replicas: chart %d, %s %d", *cd.Spec.Replicas, kustName, *kd.Spec.Replicas)
		}
		for name, d := range map[string]*appsv1.Deployment{"chart": cd, kustName: kd} {
			checkManagerPod(t, name, d)
		}
	})

	t.Run("metrics service", func(t *testing.T) {
		for name, objs := range map[string]objects{"chart": chart, kustName: kust} {
			checkMetricsService(t, name, metricsService(t, objs), deploymentOf(t, objs))
		}
	})
}

// TestChartMonitoring renders the chart with the ServiceMonitor, the
// PrometheusRule and the dashboard ConfigMap enabled.
func TestChartMonitoring(t *testing.T) {
	t.Parallel()
	chart := helmTemplate(t, "--set",
		"metrics.serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true,"+
			"metrics.serviceMonitor.labels.release=prom,prometheusRule.labels.release=prom")

	rule := chart.one(t, "PrometheusRule", "")
	want := readYAML(t, "config/prometheus/rules.yaml")
	equalYAML(t, "chart PrometheusRule spec and config/prometheus/rules.yaml spec", rule.Object["spec"], want["spec"])
	if rule.GetLabels()["release"] != "prom" || rule.GetNamespace() != managerNamespace {
		t.Errorf("PrometheusRule labels %v namespace %q: want release=prom in %s", rule.GetLabels(), rule.GetNamespace(), managerNamespace)
	}

	svc := into[corev1.Service](t, chart.one(t, "Service", "metrics").Object)
	checkServiceMonitor(t, "chart", chart.one(t, "ServiceMonitor", "").Object, svc)
	if chart.one(t, "ServiceMonitor", "").GetLabels()["release"] != "prom" {
		t.Errorf("ServiceMonitor lacks metrics.serviceMonitor.labels")
	}

	cm := into[corev1.ConfigMap](t, chart.one(t, "ConfigMap", "-dashboard").Object)
	dash, err := os.ReadFile(path("config", "prometheus", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(cm.Data["tokenkeeper.json"]) != strings.TrimSpace(string(dash)) {
		t.Errorf("dashboard ConfigMap does not hold config/prometheus/dashboard.json")
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v lack grafana_dashboard=1", cm.Labels)
	}

	// config/prometheus's ServiceMonitor finds config/default's Service the
	// same way.
	kust := kustomize(t, "config/default")
	ksvc := into[corev1.Service](t, kust.one(t, "Service", "metrics-service").Object)
	checkServiceMonitor(t, "config/prometheus", kustomize(t, "config/prometheus").one(t, "ServiceMonitor", "").Object, ksvc)
}

// TestChartValues checks that values reach the manager's flags.
func TestChartValues(t *testing.T) {
	t.Parallel()
	chart := helmTemplate(t, "--set", strings.Join([]string{
		"leaderElection.enabled=false",
		"kubeAPI.qps=80", "kubeAPI.burst=160", "maxConcurrentReconciles=8",
		"providers.facebookURL=https://fb-proxy.example.com",
		"providers.amocrmURL=https://amo-proxy.example.com",
		"providers.timeout=70s", "shutdown.gracefulShutdownTimeout=100s", "shutdown.terminationGracePeriodSeconds=120",
		"metrics.port=9090",
		"image.repository=registry.example.com/tokenkeeper", "image.tag=v1.2.3",
	}, ","), "--set-string", "extraArgs[0]=--zap-log-level=debug")
	c := managerContainer(t, deploymentOf(t, chart))
	want := []string{
		"--health-probe-bind-address=:8081", "--metrics-bind-address=:9090",
		"--kube-api-qps=80", "--kube-api-burst=160", "--max-concurrent-reconciles=8",
		"--facebook-url=https://fb-proxy.example.com", "--amocrm-url=https://amo-proxy.example.com",
		"--provider-timeout=70s", "--graceful-shutdown-timeout=100s", "--zap-log-level=debug",
	}
	if !slices.Equal(c.Args, want) {
		t.Errorf("args %q, want %q", c.Args, want)
	}
	if g := deploymentOf(t, chart).Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 120 {
		t.Errorf("terminationGracePeriodSeconds %v, want 120", g)
	}
	if c.Image != "registry.example.com/tokenkeeper:v1.2.3" {
		t.Errorf("image %q", c.Image)
	}
	if n := len(chart.all("Role")) + len(chart.all("RoleBinding")); n != 0 {
		t.Errorf("leader election disabled, yet %d Role/RoleBinding rendered", n)
	}
	svc := into[corev1.Service](t, chart.one(t, "Service", "metrics").Object)
	if svc.Spec.Ports[0].Port != 9090 || c.Ports[0].ContainerPort != 9090 {
		t.Errorf("metrics.port=9090 not applied: service %d, container %d", svc.Spec.Ports[0].Port, c.Ports[0].ContainerPort)
	}
}

func deploymentOf(t testing.TB, objs objects) *appsv1.Deployment {
	t.Helper()
	return into[appsv1.Deployment](t, objs.one(t, "Deployment", "").Object)
}

func managerContainer(t testing.TB, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	cs := d.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "manager" {
		t.Fatalf("Deployment %s: want one container named manager, got %d", d.Name, len(cs))
	}
	return &cs[0]
}

// checkManagerPod checks the probes, resources and the "restricted" Pod
// Security Standard of the manager's pod.
func checkManagerPod(t *testing.T, name string, d *appsv1.Deployment) {
	t.Helper()
	spec := d.Spec.Template.Spec
	c := spec.Containers[0]
	if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v: want runAsNonRoot and seccompProfile RuntimeDefault", name, psc)
	}
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		(sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("%s: container securityContext %+v: want allowPrivilegeEscalation false, readOnlyRootFilesystem, drop ALL", name, sc)
	}
	for probe, p := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != probe || p.HTTPGet.Port.IntValue() != 8081 {
			t.Errorf("%s: probe %s: want HTTP GET on port 8081, got %+v", name, probe, p)
		}
	}
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().String() != "10m" || req.Memory().String() != "64Mi" || lim.Cpu().String() != "500m" || lim.Memory().String() != "512Mi" {
		t.Errorf("%s: resources %+v: want requests 10m/64Mi, limits 500m/512Mi", name, c.Resources)
	}
	if !slices.Equal(c.Command, []string{"/manager"}) {
		t.Errorf("%s: command %q, want /manager", name, c.Command)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("%s: Deployment selector %v does not match its pod labels %v (%v)", name, d.Spec.Selector, d.Spec.Template.Labels, err)
	}
	if d.Spec.Template.Labels["app.kubernetes.io/name"] != "tokenkeeper" {
		t.Errorf("%s: pod labels %v lack app.kubernetes.io/name=tokenkeeper (the runbooks select by it)", name, d.Spec.Template.Labels)
	}
}

func checkMetricsService(t *testing.T, name string, svc *corev1.Service, d *appsv1.Deployment) {
	t.Helper()
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "http-metrics" || svc.Spec.Ports[0].Port != 8080 ||
		svc.Spec.Ports[0].TargetPort.String() != "http-metrics" {
		t.Errorf("%s: metrics Service ports %+v: want http-metrics 8080 -> http-metrics", name, svc.Spec.Ports)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
		t.Errorf("%s: metrics Service selector %v does not select the manager's pods %v", name, svc.Spec.Selector, d.Spec.Template.Labels)
	}
	if svc.Labels["app.kubernetes.io/name"] != "tokenkeeper" {
		t.Errorf("%s: metrics Service labels %v lack app.kubernetes.io/name=tokenkeeper (the ServiceMonitor's jobLabel)", name, svc.Labels)
	}
	found := false
	for _, p := range managerContainer(t, d).Ports {
		if p.Name == "http-metrics" && p.ContainerPort == 8080 {
			found = true
		}
	}
	if !found {
		t.Errorf("%s: manager container has no port http-metrics 8080", name)
	}
}

// checkServiceMonitor checks that a ServiceMonitor scrapes the metrics
// Service with honorLabels and job="tokenkeeper".
func checkServiceMonitor(t *testing.T, name string, sm map[string]any, svc *corev1.Service) {
	t.Helper()
	type serviceMonitor struct {
		Spec struct {
			JobLabel  string `json:"jobLabel"`
			Endpoints []struct {
				Port        string `json:"port"`
				Path        string `json:"path"`
				HonorLabels bool   `json:"honorLabels"`
			} `json:"endpoints"`
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
		} `json:"spec"`
	}
	m := intoLoose[serviceMonitor](t, sm)
	if len(m.Spec.Endpoints) != 1 || m.Spec.Endpoints[0].Port != "http-metrics" || m.Spec.Endpoints[0].Path != "/metrics" || !m.Spec.Endpoints[0].HonorLabels {
		t.Errorf("%s ServiceMonitor endpoints %+v: want port http-metrics, path /metrics, honorLabels", name, m.Spec.Endpoints)
	}
	if job := svc.Labels[m.Spec.JobLabel]; !strings.Contains(job, "tokenkeeper") {
		t.Errorf("%s ServiceMonitor jobLabel %q gives job %q; TokenkeeperManagerAbsent needs it to contain tokenkeeper", name, m.Spec.JobLabel, job)
	}
	if len(m.Spec.Selector.MatchLabels) == 0 || !labels.SelectorFromSet(m.Spec.Selector.MatchLabels).Matches(labels.Set(svc.Labels)) {
		t.Errorf("%s ServiceMonitor selector %v does not select the metrics Service (labels %v)", name, m.Spec.Selector.MatchLabels, svc.Labels)
	}
}

// flagDefault reads the default of a manager flag from cmd/main.go.
func flagDefault(t testing.TB, flag string) string {
	t.Helper()
	src, err := os.ReadFile(path("cmd", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(fmt.Sprintf(`"%s",\s*([^,]+),`, regexp.QuoteMeta(flag))).FindSubmatch(src)
	if m == nil {
		t.Fatalf("cmd/main.go defines no flag %q", flag)
	}
	return strings.TrimSpace(string(m[1]))
}

// TestMemoryLimitHoldsTenThousandTokens: the manager's memory limit, in
// config/default and in the chart, holds the 10,000 tokens that make bench
// measured (the README's Memory section) with a fifth to spare, and the
// README names the limit the manifests set.
func TestMemoryLimitHoldsTenThousandTokens(t *testing.T) {
	t.Parallel()
	const measured = 400 << 20 // manager RSS after 10,000 AmoCRM tokens synced (README)
	readme, err := os.ReadFile(path("README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, objs := range map[string]objects{"config/default": kustomize(t, "config/default"), "chart": helmTemplate(t)} {
		lim := managerContainer(t, deploymentOf(t, objs)).Resources.Limits.Memory()
		if lim.Value() < measured*6/5 {
			t.Errorf("%s: memory limit %s, want at least %d MiB (the measured %d MiB for 10,000 tokens, and a fifth more)", name, lim, measured*6/5>>20, measured>>20)
		}
		if want := "limit the manager's memory to " + lim.String(); !strings.Contains(strings.Join(strings.Fields(string(readme)), " "), want) {
			t.Errorf("%s: README does not say %q", name, want)
		}
	}
}
