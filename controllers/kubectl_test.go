package controllers

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubectl runs the machine's real kubectl against the test control plane.
func kubectl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl is required on PATH for these tests")
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	conf := clientcmdapi.NewConfig()
	conf.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	conf.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	conf.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	conf.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*conf, kc); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, append([]string{"--kubeconfig", kc}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kc)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestKubectlAppliesSamplesAndShowsColumns: `kubectl apply -f config/samples/`
// is accepted and `kubectl get mt` shows provider, ready, expiry, next
// refresh and age.
func TestKubectlAppliesSamplesAndShowsColumns(t *testing.T) {
	ns := newNamespace(t)
	if out, err := kubectl(t, "", "apply", "-n", ns, "-f", filepath.Join("..", "config", "samples")+string(filepath.Separator)); err != nil {
		t.Fatalf("kubectl apply -f config/samples/: %v\n%s", err, out)
	}
	out, err := kubectl(t, "", "get", "mt", "-n", ns)
	if err != nil {
		t.Fatalf("kubectl get mt: %v\n%s", err, out)
	}
	header := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "NAME") {
			header = l
		}
	}
	for _, col := range []string{"PROVIDER", "READY", "EXPIRES", "NEXT REFRESH", "AGE"} {
		if !strings.Contains(header, col) {
			t.Errorf("kubectl get mt header %q lacks %s", header, col)
		}
	}
	if !strings.Contains(out, "AmoCRM") || !strings.Contains(out, "Facebook") {
		t.Errorf("kubectl get mt does not list both samples:\n%s", out)
	}
}

func TestKubectlRefusesInvalidInput(t *testing.T) {
	ns := newNamespace(t)
	bad := `apiVersion: tokens.tokenkeeper.dev/v1alpha1
kind: ManagedToken
metadata: {name: bad, namespace: ` + ns + `}
spec:
  provider: AmoCRM
  credentialsSecretRef: {name: creds}
  secretName: creds
  refreshBefore: 0s
  checkInterval: 30s
  amocrm: {domain: x.amocrm.ru.evil.com, redirectURI: "http://x"}
`
	out, err := kubectl(t, bad, "apply", "-f", "-")
	if err == nil {
		t.Fatalf("kubectl accepted an invalid ManagedToken:\n%s", out)
	}
	for _, want := range []string{
		"spec.secretName: Invalid value", "must differ from spec.credentialsSecretRef.name",
		"spec.amocrm.domain: Invalid value", "spec.amocrm.redirectURI: Invalid value",
		"spec.checkInterval: Invalid value", "at least 1m",
		"spec.refreshBefore: Invalid value", "positive duration",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl output lacks %q:\n%s", want, out)
		}
	}
}
