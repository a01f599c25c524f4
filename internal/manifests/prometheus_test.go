package manifests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The alerts rules.yaml must define; each has its promtool test case.
var wantAlerts = []string{
	"TokenkeeperTokenExpiringSoon",
	"TokenkeeperReauthorizationRequired",
	"TokenkeeperRefreshFailing",
	"TokenkeeperDataAccessExpiring",
	"TokenkeeperTokenNotReady",
	"TokenkeeperManualRenewalDue",
	"TokenkeeperManagerAbsent",
	"TokenkeeperAuthorizationCallbacksRefused",
}

// authorizeCommand is how the runbooks tell a person to re-authorize one
// token (kubectl tokenkeeper authorize, through the authorization endpoint).
const authorizeCommand = "kubectl tokenkeeper authorize {{ $labels.name }} -n {{ $labels.namespace }}"

// authorizeAlerts are the per-token alerts a person ends by re-authorizing
// the token: their runbooks name authorizeCommand, and those listed true,
// their descriptions too.
var authorizeAlerts = map[string]bool{
	"TokenkeeperReauthorizationRequired": true,
	"TokenkeeperManualRenewalDue":        false,
	"TokenkeeperDataAccessExpiring":      false,
	"TokenkeeperTokenExpiringSoon":       false,
}

type ruleGroups struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// allAnnotations makes ruleFile keep every annotation.
var allAnnotations = []string{"*"}

// ruleFile returns the spec (the rule groups) of config/prometheus/rules.yaml
// in promtool's format, keeping only the alerts' annotations named in keep
// (all of them with allAnnotations, none without keep).
func ruleFile(t testing.TB, keep ...string) []byte {
	t.Helper()
	spec, ok := readYAML(t, "config/prometheus/rules.yaml")["spec"].(map[string]any)
	if !ok {
		t.Fatal("config/prometheus/rules.yaml has no spec")
	}
	if !slices.Equal(keep, allAnnotations) {
		for _, g := range spec["groups"].([]any) {
			for _, r := range g.(map[string]any)["rules"].([]any) {
				a, _ := r.(map[string]any)["annotations"].(map[string]any)
				for k := range a {
					if !slices.Contains(keep, k) {
						delete(a, k)
					}
				}
				if len(a) == 0 {
					delete(r.(map[string]any), "annotations")
				}
			}
		}
	}
	out, err := yaml.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeFile(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPrometheusRules runs `promtool check rules` on the alerts, and `promtool
// test rules` on config/prometheus/rules_test.yaml (rules without
// annotations) and rules_annotations_test.yaml (rules with their summary
// and description only).
func TestPrometheusRules(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "promtool")

	full := filepath.Join(t.TempDir(), "tokenkeeper.rules.yaml")
	writeFile(t, full, ruleFile(t, allAnnotations...))
	run(t, promtool, "check", "rules", "--lint=all", "--lint-fatal", full)

	for file, keep := range map[string][]string{
		"rules_test.yaml":             nil,
		"rules_annotations_test.yaml": {"summary", "description"},
	} {
		// Each test file names rules.yaml beside it.
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "rules.yaml"), ruleFile(t, keep...))
		tests, err := os.ReadFile(path("config", "prometheus", file))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, file), tests)
		out := run(t, promtool, "test", "rules", filepath.Join(dir, file))
		t.Logf("promtool test rules %s:\n%s", file, out)
	}
}

// TestAlertRules checks what promtool does not: every alert the brief names
// is there, with a severity and the annotations an on-call person needs, and
// rules_test.yaml makes each one fire at least once.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	groups := intoLoose[ruleGroups](t, readYAML(t, "config/prometheus/rules.yaml")["spec"])
	var got []string
	for _, g := range groups.Groups {
		if g.Name != "tokenkeeper" {
			t.Errorf("rule group %q: want a single group named tokenkeeper", g.Name)
		}
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			got = append(got, r.Alert)
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			if !strings.Contains(r.Annotations["runbook"], "kubectl ") {
				t.Errorf("%s: the runbook names no kubectl command to run", r.Alert)
			}
			if r.For == "" {
				t.Errorf("%s: no for: duration; a single bad scrape would page", r.Alert)
			}
			if inDescription, ok := authorizeAlerts[r.Alert]; ok {
				if !strings.Contains(r.Annotations["runbook"], "`"+authorizeCommand+"`") {
					t.Errorf("%s: the runbook does not name `%s`", r.Alert, authorizeCommand)
				}
				if inDescription && !strings.Contains(r.Annotations["description"], "`"+authorizeCommand+"`") {
					t.Errorf("%s: the description does not name `%s`", r.Alert, authorizeCommand)
				}
				// The command's labels are the alert's.
				if !strings.Contains(r.Expr, "by (namespace, name, provider)") {
					t.Errorf("%s: the expression does not keep the namespace and name labels the command needs", r.Alert)
				}
			}
		}
	}
	sort.Strings(got)
	want := slices.Clone(wantAlerts)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("alerts %q, want %q", got, want)
	}

	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	data, err := os.ReadFile(path("config", "prometheus", "rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &tests); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tg := range tests.Tests {
		for _, c := range tg.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				fires[c.Alertname] = true
			} else {
				quiet[c.Alertname] = true
			}
		}
	}
	for _, a := range wantAlerts {
		if !fires[a] || !quiet[a] {
			t.Errorf("rules_test.yaml must check that %s both fires and stays quiet (fires: %v, quiet: %v)", a, fires[a], quiet[a])
		}
	}
}

