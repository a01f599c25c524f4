// Package controllers holds the ManagedToken reconciler.
package controllers

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// ManagedTokenReconciler keeps the token of each ManagedToken fresh.
//
// Decisions are made from the informer caches (the ManagedToken, the
// operator's own Secrets, the credentials Secrets' metadata). Every state
// write is conditional on the resourceVersion the decision was based on
// (see saveState), and a spend first writes its intent that way, so a
// lagging cache, a second reconciler or a second manager can never make the
// operator spend a refresh token twice or store an older pair over a newer
// one: it gets a conflict and decides again (TestRaceTwoManagers,
// TestLosingRefresherNeverHalts, TestProbeRacingRefreshNeverRestoresOldPair).
type ManagedTokenReconciler struct {
	client.Client
	// APIReader reads straight from the API server.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Clock     clock.PassiveClock
	// Providers maps each provider name to its client; wired in cmd/main.go.
	Providers map[tokensv1alpha1.Provider]provider.Provider
	// Metrics, when set, counts refreshes.
	Metrics RefreshRecorder
	// SpendTimeout bounds a spend: the provider call and the state write
	// that stores its outcome. It is not cut short by shutdown or lease loss
	// (the manager's graceful shutdown timeout must exceed it). Default 45s.
	SpendTimeout time.Duration
	// OrphanRetention is how long a state Secret outlives its ManagedToken
	// (for a re-create to adopt it). Default 720h.
	OrphanRetention time.Duration
	// CredentialsVersion, when set, returns a credentials Secret's
	// resourceVersion from the metadata watch (SetupWithManager wires it).
	// When it equals the version the stored state was decided with, the
	// credentials are read from the API server only if a provider call is
	// due: a restart with every token fresh costs no per-token request.
	CredentialsVersion func(ctx context.Context, namespace, name string) (string, bool)
	// ConsentURL, when set, builds the provider's consent page for a
	// ManagedToken, without the state (wired in cmd/main.go when the
	// authorization endpoint is enabled). Nil: authorization requests are
	// answered as failed, naming --authorization-bind-address.
	ConsentURL func(spec *tokensv1alpha1.ManagedTokenSpec, creds provider.Credentials) (string, error)
	// CallbackWait bounds how long an authorization callback waits for a
	// refresh of the same token in flight before it gives up (nothing
	// spent). Default 20s.
	CallbackWait time.Duration

	memOnce sync.Once
	mem     *memory
}

// RefreshRecorder counts refresh attempts by outcome.
type RefreshRecorder interface {
	RecordRefresh(provider, result string)
}

// +kubebuilder:rbac:groups=tokens.tokenkeeper.dev,resources=managedtokens,verbs=list;watch
// +kubebuilder:rbac:groups=tokens.tokenkeeper.dev,resources=managedtokens/status,verbs=patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=patch

// Reconcile runs one check of one ManagedToken, as a list of named steps:
// load the inputs, decide (pure), execute the decision (the rotation
// protocol), publish, project the status (pure) and write it once.
func (r *ManagedTokenReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	in, err := r.load(ctx, req.NamespacedName)
	if err != nil {
		return ctrl.Result{}, err
	}
	if in == nil {
		return r.reconcileOrphan(ctx, req.NamespacedName)
	}
	p := decide(in.decisionInput())
	log.FromContext(ctx).V(1).Info("decided", "action", p.Action.String(), "why", p.Why)
	out := r.execute(ctx, in, p)
	// A pair not stored has its own count, back-off and log line
	// (keepPending, commit); this is for the other API errors.
	apiErr := out.storeErr != nil && out.stored
	out.apiErrors = r.memory().countAPIErrors(in.key, apiErr)
	if apiErr {
		log.FromContext(ctx).Error(nil, "the Kubernetes API refused a read or write this run needed; retrying with back-off",
			"error", redactAPIError(out.storeErr, out.state.Token), "consecutive", out.apiErrors)
	}
	ctx, cancel := publishContext(ctx, out)
	defer cancel()
	pub := r.publish(ctx, in, out)
	status := projectStatus(in, out, pub)
	return r.finish(ctx, in, out, pub, status)
}

