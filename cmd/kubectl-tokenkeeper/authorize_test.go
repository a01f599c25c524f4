package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/authz"
)

// testConsentURL is what the fake operator publishes: a provider consent
// page with a query string and no state.
const testConsentURL = "https://www.facebook.com/v26.0/dialog/oauth?client_id=1234&redirect_uri=https%3A%2F%2Ftk.example.com%2Fcallback%2Ffacebook&response_type=code&scope=ads_read"

const (
	authorizeKey = tokensv1alpha1.AuthorizeRequestAnnotation
	// testRedirectURI is set on the test ManagedTokens; it does not end in
	// /callback/facebook, which the hint must point out.
	testRedirectURI = "https://tk.example.com/cb"
)

// syncBuffer is a bytes.Buffer that a running command writes while the
// test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running is one authorize run, in this process or as a child process.
type running struct {
	stdout, stderr *syncBuffer
	done           chan error
	cancel         func() // Ctrl-C: cancels the context, or sends SIGINT
	err            error
	finished       bool
}

// wait returns the run's error, failing the test if it has not ended
// within d.
func (r *running) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	if r.finished {
		return r.err
	}
	select {
	case r.err = <-r.done:
		r.finished = true
		return r.err
	case <-time.After(d):
		r.cancel()
		r.err, r.finished = <-r.done, true
		t.Fatalf("authorize still running after %s:\nstdout:\n%s\nstderr:\n%s", d, r.stdout, r.stderr)
		return nil
	}
}

// exited reports whether the run has ended (without waiting).
func (r *running) exited() bool {
	if r.finished {
		return true
	}
	select {
	case r.err = <-r.done:
		r.finished = true
		return true
	default:
		return false
	}
}

func (r *running) String() string {
	return fmt.Sprintf("err=%v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
}

// startAuthorize runs the root command in this process with clk and a
// browser opener that never starts a browser.
func startAuthorize(t *testing.T, clk clock.Clock, open func(string) error, args ...string) *running {
	t.Helper()
	if open == nil {
		open = func(string) error { return errors.New("the test opener must not be called") }
	}
	r := &running{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	o := &Options{
		ConfigFlags: genericclioptions.NewConfigFlags(true),
		IOStreams:   genericiooptions.IOStreams{In: strings.NewReader(""), Out: r.stdout, ErrOut: r.stderr},
		Clock:       clk,
		OpenBrowser: open,
	}
	cmd := newRootCommand(o)
	cmd.SetArgs(append([]string{"--kubeconfig", kubeconfig, "authorize"}, args...))
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if !r.finished {
			<-r.done
		}
	})
	return r
}

