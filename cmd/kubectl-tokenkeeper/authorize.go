package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/authz"
)

const (
	// defaultAuthorizeTimeout outlasts a request (authz.RequestTTL), so the
	// operator's Expired normally arrives before the command gives up.
	defaultAuthorizeTimeout = 16 * time.Minute
	// authorizePollInterval is how often the ManagedToken is read while
	// waiting. A human is clicking through a consent page meanwhile: a
	// second of latency goes unnoticed, and one GET a second is nothing
	// for the API server.
	authorizePollInterval = time.Second
	// operatorHintAfter is how long the operator may take to publish the
	// request before the command says what it needs.
	operatorHintAfter = 30 * time.Second
	// authorizeGetTimeout bounds one GET (in real time), so a hung
	// connection delays the next poll instead of stalling the wait.
	authorizeGetTimeout = 10 * time.Second
)

type authorizeOptions struct {
	*Options
	timeout time.Duration
	open    bool
	noWait  bool
}

func newAuthorizeCommand(o *Options) *cobra.Command {
	a := &authorizeOptions{Options: o, timeout: defaultAuthorizeTimeout}
	cmd := &cobra.Command{
		Use:   "authorize NAME [--open] [--no-wait] [--timeout 16m]",
		Short: "Authorize a ManagedToken: print the provider's consent URL and wait until the token is Ready",
		Long: `Authorize a ManagedToken for the first time, or again when a human must
reauthorize it (REAUTH True in kubectl tokenkeeper status).

The command mints a random OAuth state, which stays in its memory, and sets
the ` + tokensv1alpha1.AuthorizeRequestAnnotation + ` annotation to the
state's SHA-256: the state itself never reaches the cluster. The operator
answers in status.authorization with the provider's consent page, and the
command prints that URL with the state added. Open it (or pass --open), sign
in and consent: the provider sends the browser to the operator's
` + tokensv1alpha1.FacebookCallbackPath + ` or ` + tokensv1alpha1.AmoCRMCallbackPath + `, and the operator exchanges the code
and stores the token. A request is accepted for 15 minutes. Running authorize
again replaces a pending request.

The command then waits, reading the ManagedToken every second and reporting
each change on stderr, until the authorization has completed and the
ManagedToken is Ready, the authorization fails or expires, or --timeout
passes. Only the URL on stdout holds the state: treat it like a password
until it has been used or has expired.

The operator must run with --authorization-bind-address, and the redirect URI
(spec.facebook.redirectURI or spec.amocrm.redirectURI) must point to its
callback path. The command needs get and patch on managedtokens: the
built-in edit and admin roles include them (the install aggregates its
editor ClusterRole into them; with Helm, unless rbac.aggregateToDefaultRoles
is false).

Exit status:
  0    authorized: the ManagedToken is Ready (with --no-wait: the URL was printed)
  1    the authorization failed or expired, --timeout passed, another authorize
       replaced this request, the ManagedToken does not exist, or any other
       error, a usage error included (as in every subcommand)
  130  interrupted (Ctrl-C); a URL already printed stays usable until the
       request expires`,
		Example: `  kubectl tokenkeeper authorize -n ads facebook-marketing --open
  kubectl tokenkeeper authorize -n sales kommo --no-wait
  kubectl tokenkeeper authorize -n ads facebook-marketing --timeout 5m`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("authorize takes exactly one ManagedToken NAME, got %d arguments (see kubectl tokenkeeper authorize --help)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.run(cmd.Context(), args[0])
		},
	}
	cmd.Flags().DurationVar(&a.timeout, "timeout", defaultAuthorizeTimeout, "How long to wait for the operator, the consent and a Ready token before giving up.")
	cmd.Flags().BoolVar(&a.open, "open", false, "Also open the consent URL in the default browser (xdg-open, open, or rundll32 on Windows).")
	cmd.Flags().BoolVar(&a.noWait, "no-wait", false, "Exit as soon as the consent URL is printed; the operator completes the authorization when you consent.")
	return cmd
}

func (a *authorizeOptions) run(ctx context.Context, name string) error {
	if a.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %s", a.timeout)
	}
	c, ns, err := a.clientAndNamespace()
	if err != nil {
		return err
	}
	state, hash, err := authz.NewState()
	if err != nil {
		return err
	}
	patch, err := authorizePatch(hash)
	if err != nil {
		return err
	}
	// A merge patch never creates an object: a missing one is NotFound. The
	// response fills mt, so the spec is known for the messages.
	mt := &tokensv1alpha1.ManagedToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Patch(ctx, mt, client.RawPatch(types.MergePatchType, patch)); err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted while requesting the authorization: nobody holds the state, so the request cannot complete (run kubectl tokenkeeper authorize again)")
		}
		return describeErr(err, name, ns)
	}
	w := &authorizeWait{
		authorizeOptions: a,
		c:                c,
		key:              client.ObjectKey{Namespace: ns, Name: name},
		state:            state,
		hash:             hash,
		id:               authz.RequestID(hash),
		last:             mt,
		shown:            map[string]string{},
	}
	return w.wait(ctx)
}

