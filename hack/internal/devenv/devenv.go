// Package devenv holds what the developer drivers share (hack/demo for
// `make demo`, hack/bench for `make bench`): finding the repository,
// building binaries, a local control plane (kube-apiserver and etcd through
// envtest, CRDs from config/crd/bases), the sandbox providers and the
// manager as child processes.
package devenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/tokenkeeper/tokenkeeper/hack/sandbox/state"
)

const (
	modulePath    = "github.com/tokenkeeper/tokenkeeper"
	buildTimeout  = 20 * time.Minute
	assetsTimeout = 60 * time.Minute
)

// RepoRoot finds the module root from the working directory up.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run this from the tokenkeeper repository (through make)")
		}
		dir = parent
	}
}

// Assets returns the folder holding kube-apiserver and etcd:
// KUBEBUILDER_ASSETS, else what hack/envtest-assets.sh builds.
func Assets(ctx context.Context, root string) (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		Say("==> KUBEBUILDER_ASSETS is not set: running hack/envtest-assets.sh (a cold build of kube-apiserver and etcd takes several minutes)")
		cctx, cancel := context.WithTimeout(ctx, assetsTimeout)
		defer cancel()
		cmd := exec.CommandContext(cctx, filepath.Join(root, "hack", "envtest-assets.sh"))
		cmd.Dir = root
		cmd.Stderr = os.Stderr
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		cmd.WaitDelay = 10 * time.Second
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("hack/envtest-assets.sh: %w", CtxErr(cctx, err))
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, bin)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("KUBEBUILDER_ASSETS=%s has no executable %s: run through make (it builds them with hack/envtest-assets.sh)", dir, bin)
		}
	}
	return dir, nil
}

// GoBuild builds pkg into out, relative to root.
func GoBuild(ctx context.Context, root, out, pkg string) error {
	cctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(cctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build -o %s %s: %w", out, pkg, CtxErr(cctx, err))
	}
	Say("    built %s in %s", out, time.Since(start).Round(time.Second))
	return nil
}

// ControlPlane is a local kube-apiserver and etcd with the CRDs installed.
type ControlPlane struct {
	Env *envtest.Environment
	log *os.File
}

// StartControlPlane starts kube-apiserver and etcd from assets, logging to
// logPath. apiServer, when not nil, may add kube-apiserver flags. On error
// it stops whatever it started.
func StartControlPlane(ctx context.Context, root, assets, logPath string, apiServer func(*envtest.APIServer)) (*ControlPlane, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		UseExistingCluster:       ptr.To(false),
		CRDDirectoryPaths:        []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	env.ControlPlane.APIServer = &envtest.APIServer{Out: logf, Err: logf}
	env.ControlPlane.Etcd = &envtest.Etcd{Out: logf, Err: logf}
	if apiServer != nil {
		apiServer(env.ControlPlane.APIServer)
	}
	cp := &ControlPlane{Env: env, log: logf}
	if _, err := env.Start(); err != nil {
		// A Start that fails half way may have left etcd running.
		_ = cp.Stop()
		return nil, fmt.Errorf("starting the control plane (see %s): %w", logPath, err)
	}
	if err := ctx.Err(); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	return cp, nil
}

// Stop stops kube-apiserver and etcd.
func (c *ControlPlane) Stop() error {
	err := c.Env.Stop()
	_ = c.log.Close()
	return err
}

// AddAdmin adds a user in group system:masters (a user of its own lets the
// API server's audit log tell its requests apart) and writes its kubeconfig
// to path, mode 0600.
func (c *ControlPlane) AddAdmin(name, path string) (*rest.Config, error) {
	user, err := c.Env.AddUser(envtest.User{Name: name, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("creating user %s: %w", name, err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, fmt.Errorf("rendering the kubeconfig of %s: %w", name, err)
	}
	if err := WriteFile0600(path, kc); err != nil {
		return nil, err
	}
	return user.Config(), nil
}

// StartSandbox starts bin/tokenkeeper-sandbox with a state file in dir and
// extra args, and waits for the state file.
func StartSandbox(ctx context.Context, root, dir string, args ...string) (*Child, *state.State, error) {
	stateFile := filepath.Join(dir, "sandbox.json")
	_ = os.Remove(stateFile)
	sb, err := StartChild("sandbox", filepath.Join(root, "bin", "tokenkeeper-sandbox"),
		append([]string{"--state-file", stateFile}, args...), filepath.Join(dir, "sandbox.log"), root)
	if err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if st, err := state.Read(stateFile); err == nil {
			return sb, st, nil
		}
		if sb.Exited() {
			return sb, nil, fmt.Errorf("the sandbox exited before it was ready (%s); see %s", sb.ExitErr(), sb.LogPath)
		}
		if time.Now().After(deadline) {
			return sb, nil, fmt.Errorf("the sandbox wrote no state file within 60s; see %s", sb.LogPath)
		}
		if err := Sleep(ctx, 100*time.Millisecond); err != nil {
			return sb, nil, err
		}
	}
}

// WaitReady polls url (a readyz endpoint) until it answers 200, c exits or
// timeout passes.
func WaitReady(ctx context.Context, c *Child, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if c.Exited() {
			return fmt.Errorf("the %s exited during start-up (%s); see %s", c.Name, c.ExitErr(), c.LogPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %s was not ready (%s) within %s; see %s", c.Name, url, timeout, c.LogPath)
		}
		if err := Sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
}

// SandboxStatus reads the sandbox's call counters from url.
func SandboxStatus(ctx context.Context, url string) (*state.Status, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the sandbox counters: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading the sandbox counters: HTTP %d", resp.StatusCode)
	}
	s := &state.Status{}
	if err := json.NewDecoder(resp.Body).Decode(s); err != nil {
		return nil, fmt.Errorf("reading the sandbox counters: %w", err)
	}
	return s, nil
}

// FindKubectl returns the kubectl to use: $KUBECTL, else kubectl on PATH.
func FindKubectl() (string, error) {
	name := os.Getenv("KUBECTL")
	if name == "" {
		name = "kubectl"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("kubectl not found (%v): install it (for example apt-get install kubectl) or set KUBECTL to its path", err)
	}
	return p, nil
}

// PortFree fails when addr cannot be listened on.
func PortFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

// FreeAddr returns a loopback address with a free port.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// WriteFile0600 writes b to path atomically with mode 0600.
func WriteFile0600(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil { // WriteFile keeps the mode of an existing file
		return err
	}
	return os.Rename(tmp, path)
}

// Sleep waits d or until ctx is done.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// CtxErr prefers the context's error (timeout, interrupt) to the
// "signal: killed" of a command it cancelled.
func CtxErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out: %w", err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Say prints one line to stdout.
func Say(format string, args ...any) { fmt.Printf(format+"\n", args...) }