// startProcess starts a command the way run does (HOME and KUBECONFIG
// pointing away from the user's cluster), without waiting for it.
func startProcess(t *testing.T, env []string, name string, args ...string) *running {
	t.Helper()
	cmd := exec.Command(name, args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home, "KUBECONFIG="+filepath.Join(home, "missing-kubeconfig"), "KUBECACHEDIR="+filepath.Join(home, "cache"))
	cmd.Env = append(cmd.Env, env...)
	r := &running{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = r.stdout, r.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.cancel = func() { _ = cmd.Process.Signal(syscall.SIGINT) }
	go func() { r.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if !r.finished {
			_ = cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeOperator plays the operator's side of the contract for one
// ManagedToken, from a goroutine: it reports failures as errors, since
// only the test goroutine may stop the test.
type fakeOperator struct {
	ns, name string
}

// awaitRequest waits for an authorize-request annotation other than old,
// and checks that it is a well-formed hash.
func (o fakeOperator) awaitRequest(old string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		mt := &tokensv1alpha1.ManagedToken{}
		if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: o.ns, Name: o.name}, mt); err != nil {
			return "", err
		}
		if h := mt.Annotations[authorizeKey]; h != "" && h != old {
			if !authz.ValidHash(h) {
				return "", fmt.Errorf("annotation %s = %q is not a valid request hash", authorizeKey, h)
			}
			return h, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("no new %s annotation on %s/%s within 30s", authorizeKey, o.ns, o.name)
}

// update changes the status as the operator would, retrying conflicts.
func (o fakeOperator) update(mutate func(mt *tokensv1alpha1.ManagedToken)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		mt := &tokensv1alpha1.ManagedToken{}
		if err := k8sClient.Get(context.Background(), client.ObjectKey{Namespace: o.ns, Name: o.name}, mt); err != nil {
			return err
		}
		mutate(mt)
		return k8sClient.Status().Update(context.Background(), mt)
	})
}

// setAuthorization writes status.authorization for the request hash.
func (o fakeOperator) setAuthorization(hash string, phase tokensv1alpha1.AuthorizationPhase, consentURL, message string) error {
	exp := metav1.NewTime(time.Now().Add(authz.RequestTTL).UTC().Truncate(time.Second))
	return o.update(func(mt *tokensv1alpha1.ManagedToken) {
		mt.Status.Authorization = &tokensv1alpha1.AuthorizationStatus{
			RequestID:           authz.RequestID(hash),
			Phase:               phase,
			ConsentURL:          consentURL,
			ExpirationTimestamp: &exp,
			Message:             message,
		}
	})
}

// pending publishes the request with the consent URL.
func (o fakeOperator) pending(hash string) error {
	return o.setAuthorization(hash, tokensv1alpha1.AuthorizationPending, testConsentURL, "waiting for consent at Facebook")
}

// complete marks the request Completed and Ready=True as of generation
// observed, with a token that expires at expires (nil: never).
func (o fakeOperator) complete(hash string, observed int64, expires *metav1.Time) error {
	return o.update(func(mt *tokensv1alpha1.ManagedToken) {
		a := mt.Status.Authorization
		if a == nil || a.RequestID != authz.RequestID(hash) {
			a = &tokensv1alpha1.AuthorizationStatus{RequestID: authz.RequestID(hash)}
			mt.Status.Authorization = a
		}
		a.Phase = tokensv1alpha1.AuthorizationCompleted
		a.Message = "token stored"
		mt.Status.TokenType = "FacebookUserLongLived"
		mt.Status.ExpirationTimestamp = expires
		meta.SetStatusCondition(&mt.Status.Conditions, metav1.Condition{
			Type: tokensv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "TokenValid",
			Message: "token is valid", ObservedGeneration: observed,
		})
	})
}

// goOperator runs script in a goroutine; the returned func waits for it and
// reports its error.
func goOperator(t *testing.T, script func() error) (wait func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- script() }()
	return func() {
		t.Helper()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("fake operator: %v", err)
			}
		case <-time.After(45 * time.Second):
			t.Error("fake operator did not finish")
		}
	}
}

// consentURLLine is the indented URL line of authorize's stdout, or "".
func consentURLLine(stdout string) string {
	for _, line := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(line, "    https://") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// consent waits for the consent URL on stdout and checks it is the
// operator's consent URL plus a state whose hash is the annotation: that
// proves the state and the hash agree. It returns the state and the URL.
func consent(t *testing.T, r *running, ns, name string) (state, full string) {
	t.Helper()
	waitFor(t, 30*time.Second, "the consent URL on stdout", func() bool { return consentURLLine(r.stdout.String()) != "" || r.exited() })
	full = consentURLLine(r.stdout.String())
	if full == "" {
		t.Fatalf("authorize ended without printing a consent URL:\n%s", r)
	}
	if !strings.HasPrefix(full, testConsentURL+"&state=") {
		t.Fatalf("URL %q is not the consent URL + &state=", full)
	}
	u, err := url.Parse(full)
	if err != nil {
		t.Fatal(err)
	}
	states := u.Query()["state"]
	if len(states) != 1 || states[0] == "" {
		t.Fatalf("URL %q has state %q, want one", full, states)
	}
	state = states[0]
	hash := getToken(t, ns, name).Annotations[authorizeKey]
	if authz.Hash(state) != hash || !authz.Matches(state, hash) {
		t.Fatalf("the state in the URL does not hash to the annotation %q", hash)
	}
	if hash == state || strings.Contains(hash, state) {
		t.Fatal("the annotation holds the state itself")
	}
	return state, full
}

// assertStateOnlyInURL fails if the state appears anywhere but once, in
// the URL line of stdout: not on stderr, not in the ManagedToken.
func assertStateOnlyInURL(t *testing.T, r *running, ns, name, state string) {
	t.Helper()
	stdout, stderr := r.stdout.String(), r.stderr.String()
	if n := strings.Count(stdout, state); n != 1 || !strings.Contains(consentURLLine(stdout), state) {
		t.Errorf("stdout holds the state %d times, want once, in the URL:\n%s", n, stdout)
	}
	if strings.Contains(stderr, state) {
		t.Errorf("stderr holds the state:\n%s", stderr)
	}
	for _, s := range []string{stdout, stderr} {
		for _, line := range strings.Split(s, "\n") {
			if strings.Contains(line, authz.Hash(state)) {
				t.Errorf("output holds the request hash (only its ID belongs there): %q", line)
			}
		}
	}
	b, err := json.Marshal(getToken(t, ns, name))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), state) {
		t.Errorf("the ManagedToken holds the state:\n%s", b)
	}
}