// authorizePatch is a JSON merge patch that sets only the authorize-request
// annotation to the state's hash.
func authorizePatch(hash string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"metadata": map[string]any{
			"annotations": map[string]string{
				tokensv1alpha1.AuthorizeRequestAnnotation: hash,
			},
		},
	})
}

// authorizeWait follows one request until it ends.
type authorizeWait struct {
	*authorizeOptions
	c   client.Client
	key client.ObjectKey
	// state is only ever written inside the consent URL, to stdout.
	state, hash, id string
	// last is the ManagedToken as last read.
	last *tokensv1alpha1.ManagedToken
	// seen: status.authorization has shown this request.
	seen bool
	// published: the consent URL was printed.
	published bool
	// shown is the last progress line printed per topic, so each change is
	// printed once.
	shown map[string]string
}

// wait polls the ManagedToken until the request ends, the deadline passes
// or ctx is cancelled (Ctrl-C). The deadline, the hint and the polls run on
// the injected clock.
func (w *authorizeWait) wait(ctx context.Context) error {
	clk := w.Clock
	deadline := clk.NewTimer(w.timeout)
	defer deadline.Stop()
	hint := clk.NewTimer(operatorHintAfter)
	defer hint.Stop()
	hintC := hint.C()

	w.progress("request", fmt.Sprintf("%s: authorization requested (request %s); waiting for the operator to pick it up...", objectRef(w.key.Name), w.id))
	for {
		if done, err := w.poll(ctx); done {
			return err
		}
		next := clk.NewTimer(authorizePollInterval)
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				next.Stop()
				return w.interrupted()
			case <-deadline.C():
				next.Stop()
				return w.timedOut()
			case <-hintC:
				hintC = nil
				if !w.seen {
					fmt.Fprintf(w.ErrOut, "hint: after %s the operator has not picked up request %s. %s Still waiting, up to --timeout %s.\n",
						operatorHintAfter, w.id, operatorHint(w.last), w.timeout)
				}
			case <-next.C():
				waiting = false
			}
		}
	}
}

// poll reads the ManagedToken once and acts on what it shows. done means
// the command ends, with err (nil: success).
func (w *authorizeWait) poll(ctx context.Context) (done bool, err error) {
	getCtx, cancel := context.WithTimeout(ctx, authorizeGetTimeout)
	mt := &tokensv1alpha1.ManagedToken{}
	err = w.c.Get(getCtx, w.key, mt)
	cancel()
	switch {
	case ctx.Err() != nil:
		return true, w.interrupted()
	case apierrors.IsNotFound(err):
		return true, fmt.Errorf("%s was deleted while waiting for authorization request %s", objectRef(w.key.Name), w.id)
	case apierrors.IsForbidden(err):
		return true, err
	case err != nil:
		w.progress("error", fmt.Sprintf("cannot read %s (retrying): %v", objectRef(w.key.Name), err))
		return false, nil
	}
	w.shown["error"] = ""
	w.last = mt
	return w.evaluate(mt)
}

