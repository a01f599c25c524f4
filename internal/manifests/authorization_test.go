package manifests

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// The authorization endpoint (one-click authorization) as deployed by the
// kustomize component config/components/authorization and by the chart's
// authorization.* values.
const (
	authzFlag        = "--authorization-bind-address"
	authzPortName    = "authorization"
	authzPort        = 8082
	authzServicePort = 80
	// The placeholder host of the component's Ingress.
	authzHost = "auth.example.com"
	// The line of config/default/kustomization.yaml that turns it on.
	authzHint = "# components: [../components/authorization]"
)

// authzPaths are the callback paths the manager serves (api/v1alpha1), the
// only ones the Ingress may route.
var authzPaths = []string{tokensv1alpha1.AmoCRMCallbackPath, tokensv1alpha1.FacebookCallbackPath}

// chartAuthzValues turns the endpoint on in the chart, with the
// component's placeholder host.
const chartAuthzValues = "authorization.enabled=true,authorization.ingress.host=" + authzHost

// kustomizeWithAuthorization renders config/default as a user gets it after
// uncommenting the components: hint in its kustomization.yaml.
func kustomizeWithAuthorization(t testing.TB) objects {
	t.Helper()
	return kustomizeUncommenting(t, authzHint)
}

// kustomizeUncommenting renders config/default as a user gets it after
// uncommenting the given hint lines of its kustomization.yaml: only those
// lines change.
func kustomizeUncommenting(t testing.TB, hints ...string) objects {
	t.Helper()
	return kustomizeEdited(t, func(data []byte) []byte {
		var k map[string]any
		if err := yaml.Unmarshal(data, &k); err != nil {
			t.Fatal(err)
		}
		if _, ok := k["components"]; ok {
			t.Fatalf("config/default/kustomization.yaml lists components: the authorization endpoint must be off by default")
		}
		lines := strings.Split(string(data), "\n")
		for _, hint := range hints {
			n := 0
			for i, l := range lines {
				if strings.TrimSpace(l) == hint {
					lines[i] = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(l), "#"), " ")
					n++
				}
			}
			if n != 1 {
				t.Fatalf("config/default/kustomization.yaml: want exactly one line %q, found %d", hint, n)
			}
		}
		return []byte(strings.Join(lines, "\n"))
	})
}

// kustomizeEdited renders config/default after edit changed its
// kustomization.yaml, in a copy of config/ in a temporary folder.
func kustomizeEdited(t testing.TB, edit func([]byte) []byte) objects {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "config"), os.DirFS(path("config"))); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "config", "default", "kustomization.yaml")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, file, edit(data))
	return parseObjects(t, run(t, tool(t, "kubectl"), "kustomize", filepath.Join(dir, "config", "default")))
}

// TestKustomizeAuthorizationComponent: uncommenting the hint in
// config/default adds the flag, the port, the Service and the Ingress, and
// changes nothing else.
func TestKustomizeAuthorizationComponent(t *testing.T) {
	t.Parallel()
	base := kustomize(t, "config/default")
	checkNoAuthorization(t, "config/default", base)

	with := kustomizeWithAuthorization(t)
	svc, ing := checkAuthorization(t, "config/default with the component", with, authzHost)
	if svc.Name != "tokenkeeper-authorization" || ing.Name != "tokenkeeper-authorization" {
		t.Errorf("Service %q and Ingress %q, want both tokenkeeper-authorization", svc.Name, ing.Name)
	}
	if ing.Spec.IngressClassName != nil {
		t.Errorf("Ingress class %q: the component leaves it to the cluster's default (users patch it)", *ing.Spec.IngressClassName)
	}

	// Everything else is config/default's, byte for byte, but for the
	// manager container's args and ports.
	key := func(o objects) map[string]map[string]any {
		m := map[string]map[string]any{}
		for _, u := range o {
			m[u.GetKind()+"/"+u.GetNamespace()+"/"+u.GetName()] = u.Object
		}
		return m
	}
	b, w := key(base), key(with)
	for k := range w {
		if _, ok := b[k]; !ok && k != "Service/"+managerNamespace+"/"+svc.Name && k != "Ingress/"+managerNamespace+"/"+ing.Name {
			t.Errorf("the component adds %s", k)
		}
	}
	for k, want := range b {
		got, ok := w[k]
		if !ok {
			t.Errorf("the component removes %s", k)
			continue
		}
		if strings.HasPrefix(k, "Deployment/") {
			got = without(t, got, authzFlag+"=:8082", authzPortName)
		}
		equalYAML(t, k+" with and without the component", got, want)
	}
}