func fbOpts() tokenOpts {
	return tokenOpts{facebook: &tokensv1alpha1.FacebookSpec{RedirectURI: testRedirectURI}}
}

// TestAuthorizeSuccess: the operator publishes the request, the test
// consents, the operator completes it; the command waits for a Ready
// condition of the current generation, then reports the token's expiry.
//
// It is a re-authorization: status already shows an earlier request,
// Completed, and a Ready token. That request is not this one, so it must
// not end the wait.
func TestAuthorizeSuccess(t *testing.T) {
	ns := newNamespace(t)
	opts := fbOpts()
	opts.status = &tokensv1alpha1.ManagedTokenStatus{
		ObservedGeneration: 1,
		TokenType:          "FacebookUserLongLived",
		Conditions:         []metav1.Condition{{Type: tokensv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "TokenValid", Message: "old token", ObservedGeneration: 1, LastTransitionTime: metav1.Now()}},
		Authorization:      &tokensv1alpha1.AuthorizationStatus{RequestID: "0123456789ab", Phase: tokensv1alpha1.AuthorizationCompleted, Message: "an earlier request"},
	}
	mt := createToken(t, ns, "fb", opts)
	if mt.Generation != 1 {
		t.Fatalf("generation %d, want 1", mt.Generation)
	}
	op := fakeOperator{ns: ns, name: "fb"}
	expires := tm(time.Now(), 59*24*time.Hour)
	consented := make(chan struct{})
	staleWritten := make(chan struct{})
	var opened []string
	var openedMu sync.Mutex
	opener := func(u string) error {
		openedMu.Lock()
		defer openedMu.Unlock()
		opened = append(opened, u)
		return nil
	}

	r := startAuthorize(t, clock.RealClock{}, opener, "-n", ns, "fb", "--open")
	waitOp := goOperator(t, func() error {
		hash, err := op.awaitRequest("")
		if err != nil {
			return err
		}
		if err := op.pending(hash); err != nil {
			return err
		}
		<-consented
		// A spec change raises the generation; a Ready=True of the
		// previous generation must not end the wait.
		patch := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"checkInterval":"3h"}}`))
		if err := k8sClient.Patch(context.Background(), &tokensv1alpha1.ManagedToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fb"}}, patch); err != nil {
			return err
		}
		if err := op.complete(hash, mt.Generation, expires); err != nil {
			return err
		}
		close(staleWritten)
		return nil
	})

	state, full := consent(t, r, ns, "fb")
	close(consented)
	<-staleWritten
	waitFor(t, 10*time.Second, "the wait for a current Ready condition", func() bool {
		return strings.Contains(r.stderr.String(), "waiting for managedtoken/fb to become Ready (Ready=True TokenValid: token is valid (for generation 1, current 2))...")
	})
	if r.exited() {
		t.Fatalf("authorize ended on a Ready condition of an old generation:\n%s", r)
	}
	hash := getToken(t, ns, "fb").Annotations[authorizeKey]
	if err := op.complete(hash, 2, expires); err != nil {
		t.Fatal(err)
	}
	if err := r.wait(t, 30*time.Second); err != nil {
		t.Fatalf("authorize failed:\n%s", r)
	}
	waitOp()

	stdout := r.stdout.String()
	for _, want := range []string{
		"Authorize managedtoken/fb (namespace " + ns + ", provider Facebook): open this URL in a browser, sign in and consent:\n\n    " + full + "\n\n",
		"The request expires at ",
		"managedtoken/fb authorized: Ready, token expires " + expires.UTC().Format(time.RFC3339) + " (in 5",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.HasSuffix(stdout, "\n") || !strings.HasPrefix(lastLine(stdout), "managedtoken/fb authorized: Ready, token expires ") {
		t.Errorf("the last line of stdout is not the result:\n%s", stdout)
	}
	id := authz.RequestID(authz.Hash(state))
	stderr := r.stderr.String()
	for _, want := range []string{
		"managedtoken/fb: authorization requested (request " + id + "); waiting for the operator to pick it up...\n",
		"request " + id + ": Pending: waiting for consent at Facebook\n",
		"waiting for consent...\n",
		"request " + id + ": Completed: token stored\n",
	} {
		if strings.Count(stderr, want) != 1 {
			t.Errorf("stderr should have %q once:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "hint:") {
		t.Errorf("hint printed although the operator answered at once:\n%s", stderr)
	}
	openedMu.Lock()
	if len(opened) != 1 || opened[0] != full {
		t.Errorf("--open opened %q, want the URL once", opened)
	}
	openedMu.Unlock()
	assertStateOnlyInURL(t, r, ns, "fb", state)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// TestAuthorizeEndsBadly: a Failed or Expired request ends the command with
// the operator's message and a non-zero exit.
func TestAuthorizeEndsBadly(t *testing.T) {
	for _, tc := range []struct {
		phase   tokensv1alpha1.AuthorizationPhase
		message string
		want    string
	}{
		{tokensv1alpha1.AuthorizationFailed, "Facebook refused the code: redirect_uri mismatch", "authorization of managedtoken/fb failed (request %s): Facebook refused the code: redirect_uri mismatch; fix the cause"},
		{tokensv1alpha1.AuthorizationExpired, "no consent arrived within 15m", "authorization request %s for managedtoken/fb expired: no consent arrived within 15m; run kubectl tokenkeeper authorize again"},
	} {
		t.Run(string(tc.phase), func(t *testing.T) {
			ns := newNamespace(t)
			createToken(t, ns, "fb", fbOpts())
			op := fakeOperator{ns: ns, name: "fb"}
			consented := make(chan struct{})
			r := startAuthorize(t, clock.RealClock{}, nil, "-n", ns, "fb")
			waitOp := goOperator(t, func() error {
				hash, err := op.awaitRequest("")
				if err != nil {
					return err
				}
				if err := op.pending(hash); err != nil {
					return err
				}
				<-consented
				return op.setAuthorization(hash, tc.phase, testConsentURL, tc.message)
			})
			state, _ := consent(t, r, ns, "fb")
			close(consented)
			err := r.wait(t, 30*time.Second)
			waitOp()
			id := authz.RequestID(authz.Hash(state))
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf(tc.want, id)) {
				t.Errorf("want error %q:\n%s", fmt.Sprintf(tc.want, id), r)
			}
			if !strings.Contains(r.stderr.String(), "request "+id+": "+string(tc.phase)+": "+tc.message+"\n") {
				t.Errorf("stderr does not report the phase change:\n%s", r)
			}
			if strings.Contains(r.stdout.String(), "authorized") {
				t.Errorf("stdout claims success:\n%s", r)
			}
			if err != nil && strings.Contains(err.Error(), state) {
				t.Error("the error holds the state")
			}
			assertStateOnlyInURL(t, r, ns, "fb", state)
		})
	}
}

// TestAuthorizeTimeoutWithoutOperator runs on a fake clock with nobody
// answering: the hint comes once at 30s, not before, and --timeout (the
// default 16m) ends the wait with what was missing.
func TestAuthorizeTimeoutWithoutOperator(t *testing.T) {
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	fc := clocktesting.NewFakeClock(time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC))
	r := startAuthorize(t, fc, nil, "-n", ns, "fb")

	// Waiting: the poll, the deadline and the hint timers.
	armed := func(n int) func() bool {
		return func() bool { return fc.Waiters() == n || r.exited() }
	}
	waitFor(t, 30*time.Second, "the first poll", armed(3))
	hash := getToken(t, ns, "fb").Annotations[authorizeKey]
	if !authz.ValidHash(hash) {
		t.Fatalf("annotation %q is not a request hash", hash)
	}
	id := authz.RequestID(hash)

	fc.Step(29 * time.Second)
	waitFor(t, 10*time.Second, "the poll at 29s", armed(3))
	if strings.Contains(r.stderr.String(), "hint:") {
		t.Fatalf("hint before 30s:\n%s", r)
	}
	fc.Step(time.Second)
	waitFor(t, 10*time.Second, "the hint at 30s", func() bool {
		return (strings.Contains(r.stderr.String(), "hint:") && fc.Waiters() == 2) || r.exited()
	})
	wantHint := "hint: after 30s the operator has not picked up request " + id + ". The operator must run with --authorization-bind-address, and spec.facebook.redirectURI (now \"" + testRedirectURI + "\", which does not end in /callback/facebook) must point to its /callback/facebook, as registered with the provider. Still waiting, up to --timeout 16m0s.\n"
	if !strings.Contains(r.stderr.String(), wantHint) {
		t.Errorf("stderr lacks the hint %q:\n%s", wantHint, r)
	}
	fc.Step(time.Minute)
	waitFor(t, 10*time.Second, "the poll at 1m30s", armed(2))
	if r.exited() {
		t.Fatalf("authorize gave up before --timeout:\n%s", r)
	}
	fc.Step(15 * time.Minute)
	err := r.wait(t, 10*time.Second)
	want := "timed out after 16m0s: the operator never picked up request " + id + " (status.authorization of managedtoken/fb never showed it). The operator must run with --authorization-bind-address"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("want error %q:\n%s", want, r)
	}
	if n := strings.Count(r.stderr.String(), "hint:"); n != 1 {
		t.Errorf("hint printed %d times, want once:\n%s", n, r)
	}
	if r.stdout.String() != "" {
		t.Errorf("stdout without a published request:\n%s", r)
	}
}

// TestAuthorizeTimeoutWhilePending: the operator picked the request up but
// nobody consented: the timeout says when the request expires.
func TestAuthorizeTimeoutWhilePending(t *testing.T) {
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	op := fakeOperator{ns: ns, name: "fb"}
	r := startAuthorize(t, clock.RealClock{}, nil, "-n", ns, "fb", "--timeout", "3s")
	waitOp := goOperator(t, func() error {
		hash, err := op.awaitRequest("")
		if err != nil {
			return err
		}
		return op.pending(hash)
	})
	state, _ := consent(t, r, ns, "fb")
	err := r.wait(t, 20*time.Second)
	waitOp()
	id := authz.RequestID(authz.Hash(state))
	want := "timed out after 3s waiting for consent: the operator picked up request " + id + ", which is still Pending and stays open until "
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("want error %q:\n%s", want, r)
	}
	assertStateOnlyInURL(t, r, ns, "fb", state)
}

// TestAuthorizeNoWait: the URL is printed and the command exits 0 once the
// operator has published it. A failing --open is a hint, not an error, and
// the state is scrubbed from what the opener said.
func TestAuthorizeNoWait(t *testing.T) {
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	op := fakeOperator{ns: ns, name: "fb"}
	opener := func(u string) error { return fmt.Errorf("xdg-open %s: exit status 3", u) }
	r := startAuthorize(t, clock.RealClock{}, opener, "-n", ns, "fb", "--no-wait", "--open")
	waitOp := goOperator(t, func() error {
		hash, err := op.awaitRequest("")
		if err != nil {
			return err
		}
		return op.pending(hash)
	})
	state, _ := consent(t, r, ns, "fb")
	if err := r.wait(t, 20*time.Second); err != nil {
		t.Fatalf("--no-wait failed:\n%s", r)
	}
	waitOp()
	stderr := r.stderr.String()
	if !strings.Contains(stderr, "could not open a browser (xdg-open https://www.facebook.com/") || !strings.Contains(stderr, "&state=<state>: exit status 3): open the URL above yourself") {
		t.Errorf("stderr lacks the scrubbed open hint:\n%s", stderr)
	}
	if !strings.Contains(stderr, "not waiting (--no-wait)") || strings.Contains(stderr, "waiting for consent...") {
		t.Errorf("stderr:\n%s", stderr)
	}
	if getToken(t, ns, "fb").Annotations[authorizeKey] != authz.Hash(state) {
		t.Error("the request annotation did not stay")
	}
	assertStateOnlyInURL(t, r, ns, "fb", state)
}

// TestAuthorizeMissingToken: a clear error, exit 1, and nothing created.
func TestAuthorizeMissingToken(t *testing.T) {
	ns := newNamespace(t)
	start := time.Now()
	r := plugin(t, "authorize", "-n", ns, "nope")
	if exitCode(r.err) != 1 || r.stderr != `error: managedtokens.tokens.tokenkeeper.dev "nope" not found in namespace "`+ns+`"`+"\n" || r.stdout != "" {
		t.Errorf("authorize nope:\n%s", r)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("a missing ManagedToken took %s to report", d)
	}
	list := &tokensv1alpha1.ManagedTokenList{}
	if err := k8sClient.List(context.Background(), list, client.InNamespace(ns)); err != nil || len(list.Items) != 0 {
		t.Errorf("authorize created %d ManagedTokens (err %v)", len(list.Items), err)
	}
}

// TestAuthorizeUsage: argument errors exit 1, as in every subcommand, and
// the help documents the exit status.
func TestAuthorizeUsage(t *testing.T) {
	for _, args := range [][]string{{"authorize"}, {"authorize", "a", "b"}} {
		r := plugin(t, args...)
		if exitCode(r.err) != 1 || !strings.Contains(r.stderr, "authorize takes exactly one ManagedToken NAME") {
			t.Errorf("%v:\n%s", args, r)
		}
	}
	r := plugin(t, "authorize", "fb", "--timeout", "0s")
	if exitCode(r.err) != 1 || !strings.Contains(r.stderr, "--timeout must be positive") {
		t.Errorf("--timeout 0s:\n%s", r)
	}
	r = mustPlugin(t, "authorize", "--help")
	for _, want := range []string{"kubectl tokenkeeper authorize NAME", "Exit status:", "  0    authorized", "  1    the authorization failed or expired", "  130  interrupted", "--open", "--no-wait", "--timeout duration", "(default 16m0s)", authorizeKey} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("authorize --help lacks %q:\n%s", want, r.stdout)
		}
	}
	r = mustPlugin(t, "--help")
	if !strings.Contains(r.stdout, "  authorize ") || !strings.Contains(r.stdout, "kubectl tokenkeeper authorize -n ads facebook-marketing --open") {
		t.Errorf("root help does not list authorize:\n%s", r.stdout)
	}
}

// TestAuthorizeSecondReplacesFirst: a second authorize mints a new state;
// the first command sees its request replaced and stops; the second one
// completes.
func TestAuthorizeSecondReplacesFirst(t *testing.T) {
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	op := fakeOperator{ns: ns, name: "fb"}
	consented := make(chan struct{})
	hashes := make(chan string, 2)

	first := startAuthorize(t, clock.RealClock{}, nil, "-n", ns, "fb")
	waitOp := goOperator(t, func() error {
		h1, err := op.awaitRequest("")
		if err != nil {
			return err
		}
		hashes <- h1
		if err := op.pending(h1); err != nil {
			return err
		}
		h2, err := op.awaitRequest(h1)
		if err != nil {
			return err
		}
		hashes <- h2
		if err := op.pending(h2); err != nil {
			return err
		}
		<-consented
		return op.complete(h2, 1, nil)
	})
	state1, _ := consent(t, first, ns, "fb")
	h1 := <-hashes

	second := startAuthorize(t, clock.RealClock{}, nil, "-n", ns, "fb")
	err1 := first.wait(t, 30*time.Second)
	h2 := <-hashes
	state2, _ := consent(t, second, ns, "fb")
	close(consented)
	err2 := second.wait(t, 30*time.Second)
	waitOp()

	if h1 == h2 || state1 == state2 || authz.Hash(state1) != h1 || authz.Hash(state2) != h2 {
		t.Errorf("the second request did not get its own state and hash")
	}
	want := "another kubectl tokenkeeper authorize replaced request " + authz.RequestID(h1) + " with request " + authz.RequestID(h2) + " on managedtoken/fb"
	if err1 == nil || !strings.Contains(err1.Error(), want) {
		t.Errorf("first: want error %q:\n%s", want, first)
	}
	if err2 != nil || lastLine(second.stdout.String()) != "managedtoken/fb authorized: Ready, token never expires" {
		t.Errorf("second:\n%s", second)
	}
	assertStateOnlyInURL(t, first, ns, "fb", state1)
	assertStateOnlyInURL(t, second, ns, "fb", state2)
	if strings.Contains(second.stdout.String()+second.stderr.String(), state1) || strings.Contains(first.stdout.String()+first.stderr.String(), state2) {
		t.Error("one run printed the other's state")
	}
}

// TestAuthorizeRejectsUnsafeConsentURL: a consent URL from the cluster that
// is not https gets no state.
func TestAuthorizeRejectsUnsafeConsentURL(t *testing.T) {
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	op := fakeOperator{ns: ns, name: "fb"}
	r := startAuthorize(t, clock.RealClock{}, nil, "-n", ns, "fb")
	waitOp := goOperator(t, func() error {
		hash, err := op.awaitRequest("")
		if err != nil {
			return err
		}
		return op.setAuthorization(hash, tokensv1alpha1.AuthorizationPending, "http://phish.example.com/dialog?client_id=1", "")
	})
	err := r.wait(t, 30*time.Second)
	waitOp()
	if err == nil || !strings.Contains(err.Error(), `refusing to add the state to a consent URL that is not https: "http://phish.example.com/dialog?client_id=1"`) || r.stdout.String() != "" {
		t.Errorf("want a refusal and no URL:\n%s", r)
	}
}

// TestAuthorizeInterruptBeforePublish: Ctrl-C while waiting for the
// operator ends the command at once, saying the request cannot complete.
func TestAuthorizeInterruptBeforePublish(t *testing.T) {
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	r := startAuthorize(t, clock.RealClock{}, nil, "-n", ns, "fb")
	waitFor(t, 30*time.Second, "the request", func() bool { return strings.Contains(r.stderr.String(), "waiting for the operator") || r.exited() })
	r.cancel()
	err := r.wait(t, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "interrupted before the consent URL of request ") || !strings.Contains(err.Error(), "nobody holds its state") {
		t.Errorf("want an interruption error:\n%s", r)
	}
}

// TestAuthorizeInterruptSignal sends SIGINT to the plugin binary after the
// URL was printed: exit 130, and the message says the URL stays usable.
func TestAuthorizeInterruptSignal(t *testing.T) {
	ns := newNamespace(t)
	createToken(t, ns, "fb", fbOpts())
	op := fakeOperator{ns: ns, name: "fb"}
	r := startProcess(t, nil, pluginBin, "--kubeconfig", kubeconfig, "authorize", "-n", ns, "fb")
	waitOp := goOperator(t, func() error {
		hash, err := op.awaitRequest("")
		if err != nil {
			return err
		}
		return op.pending(hash)
	})
	state, _ := consent(t, r, ns, "fb")
	waitOp()
	waitFor(t, 10*time.Second, "waiting for consent", func() bool { return strings.Contains(r.stderr.String(), "waiting for consent...") })
	r.cancel()
	err := r.wait(t, 5*time.Second)
	id := authz.RequestID(authz.Hash(state))
	if exitCode(err) != exitInterrupted || !strings.Contains(r.stderr.String(), "error: interrupted: request "+id+" stays open until ") {
		t.Errorf("want exit %d and the interruption message:\n%s", exitInterrupted, r)
	}
	assertStateOnlyInURL(t, r, ns, "fb", state)
}

func TestConsentURLWithState(t *testing.T) {
	const state = "abc-_DEF"
	for _, tc := range []struct{ in, want, err string }{
		{in: "https://www.amocrm.ru/oauth?client_id=x&mode=post_message", want: "https://www.amocrm.ru/oauth?client_id=x&mode=post_message&state=abc-_DEF"},
		{in: "https://www.facebook.com/v26.0/dialog/oauth", want: "https://www.facebook.com/v26.0/dialog/oauth?state=abc-_DEF"},
		{in: "http://127.0.0.1:8080/fake?x=1", want: "http://127.0.0.1:8080/fake?x=1&state=abc-_DEF"},
		{in: "http://example.com/oauth?x=1", err: "not https"},
		{in: "/oauth?x=1", err: "not an absolute URL"},
		{in: "https://example.com/oauth?x=1#frag", err: "fragment"},
		{in: "https://example.com/oauth?state=mine", err: "already carries a state"},
		{in: "javascript:alert(1)", err: "not an absolute URL"},
	} {
		got, err := consentURLWithState(tc.in, state)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), state) {
				t.Errorf("%q: err = %v, want one with %q (and no state)", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestBrowserCommand(t *testing.T) {
	const u = "https://example.com/a?b=1&state=s"
	for goos, want := range map[string][]string{
		"linux":   {"xdg-open", u},
		"darwin":  {"open", u},
		"windows": {"rundll32", "url.dll,FileProtocolHandler", u},
	} {
		name, args, err := browserCommand(goos, u)
		if got := append([]string{name}, args...); err != nil || strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: %v, %v; want %v", goos, got, err, want)
		}
	}
	if _, _, err := browserCommand("plan9", u); err == nil || strings.Contains(err.Error(), u) {
		t.Errorf("plan9: err = %v, want one without the URL", err)
	}
}