// evaluate decides from one reading of the ManagedToken.
func (w *authorizeWait) evaluate(mt *tokensv1alpha1.ManagedToken) (done bool, err error) {
	ref := objectRef(mt.Name)
	switch got := mt.Annotations[tokensv1alpha1.AuthorizeRequestAnnotation]; {
	case got == w.hash:
	case got == "":
		return true, fmt.Errorf("the %s annotation was removed from %s: this command stops waiting for request %s (its URL still works until the request expires; run authorize again to replace it)", tokensv1alpha1.AuthorizeRequestAnnotation, ref, w.id)
	case authz.RequestID(got) != "":
		return true, fmt.Errorf("another kubectl tokenkeeper authorize replaced request %s with request %s on %s: follow that one instead", w.id, authz.RequestID(got), ref)
	default:
		return true, fmt.Errorf("the %s annotation on %s was changed to something else: request %s is abandoned", tokensv1alpha1.AuthorizeRequestAnnotation, ref, w.id)
	}

	a := mt.Status.Authorization
	if a == nil || a.RequestID != w.id {
		return false, nil // not picked up yet: status shows nothing or an earlier request
	}
	w.seen = true
	line := fmt.Sprintf("request %s: %s", w.id, a.Phase)
	if a.Message != "" {
		line += ": " + oneLine(a.Message)
	}
	w.progress("phase", line)

	switch a.Phase {
	case tokensv1alpha1.AuthorizationPending:
		if a.ConsentURL == "" || w.published {
			return false, nil
		}
		u, err := consentURLWithState(a.ConsentURL, w.state)
		if err != nil {
			return true, err
		}
		w.printInstructions(mt, a, u)
		w.published = true
		if w.open {
			if err := w.OpenBrowser(u); err != nil {
				msg := strings.ReplaceAll(err.Error(), w.state, "<state>")
				fmt.Fprintf(w.ErrOut, "could not open a browser (%s): open the URL above yourself\n", msg)
			}
		}
		if w.noWait {
			fmt.Fprintf(w.ErrOut, "not waiting (--no-wait): the operator completes the authorization once you consent; follow it with kubectl tokenkeeper status -n %s %s\n", mt.Namespace, mt.Name)
			return true, nil
		}
		w.progress("wait", "waiting for consent...")
		return false, nil

	case tokensv1alpha1.AuthorizationCompleted:
		ready := meta.FindStatusCondition(mt.Status.Conditions, tokensv1alpha1.ConditionReady)
		if ready != nil && ready.Status == metav1.ConditionTrue && ready.ObservedGeneration == mt.Generation {
			_, err := fmt.Fprintf(w.Out, "%s authorized: Ready, %s\n", ref, tokenExpiryText(&mt.Status, w.Clock.Now()))
			return true, err
		}
		w.progress("wait", fmt.Sprintf("waiting for %s to become Ready (%s)...", ref, readyText(ready, mt.Generation)))
		return false, nil

	case tokensv1alpha1.AuthorizationFailed:
		return true, fmt.Errorf("authorization of %s failed (request %s): %s; fix the cause and run kubectl tokenkeeper authorize again",
			ref, w.id, orText(oneLine(a.Message), "the operator gave no reason"))

	case tokensv1alpha1.AuthorizationExpired:
		return true, fmt.Errorf("authorization request %s for %s expired: %s; run kubectl tokenkeeper authorize again",
			w.id, ref, orText(oneLine(a.Message), "no consent arrived in time"))
	}
	return false, nil // a phase this plugin does not know: keep waiting
}

// printInstructions tells the human what to do, on stdout: the only place
// the state is ever written, inside the URL.
func (w *authorizeWait) printInstructions(mt *tokensv1alpha1.ManagedToken, a *tokensv1alpha1.AuthorizationStatus, consentURL string) {
	provider := string(mt.Spec.Provider)
	if mt.Spec.AmoCRM != nil && mt.Spec.AmoCRM.Domain != "" {
		provider += ", " + mt.Spec.AmoCRM.Domain
	}
	fmt.Fprintf(w.Out, "Authorize %s (namespace %s, provider %s): open this URL in a browser, sign in and consent:\n\n    %s\n\n",
		objectRef(mt.Name), mt.Namespace, provider, consentURL)
	if a.ExpirationTimestamp != nil {
		fmt.Fprintf(w.Out, "The request expires at %s.\n", timestampText(a.ExpirationTimestamp, w.Clock.Now()))
	} else {
		fmt.Fprintf(w.Out, "The request expires about %s after the operator took it.\n", human(authz.RequestTTL))
	}
}

// consentURLWithState appends the state to the operator's consent URL. The
// URL comes from the cluster, so it is checked before a secret is added to
// it: an absolute https URL (http only on loopback, like redirect URIs),
// with no state and no fragment of its own.
func consentURLWithState(consent, state string) (string, error) {
	u, err := url.Parse(consent)
	if err != nil || !u.IsAbs() || u.Host == "" {
		return "", fmt.Errorf("the operator published a consent URL that is not an absolute URL: %q", consent)
	}
	loopback := map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}
	if u.Scheme != "https" && (u.Scheme != "http" || !loopback[u.Hostname()]) {
		return "", fmt.Errorf("refusing to add the state to a consent URL that is not https: %q", consent)
	}
	if u.Fragment != "" || strings.Contains(consent, "#") {
		return "", fmt.Errorf("refusing to add the state to a consent URL with a fragment: %q", consent)
	}
	if u.Query().Has("state") {
		return "", fmt.Errorf("the operator's consent URL already carries a state parameter: %q", consent)
	}
	sep := "&"
	if u.RawQuery == "" {
		sep = "?"
		consent = strings.TrimSuffix(consent, "?")
	}
	return consent + sep + "state=" + url.QueryEscape(state), nil
}