// publishTimeout bounds publishing a token obtained in a run that shutdown
// has begun to cancel.
const publishTimeout = 15 * time.Second

// publishContext is the context to publish and write status in. A token
// obtained in this run is published even when shutdown (or the loss of the
// lease) began during the spend: workloads get it now, not when the next
// manager starts (TestRaceTwoManagers stops both managers mid-rotation and
// checks output and state agree). The manager's graceful shutdown timeout
// covers the spend and this.
func publishContext(ctx context.Context, out outcome) (context.Context, context.CancelFunc) {
	if !out.obtained || !out.stored {
		return ctx, func() {}
	}
	return context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
}

func (r *ManagedTokenReconciler) memory() *memory {
	r.memOnce.Do(func() {
		if r.mem == nil {
			r.mem = newMemory()
		}
	})
	return r.mem
}

func (r *ManagedTokenReconciler) spendTimeout() time.Duration {
	if r.SpendTimeout > 0 {
		return r.SpendTimeout
	}
	return 45 * time.Second
}

// inputs is what load returns: everything a decision and its execution
// need, read once.
type inputs struct {
	key types.NamespacedName
	mt  *tokensv1alpha1.ManagedToken
	now time.Time

	prov         provider.Provider
	creds        provider.Credentials
	credsVersion string

	// record is the stored state and the resourceVersion it was read at.
	record stateRecord
	// readRV is the resourceVersion the read returned, older than record's
	// when record is a version the cache had not caught up with.
	readRV string
	// pending is a pair issued but not stored yet (from memory); restore is
	// a stored state whose Secret was deleted (from memory).
	pending *memEntry
	restore *tokenState

	// problem is a precondition that failed: no provider call this time.
	problem *stateProblem
	// stateBroken: the problem is the state Secret itself (corrupt, not
	// ours), which must not be written.
	stateBroken bool

	// authzRequest is the authorize-request annotation's key (see
	// requestKey) when it names a request the state does not hold yet.
	authzRequest string
	// callback is the code of an authorization callback being exchanged.
	callback *callbackGrant

	refreshBefore, checkInterval time.Duration
	refreshJitter, checkJitter   float64
	intentGrace                  time.Duration
}

// load reads the ManagedToken and its state from the cache, and the
// credentials Secret from the API server. It returns nil inputs when the
// ManagedToken is gone.
func (r *ManagedTokenReconciler) load(ctx context.Context, key types.NamespacedName) (*inputs, error) {
	return r.loadWith(ctx, key, nil)
}