// without returns a copy of a Deployment object whose manager container
// lacks an arg and a named port.
func without(t testing.TB, dep map[string]any, arg, port string) map[string]any {
	t.Helper()
	d := parseObjects(t, mustYAML(t, dep))[0]
	c := d.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	c["args"] = slices.DeleteFunc(c["args"].([]any), func(a any) bool { return a == arg })
	c["ports"] = slices.DeleteFunc(c["ports"].([]any), func(p any) bool { return p.(map[string]any)["name"] == port })
	return d.Object
}

func mustYAML(t testing.TB, v any) []byte {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestKustomizeAuthorizationOverlay: the component also works in an overlay
// that takes config/default as a base, as its kustomization.yaml says: with
// the overlay's namespace, and names without the prefix.
func TestKustomizeAuthorizationOverlay(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rel := func(p string) string {
		r, err := filepath.Rel(dir, path(p))
		if err != nil {
			t.Fatal(err)
		}
		return filepath.ToSlash(r)
	}
	writeFile(t, filepath.Join(dir, "kustomization.yaml"), []byte(fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: %s
resources:
- %s
components:
- %s
`, managerNamespace, rel("config/default"), rel("config/components/authorization"))))
	objs := parseObjects(t, run(t, tool(t, "kubectl"), "kustomize", dir))
	svc, ing := checkAuthorization(t, "an overlay of config/default", objs, authzHost)
	if svc.Name != "authorization" || ing.Name != "authorization" {
		t.Errorf("Service %q and Ingress %q, want both authorization", svc.Name, ing.Name)
	}
}

// checkAuthorization checks a rendering that has the authorization endpoint
// on: the manager's flag and port, a Service that selects the manager's pods
// like the metrics Service, and an Ingress that routes exactly the two
// callback paths of host to it, with TLS. It returns the Service and the
// Ingress.
func checkAuthorization(t *testing.T, name string, objs objects, host string) (*corev1.Service, *networkingv1.Ingress) {
	t.Helper()
	dep := deploymentOf(t, objs)
	c := managerContainer(t, dep)
	var flags []string
	for _, a := range c.Args {
		if strings.HasPrefix(a, authzFlag) {
			flags = append(flags, a)
		}
	}
	if want := fmt.Sprintf("%s=:%d", authzFlag, authzPort); !slices.Equal(flags, []string{want}) {
		t.Errorf("%s: manager args %q: want %s once", name, c.Args, want)
	}
	var port *corev1.ContainerPort
	for i, p := range c.Ports {
		if p.Name == authzPortName {
			port = &c.Ports[i]
		}
	}
	if port == nil || port.ContainerPort != authzPort || port.Protocol != corev1.ProtocolTCP {
		t.Errorf("%s: manager ports %+v: want %s %d/TCP", name, c.Ports, authzPortName, authzPort)
	}

	svc := into[corev1.Service](t, objs.one(t, "Service", "authorization").Object)
	metrics := metricsService(t, objs)
	if svc.Namespace != dep.Namespace {
		t.Errorf("%s: Service %s in namespace %q, the manager in %q", name, svc.Name, svc.Namespace, dep.Namespace)
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("%s: Service %s type %q, want ClusterIP", name, svc.Name, svc.Spec.Type)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != authzPortName || svc.Spec.Ports[0].Port != authzServicePort ||
		svc.Spec.Ports[0].TargetPort.String() != authzPortName || svc.Spec.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("%s: Service %s ports %+v: want %s %d/TCP -> %s", name, svc.Name, svc.Spec.Ports, authzPortName, authzServicePort, authzPortName)
	}
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Errorf("%s: Service %s selector %v does not select the manager's pods %v", name, svc.Name, svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	equalYAML(t, name+": authorization and metrics Service selectors", svc.Spec.Selector, metrics.Spec.Selector)

	ing := into[networkingv1.Ingress](t, objs.one(t, "Ingress", "authorization").Object)
	if ing.Namespace != svc.Namespace {
		t.Errorf("%s: Ingress %s in namespace %q, its Service in %q", name, ing.Name, ing.Namespace, svc.Namespace)
	}
	if len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].Host != host || ing.Spec.Rules[0].HTTP == nil {
		t.Fatalf("%s: Ingress %s rules %+v: want one HTTP rule for host %s", name, ing.Name, ing.Spec.Rules, host)
	}
	if ing.Spec.DefaultBackend != nil {
		t.Errorf("%s: Ingress %s has a default backend: only the callback paths may reach the manager", name, ing.Name)
	}
	var paths []string
	for _, p := range ing.Spec.Rules[0].HTTP.Paths {
		paths = append(paths, p.Path)
		if p.PathType == nil || *p.PathType != networkingv1.PathTypeExact {
			t.Errorf("%s: Ingress path %s: pathType %v, want Exact", name, p.Path, p.PathType)
		}
		if b := p.Backend.Service; b == nil || b.Name != svc.Name || b.Port.Name != svc.Spec.Ports[0].Name || b.Port.Number != 0 {
			t.Errorf("%s: Ingress path %s backend %+v: want Service %s port %s", name, p.Path, p.Backend, svc.Name, svc.Spec.Ports[0].Name)
		}
	}
	if !slices.Equal(paths, authzPaths) {
		t.Errorf("%s: Ingress paths %q, want %q (api/v1alpha1's callback paths)", name, paths, authzPaths)
	}
	if len(ing.Spec.TLS) != 1 || !slices.Equal(ing.Spec.TLS[0].Hosts, []string{host}) || ing.Spec.TLS[0].SecretName == "" {
		t.Errorf("%s: Ingress TLS %+v: want one entry for %s with a secretName", name, ing.Spec.TLS, host)
	}
	return svc, ing
}

// checkNoAuthorization checks a rendering with the endpoint off: no flag,
// no port, no Service or Ingress for it.
func checkNoAuthorization(t *testing.T, name string, objs objects) {
	t.Helper()
	c := managerContainer(t, deploymentOf(t, objs))
	for _, a := range c.Args {
		if strings.HasPrefix(a, authzFlag) {
			t.Errorf("%s: the endpoint is off, yet the manager has %s", name, a)
		}
	}
	for _, p := range c.Ports {
		if p.Name == authzPortName || p.ContainerPort == authzPort {
			t.Errorf("%s: the endpoint is off, yet the manager has port %+v", name, p)
		}
	}
	if n := len(objs.all("Ingress")); n != 0 {
		t.Errorf("%s: the endpoint is off, yet %d Ingress rendered", name, n)
	}
	for _, u := range objs.all("Service") {
		if strings.Contains(u.GetName(), "authorization") {
			t.Errorf("%s: the endpoint is off, yet Service %s rendered", name, u.GetName())
		}
	}
}

// metricsService returns the one Service with a port named http-metrics.
func metricsService(t testing.TB, objs objects) *corev1.Service {
	t.Helper()
	var found []*corev1.Service
	for _, u := range objs.all("Service") {
		s := into[corev1.Service](t, u.Object)
		if slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "http-metrics" }) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one Service with a port http-metrics, found %d among %v", len(found), objs.names())
	}
	return found[0]
}

// TestChartAuthorizationMatchesKustomize: the chart with authorization
// enabled deploys the same operator as config/default with the component:
// same args and ports, Service and Ingress.
func TestChartAuthorizationMatchesKustomize(t *testing.T) {
	t.Parallel()
	chart := helmTemplate(t, "--set", chartAuthzValues)
	kust := kustomizeWithAuthorization(t)
	checkSameOperator(t, chart, kust, "config/default with the authorization component")

	csvc, cing := checkAuthorization(t, "chart", chart, authzHost)
	ksvc, king := checkAuthorization(t, "kustomize", kust, authzHost)
	if csvc.Name != ksvc.Name || cing.Name != king.Name {
		t.Errorf("chart Service %q Ingress %q, kustomize Service %q Ingress %q", csvc.Name, cing.Name, ksvc.Name, king.Name)
	}
	if csvc.Spec.Type != ksvc.Spec.Type {
		t.Errorf("Service type: chart %q, kustomize %q", csvc.Spec.Type, ksvc.Spec.Type)
	}
	equalYAML(t, "chart and kustomize authorization Service ports", csvc.Spec.Ports, ksvc.Spec.Ports)
	// Rules, paths, backends, TLS host and Secret name, (no) class.
	equalYAML(t, "chart and kustomize authorization Ingress spec", cing.Spec, king.Spec)
	if len(cing.Annotations) != 0 || len(king.Annotations) != 0 {
		t.Errorf("Ingress annotations: chart %v, kustomize %v; want none by default", cing.Annotations, king.Annotations)
	}
}

// TestChartAuthorizationOff: with authorization.enabled=false nothing of
// the endpoint appears, whatever the other authorization values.
func TestChartAuthorizationOff(t *testing.T) {
	t.Parallel()
	checkNoAuthorization(t, "chart defaults", helmTemplate(t))
	checkNoAuthorization(t, "chart with authorization.enabled=false", helmTemplate(t, "--set",
		"authorization.enabled=false,authorization.ingress.enabled=true,authorization.ingress.host="+authzHost+",authorization.port=9092"))
}

// TestChartAuthorizationValues checks that the authorization values reach
// the manager, the Service and the Ingress, and that a missing or malformed
// host is refused.
func TestChartAuthorizationValues(t *testing.T) {
	t.Parallel()
	chart := helmTemplate(t, "--set", strings.Join([]string{
		chartAuthzValues,
		"authorization.port=9092",
		"authorization.service.type=NodePort", "authorization.service.port=8080",
		"authorization.service.annotations.team=oauth",
		"authorization.ingress.className=nginx",
		"authorization.ingress.tls.secretName=my-tls",
	}, ","), "--set-string", `authorization.ingress.annotations.cert-manager\.io/cluster-issuer=letsencrypt`)
	c := managerContainer(t, deploymentOf(t, chart))
	if !slices.Contains(c.Args, authzFlag+"=:9092") {
		t.Errorf("args %q lack %s=:9092", c.Args, authzFlag)
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == authzPortName && p.ContainerPort == 9092 }) {
		t.Errorf("ports %+v lack %s 9092", c.Ports, authzPortName)
	}
	svc := into[corev1.Service](t, chart.one(t, "Service", "-authorization").Object)
	if svc.Spec.Type != corev1.ServiceTypeNodePort || svc.Spec.Ports[0].Port != 8080 || svc.Spec.Ports[0].TargetPort.String() != authzPortName ||
		svc.Annotations["team"] != "oauth" {
		t.Errorf("Service type %q ports %+v annotations %v: want NodePort, 8080 -> %s, team=oauth", svc.Spec.Type, svc.Spec.Ports, svc.Annotations, authzPortName)
	}
	ing := into[networkingv1.Ingress](t, chart.one(t, "Ingress", "-authorization").Object)
	if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
		t.Errorf("Ingress class %v, want nginx", ing.Spec.IngressClassName)
	}
	if ing.Annotations["cert-manager.io/cluster-issuer"] != "letsencrypt" {
		t.Errorf("Ingress annotations %v lack cert-manager.io/cluster-issuer=letsencrypt", ing.Annotations)
	}
	if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != "my-tls" {
		t.Errorf("Ingress TLS %+v, want secretName my-tls", ing.Spec.TLS)
	}

	// TLS ends in front of the ingress controller.
	noTLS := helmTemplate(t, "--set", chartAuthzValues+",authorization.ingress.tls.enabled=false")
	if tls := into[networkingv1.Ingress](t, noTLS.one(t, "Ingress", "-authorization").Object).Spec.TLS; len(tls) != 0 {
		t.Errorf("authorization.ingress.tls.enabled=false, yet TLS %+v", tls)
	}

	// No Ingress, and then no host needed: the Service alone.
	noIngress := helmTemplate(t, "--set", "authorization.enabled=true,authorization.ingress.enabled=false")
	if n := len(noIngress.all("Ingress")); n != 0 {
		t.Errorf("authorization.ingress.enabled=false, yet %d Ingress rendered", n)
	}
	noIngress.one(t, "Service", "-authorization")

	for _, tc := range []struct{ set, msg string }{
		{"authorization.enabled=true", "authorization.ingress.host is required"},
		{"authorization.enabled=true,authorization.ingress.host=https://auth.example.com", "must be a lowercase host name"},
		{"authorization.enabled=true,authorization.ingress.host=auth.example.com/callback", "must be a lowercase host name"},
		{"authorization.enabled=true,authorization.ingress.host=Auth.Example.com", "must be a lowercase host name"},
	} {
		out, err := runErr(tool(t, "helm"), "template", releaseName, path("charts", "tokenkeeper"), "--set", tc.set)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("--set %s: want a template error containing %q, got %v\n%s", tc.set, tc.msg, err, out)
		}
	}
}

// chartNotes renders the chart's NOTES.txt, which `helm template` leaves
// out: a copy of the chart renders it through tpl into a ConfigMap-like
// document.
func chartNotes(t testing.TB, args ...string) string {
	t.Helper()
	chart := filepath.Join(t.TempDir(), "tokenkeeper")
	if err := os.CopyFS(chart, os.DirFS(path("charts", "tokenkeeper"))); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(chart, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(chart, "files", "notes-under-test.txt"), notes)
	writeFile(t, filepath.Join(chart, "templates", "notes-under-test.yaml"),
		[]byte(`notes: {{ tpl (.Files.Get "files/notes-under-test.txt") . | toJson }}`+"\n"))
	base := []string{"template", releaseName, chart, "--namespace", managerNamespace, "--show-only", "templates/notes-under-test.yaml"}
	out := run(t, tool(t, "helm"), append(base, args...)...)
	var doc struct {
		Notes string `json:"notes"`
	}
	if err := yaml.Unmarshal(out, &doc); err != nil || doc.Notes == "" {
		t.Fatalf("rendering NOTES.txt: %v\n%s", err, out)
	}
	return doc.Notes
}

// TestChartNotes: with authorization on, the release notes print the
// redirect URIs to configure and the command to run.
func TestChartNotes(t *testing.T) {
	t.Parallel()
	command := "kubectl tokenkeeper authorize NAME -n NS"
	on := chartNotes(t, "--set", chartAuthzValues)
	for _, p := range authzPaths {
		if uri := "https://" + authzHost + p; !strings.Contains(on, uri) {
			t.Errorf("NOTES with authorization on lack the redirect URI %s:\n%s", uri, on)
		}
	}
	for _, want := range []string{command, "spec.amocrm.redirectURI", "spec.facebook.redirectURI"} {
		if !strings.Contains(on, want) {
			t.Errorf("NOTES with authorization on lack %q:\n%s", want, on)
		}
	}

	noIngress := chartNotes(t, "--set", "authorization.enabled=true,authorization.ingress.enabled=false")
	for _, want := range []string{command, "https://<your host>" + authzPaths[0], "tokenkeeper-authorization"} {
		if !strings.Contains(noIngress, want) {
			t.Errorf("NOTES without an Ingress lack %q:\n%s", want, noIngress)
		}
	}

	off := chartNotes(t)
	if strings.Contains(off, "/callback/") || strings.Contains(off, command) {
		t.Errorf("NOTES with authorization off print redirect URIs or the command:\n%s", off)
	}
	if !strings.Contains(off, "authorization.enabled=true") {
		t.Errorf("NOTES with authorization off do not say how to turn it on:\n%s", off)
	}
}