// progress prints line on stderr unless it is what was last printed about
// topic.
func (w *authorizeWait) progress(topic, line string) {
	if w.shown[topic] == line {
		return
	}
	w.shown[topic] = line
	fmt.Fprintln(w.ErrOut, line)
}

// interrupted is the error after Ctrl-C.
func (w *authorizeWait) interrupted() error {
	if w.published {
		return fmt.Errorf("interrupted: request %s stays open %s; if you consent with the URL above, the operator still completes it (follow it with kubectl tokenkeeper status -n %s %s)",
			w.id, w.requestExpiry(), w.key.Namespace, w.key.Name)
	}
	return fmt.Errorf("interrupted before the consent URL of request %s was printed: nobody holds its state, so it cannot complete (run kubectl tokenkeeper authorize again)", w.id)
}

// timedOut is the error when --timeout passes: what was still missing.
func (w *authorizeWait) timedOut() error {
	ref := objectRef(w.key.Name)
	head := fmt.Sprintf("timed out after %s", w.timeout)
	a := w.last.Status.Authorization
	if !w.seen || a == nil || a.RequestID != w.id {
		return fmt.Errorf("%s: the operator never picked up request %s (status.authorization of %s never showed it). %s",
			head, w.id, ref, operatorHint(w.last))
	}
	switch {
	case a.Phase == tokensv1alpha1.AuthorizationCompleted:
		ready := meta.FindStatusCondition(w.last.Status.Conditions, tokensv1alpha1.ConditionReady)
		return fmt.Errorf("%s: request %s completed, but %s is not Ready (%s); see kubectl tokenkeeper describe -n %s %s",
			head, w.id, ref, readyText(ready, w.last.Generation), w.key.Namespace, w.key.Name)
	case w.published:
		return fmt.Errorf("%s waiting for consent: the operator picked up request %s, which is still %s and stays open %s",
			head, w.id, a.Phase, w.requestExpiry())
	}
	return fmt.Errorf("%s: the operator picked up request %s (%s) but published no consent URL; see kubectl tokenkeeper describe -n %s %s",
		head, w.id, orText(oneLine(a.Message), string(a.Phase)), w.key.Namespace, w.key.Name)
}

// requestExpiry is "at <time> (in 14m)" for the request as last read.
func (w *authorizeWait) requestExpiry() string {
	if a := w.last.Status.Authorization; a != nil && a.RequestID == w.id && a.ExpirationTimestamp != nil {
		return "until " + timestampText(a.ExpirationTimestamp, w.Clock.Now())
	}
	return "for about " + human(authz.RequestTTL) + " after the operator took it"
}

// operatorHint says what the operator needs before it can publish a
// request: the authorization endpoint, and a redirect URI pointing at it.
func operatorHint(mt *tokensv1alpha1.ManagedToken) string {
	field, path, uri := "spec.facebook.redirectURI", tokensv1alpha1.FacebookCallbackPath, ""
	if mt.Spec.Facebook != nil {
		uri = mt.Spec.Facebook.RedirectURI
	}
	if mt.Spec.Provider == tokensv1alpha1.ProviderAmoCRM {
		field, path, uri = "spec.amocrm.redirectURI", tokensv1alpha1.AmoCRMCallbackPath, ""
		if mt.Spec.AmoCRM != nil {
			uri = mt.Spec.AmoCRM.RedirectURI
		}
	}
	now := "not set"
	if uri != "" {
		now = fmt.Sprintf("now %q", uri)
		if u, err := url.Parse(uri); err != nil || !strings.HasSuffix(u.Path, path) {
			now += ", which does not end in " + path
		}
	}
	return fmt.Sprintf("The operator must run with --authorization-bind-address, and %s (%s) must point to its %s, as registered with the provider.", field, now, path)
}

// readyText is the Ready condition in a few words, for progress lines.
func readyText(c *metav1.Condition, generation int64) string {
	if c == nil {
		return "no Ready condition yet"
	}
	s := "Ready=" + string(c.Status)
	if c.Reason != "" {
		s += " " + c.Reason
	}
	if c.Message != "" {
		s += ": " + oneLine(c.Message)
	}
	if c.ObservedGeneration != generation {
		s += fmt.Sprintf(" (for generation %d, current %d)", c.ObservedGeneration, generation)
	}
	return s
}

// tokenExpiryText is "token expires <time> (in 59d)" or "token never expires".
func tokenExpiryText(st *tokensv1alpha1.ManagedTokenStatus, now time.Time) string {
	if st.ExpirationTimestamp == nil {
		return "token never expires"
	}
	return "token expires " + timestampText(st.ExpirationTimestamp, now)
}

func orText(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