var metricRef = regexp.MustCompile(`\btokenkeeper_[a-z_]+\b`)

// TestMetricNames checks that the alerts and the dashboard only query
// metrics that internal/metrics exports.
func TestMetricNames(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile(path("internal", "metrics", "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, m := range regexp.MustCompile(`"(tokenkeeper_[a-z_]+)"`).FindAllSubmatch(src, -1) {
		exported[string(m[1])] = true
	}
	if len(exported) == 0 {
		t.Fatal("found no metric names in internal/metrics/metrics.go")
	}
	queries := map[string][]string{}
	groups := intoLoose[ruleGroups](t, readYAML(t, "config/prometheus/rules.yaml")["spec"])
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			queries["config/prometheus/rules.yaml"] = append(queries["config/prometheus/rules.yaml"], r.Expr)
		}
	}
	queries["config/prometheus/dashboard.json"] = dashboardQueries(t)
	for f, qs := range queries {
		for _, q := range qs {
			for _, name := range metricRef.FindAllString(q, -1) {
				base := name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(name, suffix); ok && exported[b] {
						base = b
					}
				}
				if !exported[base] {
					t.Errorf("%s queries %s, which internal/metrics does not export", f, name)
				}
			}
		}
	}
}

type dashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func readDashboard(t testing.TB) *dashboard {
	t.Helper()
	data, err := os.ReadFile(path("config", "prometheus", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash dashboard
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	return &dash
}

func dashboardQueries(t testing.TB) []string {
	var qs []string
	for _, p := range readDashboard(t).Panels {
		for _, tg := range p.Targets {
			qs = append(qs, tg.Expr)
		}
	}
	return qs
}

// TestDashboard checks that dashboard.json is a Grafana dashboard whose
// queries parse as PromQL (promtool checks them as recording rules).
func TestDashboard(t *testing.T) {
	t.Parallel()
	dash := readDashboard(t)
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("dashboard.json lacks uid or title")
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$namespace", ".*", "$provider", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n- name: dashboard\n  rules:\n")
	var titles []string
	n := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		titles = append(titles, p.Title)
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			n++
			q, _ := json.Marshal(vars.Replace(tg.Expr))
			fmt.Fprintf(&rules, "  - record: dashboard:query%d\n    expr: %s\n", n, q)
		}
	}
	for _, want := range []string{"expires", "Refreshes", "Failed", "p50", "p95", "Authorization callbacks"} {
		if !slices.ContainsFunc(titles, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("no dashboard panel about %q among %q", want, titles)
		}
	}
	f := filepath.Join(t.TempDir(), "dashboard.rules.yaml")
	writeFile(t, f, []byte(rules.String()))
	run(t, tool(t, "promtool"), "check", "rules", f)
}

// TestAlertAnnotationTests checks that rules_annotations_test.yaml keeps
// checking what matters: a rendered TokenkeeperReauthorizationRequired
// description that names the authorize command with the token's own name and
// namespace, and the TokenkeeperAuthorizationCallbacksRefused text.
func TestAlertAnnotationTests(t *testing.T) {
	t.Parallel()
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []struct {
					ExpLabels      map[string]string `json:"exp_labels"`
					ExpAnnotations map[string]string `json:"exp_annotations"`
				} `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	data, err := os.ReadFile(path("config", "prometheus", "rules_annotations_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &tests); err != nil {
		t.Fatal(err)
	}
	checked := map[string]int{}
	for _, tg := range tests.Tests {
		for _, c := range tg.AlertRuleTest {
			for _, a := range c.ExpAlerts {
				if c.Alertname == "TokenkeeperReauthorizationRequired" {
					want := fmt.Sprintf("`kubectl tokenkeeper authorize %s -n %s`", a.ExpLabels["name"], a.ExpLabels["namespace"])
					if !strings.Contains(a.ExpAnnotations["description"], want) {
						t.Errorf("rules_annotations_test.yaml: %s for %v expects a description without %s", c.Alertname, a.ExpLabels, want)
					}
				}
				if a.ExpAnnotations["description"] != "" && a.ExpAnnotations["summary"] != "" {
					checked[c.Alertname]++
				}
			}
		}
	}
	for _, a := range []string{"TokenkeeperReauthorizationRequired", "TokenkeeperAuthorizationCallbacksRefused"} {
		if checked[a] == 0 {
			t.Errorf("rules_annotations_test.yaml checks no rendered summary and description of %s", a)
		}
	}
}
