package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// The tests run against a real kube-apiserver and etcd (envtest); `make test`
// sets KUBEBUILDER_ASSETS. The plugin is built once and run as a separate
// process, with --kubeconfig pointing at the test control plane.
var (
	testEnv    *envtest.Environment
	k8sClient  client.Client
	binDir     string // holds the built kubectl-tokenkeeper
	pluginBin  string
	kubeconfig string // admin (system:masters) kubeconfig for the control plane
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "FAIL: KUBEBUILDER_ASSETS is not set: run the tests with `make test` (it builds kube-apiserver and etcd once and points the tests at them), or KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) go test ./cmd/kubectl-tokenkeeper/")
		return 1
	}
	tmp, err := os.MkdirTemp("", "kubectl-tokenkeeper-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binDir = filepath.Join(tmp, "bin")
	pluginBin = filepath.Join(binDir, "kubectl-tokenkeeper")

	// Build the plugin while the control plane starts, stamped the way
	// `make build` and `make release` stamp it.
	built := make(chan error, 1)
	go func() {
		out, err := exec.Command("go", "build", "-ldflags", stampFlags, "-o", pluginBin, ".").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("go build: %v\n%s", err, out)
		}
		built <- err
	}()

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := testEnv.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting the control plane: %v\n", err)
		<-built
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the control plane: %v\n", err)
		}
	}()
	if err := <-built; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if k8sClient, err = client.New(cfg, client.Options{Scheme: newScheme()}); err != nil {
		fmt.Fprintf(os.Stderr, "client: %v\n", err)
		return 1
	}
	if kubeconfig, err = writeKubeconfig(tmp, "tk-admin", []string{"system:masters"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// writeKubeconfig adds a user to the control plane (client certificate) and
// writes a kubeconfig for it, with the certificate data inlined.
func writeKubeconfig(dir, user string, groups []string) (string, error) {
	u, err := testEnv.AddUser(envtest.User{Name: user, Groups: groups}, nil)
	if err != nil {
		return "", fmt.Errorf("adding user %s: %w", user, err)
	}
	data, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, user+".kubeconfig")
	return path, os.WriteFile(path, data, 0o600)
}

// result is one run of the plugin.
type result struct {
	stdout, stderr string
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("err=%v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
}

// run executes a command with HOME and KUBECONFIG pointing away from the
// user's own cluster (the test passes --kubeconfig explicitly).
func run(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home, "KUBECONFIG="+filepath.Join(home, "missing-kubeconfig"), "KUBECACHEDIR="+filepath.Join(home, "cache"))
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// plugin runs the built binary as the admin user.
func plugin(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, nil, pluginBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
}

// mustPlugin runs the binary and fails the test unless it succeeds.
func mustPlugin(t *testing.T, args ...string) result {
	t.Helper()
	r := plugin(t, args...)
	if r.err != nil {
		t.Fatalf("kubectl-tokenkeeper %s failed:\n%s", strings.Join(args, " "), r)
	}
	return r
}

// inProcess runs the root command in this process with a fixed clock, so
// times left are exact.
func inProcess(t *testing.T, now time.Time, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: &stdout, ErrOut: &stderr}
	cmd := NewRootCommand(streams, clocktesting.NewFakeClock(now))
	cmd.SetArgs(append([]string{"--kubeconfig", kubeconfig}, args...))
	err := cmd.ExecuteContext(context.Background())
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// newNamespace creates a namespace for one test. envtest runs no namespace
// controller, so namespaces are never cleaned up; each test gets its own.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "tk-"}}
	if err := k8sClient.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// tokenOpts shape a ManagedToken for createToken.
type tokenOpts struct {
	provider    tokensv1alpha1.Provider
	labels      map[string]string
	annotations map[string]string
	facebook    *tokensv1alpha1.FacebookSpec
	status      *tokensv1alpha1.ManagedTokenStatus
}

// createToken creates a valid ManagedToken and, when opts.status is set,
// writes it through the status subresource as the controller would.
func createToken(t *testing.T, ns, name string, opts tokenOpts) *tokensv1alpha1.ManagedToken {
	t.Helper()
	ctx := context.Background()
	mt := &tokensv1alpha1.ManagedToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: opts.labels, Annotations: opts.annotations},
		Spec: tokensv1alpha1.ManagedTokenSpec{
			Provider:             opts.provider,
			CredentialsSecretRef: tokensv1alpha1.SecretReference{Name: "creds"},
			SecretName:           name + "-out",
			Facebook:             opts.facebook,
		},
	}
	if mt.Spec.Provider == "" {
		mt.Spec.Provider = tokensv1alpha1.ProviderFacebook
	}
	if mt.Spec.Provider == tokensv1alpha1.ProviderAmoCRM {
		mt.Spec.AmoCRM = &tokensv1alpha1.AmoCRMSpec{Domain: "x.amocrm.ru", RedirectURI: "https://example.com/cb"}
	}
	if err := k8sClient.Create(ctx, mt); err != nil {
		t.Fatalf("creating ManagedToken %s/%s: %v", ns, name, err)
	}
	if opts.status != nil {
		mt.Status = *opts.status
		if err := k8sClient.Status().Update(ctx, mt); err != nil {
			t.Fatalf("writing status of %s/%s: %v", ns, name, err)
		}
	}
	return mt
}

func getToken(t *testing.T, ns, name string) *tokensv1alpha1.ManagedToken {
	t.Helper()
	mt := &tokensv1alpha1.ManagedToken{}
	if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, mt); err != nil {
		t.Fatal(err)
	}
	return mt
}

// tm is a *metav1.Time at now+d, truncated to seconds as the API stores it.
func tm(now time.Time, d time.Duration) *metav1.Time {
	t := metav1.NewTime(now.Add(d).UTC().Truncate(time.Second))
	return &t
}

func cond(condType string, status metav1.ConditionStatus, reason, message string, at time.Time) metav1.Condition {
	return metav1.Condition{Type: condType, Status: status, Reason: reason, Message: message, LastTransitionTime: metav1.NewTime(at.UTC().Truncate(time.Second))}
}

// parseTable splits a tabwriter table into its header and rows of cells.
// Cells never contain spaces, except "expired 2h ago" and "overdue 5m",
// which are rejoined.
func parseTable(t *testing.T, out string) (header []string, rows map[string]map[string]string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("no table in output %q", out)
	}
	header = strings.Fields(lines[0])
	rows = map[string]map[string]string{}
	for _, line := range lines[1:] {
		cells := joinPhrases(strings.Fields(line))
		if len(cells) != len(header) {
			t.Fatalf("row %q has %d cells, header %v has %d", line, len(cells), header, len(header))
		}
		row := map[string]string{}
		for i, h := range header {
			row[h] = cells[i]
		}
		key := row["NAME"]
		if ns, ok := row["NAMESPACE"]; ok {
			key = ns + "/" + key
		}
		rows[key] = row
	}
	return header, rows
}

func joinPhrases(f []string) []string {
	var out []string
	for i := 0; i < len(f); i++ {
		switch {
		case f[i] == "expired" && i+2 < len(f) && f[i+2] == "ago":
			out = append(out, strings.Join(f[i:i+3], " "))
			i += 2
		case f[i] == "overdue" && i+1 < len(f):
			out = append(out, f[i]+" "+f[i+1])
			i++
		case i+1 < len(f) && f[i+1] == "ago":
			out = append(out, f[i]+" ago")
			i++
		default:
			out = append(out, f[i])
		}
	}
	return out
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