// loadWith is load; with a callback it reads the state Secret and the
// credentials from the API server (a code must be spent on the freshest
// state, not on a cache that may lag) and offers the callback's code as the
// grant.
func (r *ManagedTokenReconciler) loadWith(ctx context.Context, key types.NamespacedName, cb *callbackGrant) (*inputs, error) {
	mt := &tokensv1alpha1.ManagedToken{}
	if err := r.Get(ctx, key, mt); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	r.memory().catchUp(key, mt)
	in := &inputs{
		key: key, mt: mt, now: r.Clock.Now(),
		refreshJitter: tokenJitter(string(mt.UID)),
		checkJitter:   tokenJitter("check/" + string(mt.UID)),
		intentGrace:   defaultIntentGrace,
		callback:      cb,
	}
	in.checkInterval = effectiveCheckInterval(&mt.Spec)
	in.prov = r.Providers[mt.Spec.Provider]
	if in.prov == nil {
		in.block(ReasonProviderNotConfigured, "provider %s is not enabled in this operator", mt.Spec.Provider)
	}

	var stateReader client.Reader = r.Client
	if cb != nil {
		stateReader = r.APIReader
	}
	sec, err := readStateSecret(ctx, stateReader, mt)
	if err != nil {
		return nil, err
	}
	if sec == nil && cb == nil && r.memory().isUnlabelled(key, mt.UID) {
		// A Secret the cache cannot show holds the state Secret's name
		// (noteUnlabelledState): read it live until it is gone.
		if sec, err = readStateSecret(ctx, r.APIReader, mt); err != nil {
			return nil, err
		}
		if sec == nil || sec.Labels[tokensv1alpha1.ManagedByLabel] == tokensv1alpha1.ManagedByValue {
			r.memory().setUnlabelled(key, mt.UID, false)
		}
	}
	rec, problem := parseStateSecret(sec, mt)
	if problem != nil {
		in.problem, in.stateBroken = problem, true
		return in, nil
	}
	mem := r.memory()
	// A version the cache has not caught up with yet, if a conflict showed
	// one (see newerState).
	in.record, in.readRV = mem.catchUpState(key, mt.UID, rec), rec.rv
	in.authzRequest = newAuthorizationRequest(mt, in.record.state.Authorization)
	if e, ok := mem.pendingFor(key, mt); ok {
		in.pending = &e
	} else if sec == nil {
		if last, uid, ok := mem.lastStored(key); ok && uid == mt.UID {
			in.restore = &last
		}
	}
	in.refreshBefore = effectiveRefreshBefore(&mt.Spec, in.current().Token)

	// A token decided before (its state names the credentials' version)
	// looks the version up in the watch, which may wait for the watch to
	// sync after a restart; a new one reads the Secret at once. So does one
	// with no token or a failure on record: its grant may have been tried
	// without being used up (a transient failure of a first exchange), and
	// must be seen to be tried again (TestUntriedGrantIsNotHiddenByTheWatch).
	if st := in.current(); r.CredentialsVersion != nil && in.problem == nil && cb == nil && st.CredsVersion != "" && st.Token != nil && st.Failure == nil {
		if rv, ok := r.CredentialsVersion(ctx, mt.Namespace, mt.Spec.CredentialsSecretRef.Name); ok && rv == st.CredsVersion {
			// Unchanged since the stored state was decided with them: no
			// new grant can be there. Read them when a call is due.
			in.credsVersion = rv
			return in, nil
		}
	}
	return in, r.readCredentials(ctx, in)
}

// readCredentials reads the credentials Secret from the API server and
// validates it for the stored token.
func (r *ManagedTokenReconciler) readCredentials(ctx context.Context, in *inputs) error {
	mt := in.mt
	ref := mt.Spec.CredentialsSecretRef.Name
	creds := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: mt.Namespace, Name: ref}, creds); err != nil {
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading credentials Secret %s: %w", ref, err)
		}
		in.block(ReasonCredentialsSecretNotFound, "credentials Secret %q not found in namespace %q: create it (see config/samples)", ref, mt.Namespace)
		return nil
	}
	in.creds, in.credsVersion = provider.Credentials(creds.Data), creds.ResourceVersion
	if cb := in.callback; cb != nil {
		// The callback's code is offered as the credentials' grant, in
		// memory only: the operator never writes the credentials Secret.
		c := maps.Clone(in.creds)
		c[grantAuthorizationCode] = []byte(cb.code)
		in.creds = c
	}
	if in.prov != nil {
		if err := in.prov.ValidateCredentials(in.creds, in.current().Token); err != nil {
			pe := provider.AsError(err)
			if pe.Reason == ReasonAuthorizationRequired {
				in.block(ReasonAuthorizationRequired, "no token yet: run `kubectl tokenkeeper authorize %s -n %s`, or put an %s into the credentials Secret %q", mt.Name, mt.Namespace, grantKeys(mt.Spec.Provider), ref)
			} else {
				in.block(ReasonCredentialsKeyMissing, "credentials Secret %q: %s", ref, pe.Message)
			}
		}
	}
	return nil
}

// current is the state this run starts from: a pending pair, a state to
// restore, or what the state Secret holds.
func (in *inputs) current() tokenState {
	switch {
	case in.pending != nil:
		return in.pending.state
	case in.restore != nil:
		return *in.restore
	}
	return in.record.state
}

