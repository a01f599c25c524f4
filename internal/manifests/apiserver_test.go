package manifests

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// warnings collects the warnings the API server sends back, such as
// PodSecurity's "would violate PodSecurity" for a workload.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// TestAPIServerAcceptsManifests sends the samples and everything config/default
// and the chart deploy to a real kube-apiserver (envtest) with the CRD
// installed, as a server-side dry run: schema, CEL rules and the "restricted"
// Pod Security Standard are checked by the server itself.
func TestAPIServerAcceptsManifests(t *testing.T) {
	t.Parallel()
	// Render first, so a missing tool fails before the control plane starts.
	samples := sampleObjects(t)
	kust := kustomize(t, "config/default")
	chart := helmTemplate(t)
	// The authorization endpoint on: its Service and Ingress, and the
	// manager with its flag and port.
	kustAuthz := kustomizeWithAuthorization(t)
	chartAuthz := helmTemplate(t, "--set", chartAuthzValues+",authorization.ingress.className=nginx")
	chartAuthzNoTLS := helmTemplate(t, "--set", chartAuthzValues+",authorization.ingress.tls.enabled=false,authorization.service.type=NodePort")
	// The NetworkPolicies on, with the endpoint.
	kustNetpol := kustomizeUncommenting(t, netpolHint, authzHint)
	chartNetpol := helmTemplate(t, "--set", chartNetpolValue+","+chartAuthzValues)

	env, cfg := startControlPlane(t)
	warn := &warnings{}
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandlerWithContext = warn
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dryRun := func(u *unstructured.Unstructured, ns string) error {
		u = u.DeepCopy()
		if ns != "" && u.GetNamespace() == "" {
			u.SetNamespace(ns)
		}
		return c.Create(ctx, u, client.DryRunAll)
	}

	t.Run("samples", func(t *testing.T) {
		for _, u := range samples {
			if err := dryRun(u, "default"); err != nil {
				t.Errorf("%s/%s: %v", u.GetKind(), u.GetName(), err)
			}
		}
		// The CEL rules are live: breaking one is refused.
		for _, tc := range []struct {
			name, msg string
			mutate    func(spec map[string]any)
		}{
			{"amocrm", "must differ from spec.credentialsSecretRef.name", func(spec map[string]any) {
				spec["secretName"] = spec["credentialsSecretRef"].(map[string]any)["name"]
			}},
			{"amocrm", "redirectURI must be an absolute https:// URL", func(spec map[string]any) {
				spec["amocrm"].(map[string]any)["redirectURI"] = "http://example.com/callback"
			}},
			{"facebook-ads", "spec.amocrm must not be set when provider is Facebook", func(spec map[string]any) {
				spec["amocrm"] = map[string]any{"domain": "example.amocrm.ru", "redirectURI": "https://example.com/cb"}
			}},
		} {
			u := samples.one(t, "ManagedToken", tc.name).DeepCopy()
			tc.mutate(u.Object["spec"].(map[string]any))
			err := dryRun(u, "default")
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("broken %s sample: want an error containing %q, got %v", tc.name, tc.msg, err)
			}
		}
	})

	t.Run("kubectl apply", func(t *testing.T) {
		// Each sample file also works on its own with plain kubectl.
		kcfg := filepath.Join(t.TempDir(), "kubeconfig")
		writeAdminKubeconfig(t, env, "admin", kcfg)
		files, err := filepath.Glob(path("config", "samples", "tokens_*.yaml"))
		if err != nil || len(files) < 2 {
			t.Fatalf("want the Facebook and AmoCRM samples in config/samples, found %q (%v)", files, err)
		}
		for _, f := range files {
			out := run(t, tool(t, "kubectl"), "--kubeconfig", kcfg, "apply", "--dry-run=server", "-n", "default", "-f", f)
			t.Logf("%s", out)
		}
		// The whole folder at once, as the README tells users to apply it.
		out := run(t, tool(t, "kubectl"), "--kubeconfig", kcfg, "apply", "--dry-run=server", "-n", "default", "-f", path("config", "samples")+string(filepath.Separator))
		t.Logf("%s", out)
	})

	t.Run("deployments", func(t *testing.T) {
		// The namespace of config/default, with its Pod Security labels, for
		// real; then every other object as a dry run.
		ns := kust.one(t, "Namespace", "").DeepCopy()
		if err := c.Create(ctx, ns); err != nil {
			t.Fatalf("creating namespace: %v", err)
		}
		warn.take()
		for name, objs := range map[string]objects{
			"config/default": kust, "chart": chart,
			"config/default with the authorization component": kustAuthz, "chart with authorization": chartAuthz,
			"chart with authorization, NodePort and no TLS":                        chartAuthzNoTLS,
			"config/default with network policies and the authorization component": kustNetpol,
			"chart with network policies and authorization":                        chartNetpol,
		} {
			for _, u := range objs {
				switch u.GetKind() {
				case "Namespace", "CustomResourceDefinition": // created above
					continue
				}
				if err := dryRun(u, ""); err != nil {
					t.Errorf("%s: %s/%s: %v", name, u.GetKind(), u.GetName(), err)
				}
				if w := warn.take(); len(w) > 0 {
					t.Errorf("%s: %s/%s: the API server warns: %q", name, u.GetKind(), u.GetName(), w)
				}
			}
		}

		// The check above is live: a pod template without the restricted
		// settings draws a PodSecurity warning in that namespace.
		bad := kust.one(t, "Deployment", "").DeepCopy()
		pod := bad.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		delete(pod, "securityContext")
		delete(pod["containers"].([]any)[0].(map[string]any), "securityContext")
		if err := dryRun(bad, ""); err != nil {
			t.Fatalf("Deployment without securityContext: %v", err)
		}
		if w := strings.Join(warn.take(), "\n"); !strings.Contains(w, "PodSecurity") {
			t.Errorf("a Deployment without securityContext drew no PodSecurity warning (got %q): is the namespace label pod-security.kubernetes.io/warn=restricted gone?", w)
		}
	})
}

// sampleObjects reads every object in config/samples. The folder has no
// kustomization.yaml on purpose, so `kubectl apply -f config/samples/` works.
func sampleObjects(t testing.TB) objects {
	t.Helper()
	files, err := filepath.Glob(path("config", "samples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var all objects
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, parseObjects(t, data)...)
	}
	return all
}

// startControlPlane starts kube-apiserver and etcd with the CRD installed,
// and stops them when the test ends.
func startControlPlane(t *testing.T) (*envtest.Environment, *rest.Config) {
	t.Helper()
	env := &envtest.Environment{
		BinaryAssetsDirectory: tool(t, "envtest"),
		CRDDirectoryPaths:     []string{path("config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	return env, cfg
}

// writeAdminKubeconfig adds a system:masters user to the control plane and
// writes its kubeconfig (certificates inlined) to file.
func writeAdminKubeconfig(t *testing.T, env *envtest.Environment, user, file string) {
	t.Helper()
	u, err := env.ControlPlane.AddUser(envtest.User{Name: user, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := u.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, file, kubeconfig)
}