func (in *inputs) block(reason, format string, args ...any) {
	if in.problem == nil {
		in.problem = &stateProblem{reason, fmt.Sprintf(format, args...)}
	}
}

// effectiveCheckInterval applies the default of checkInterval (also
// defaulted by the API server).
func effectiveCheckInterval(spec *tokensv1alpha1.ManagedTokenSpec) time.Duration {
	d, _ := time.ParseDuration(tokensv1alpha1.DefaultCheckInterval)
	if spec.CheckInterval != nil && spec.CheckInterval.Duration >= time.Minute {
		d = spec.CheckInterval.Duration
	}
	return d
}

// effectiveRefreshBefore applies the default of refreshBefore, which
// depends on the provider and on the token (an OpenAPI default cannot): a
// token only a human can renew gets DefaultRefreshBeforeMonitored, so the
// warning comes weeks ahead; refreshable tokens get their provider's
// default. The scheduler then caps it by the token's lifetime.
func effectiveRefreshBefore(spec *tokensv1alpha1.ManagedTokenSpec, t *provider.Token) time.Duration {
	if spec.RefreshBefore != nil && spec.RefreshBefore.Duration > 0 {
		return spec.RefreshBefore.Duration
	}
	def := tokensv1alpha1.DefaultRefreshBeforeAmoCRM
	switch {
	case t != nil && !t.Refreshable:
		def = tokensv1alpha1.DefaultRefreshBeforeMonitored
	case spec.Provider == tokensv1alpha1.ProviderFacebook:
		def = tokensv1alpha1.DefaultRefreshBeforeFacebook
	}
	d, _ := time.ParseDuration(def)
	return d
}

// inputsFingerprint fingerprints what a human can change to end a halt or
// a back-off. It holds no secret: generation, the credentials Secret's
// resourceVersion and the refresh request.
func (in *inputs) inputsFingerprint() string {
	return fmt.Sprintf("generation=%d,credentials=%s,refreshRequest=%s",
		in.mt.Generation, in.credsVersion, in.mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation])
}

// forceRequest returns the refresh-requested-at value when it is new: not
// recorded as handled in the stored state (or, for states written before
// the state kept it, in status).
func (in *inputs) forceRequest() string {
	v := in.mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation]
	if v == "" || v == in.current().HandledRequest || v == in.mt.Status.LastHandledRefreshRequest {
		return ""
	}
	return v
}

// bootstrapGrant returns the first grant in the credentials that has not
// been tried, and its fingerprint.
func (in *inputs) bootstrapGrant() (string, string) {
	if cb := in.callback; cb != nil {
		return grantAuthorizationCode, fingerprint(grantAuthorizationCode, cb.code)
	}
	if in.prov == nil || in.creds == nil {
		return "", ""
	}
	st := in.current()
	for _, g := range in.prov.BootstrapGrants(in.creds) {
		fp := fingerprint(g, in.creds.Get(g))
		if !st.hasConsumed(fp) {
			return g, fp
		}
	}
	return "", ""
}

// decisionInput is what decide sees of these inputs.
func (in *inputs) decisionInput() decisionInput {
	st := in.current()
	d := decisionInput{
		Now:            in.now,
		Token:          st.Token,
		RefreshBefore:  in.refreshBefore,
		CheckInterval:  in.checkInterval,
		ForceRequested: in.forceRequest() != "",
		Blocked:        in.problem != nil || in.pending != nil,
		Inputs:         in.inputsFingerprint(),
		Failure:        st.Failure,
		Intent:         st.Intent,
		IntentGrace:    in.intentGrace,
		RefreshJitter:  in.refreshJitter,
		CheckJitter:    in.checkJitter,
	}
	if lc := in.mt.Status.LastCheckTime; lc != nil {
		d.LastCheck = lc.Time
	}
	if t := st.Token; t != nil && t.ObtainedAt.After(d.LastCheck) {
		// Obtaining a token is a check too; and status may lag in the
		// cache right after the write that stored it.
		d.LastCheck = t.ObtainedAt
	}
	d.Grant, _ = in.bootstrapGrant()
	return d
}
