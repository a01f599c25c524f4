// Package controllers holds the ManagedToken reconciler.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// Reads that decide whether to call a provider (the ManagedToken, its state
// Secret, its credentials Secret) go to the API server through APIReader, so
// a lagging cache can never cause a second refresh or the replay of a
// consumed refresh token. The cache serves watches and the output Secret.
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

	pendingOnce sync.Once
	pending     *pendingStore
}

// RefreshRecorder counts refresh attempts by outcome.
type RefreshRecorder interface {
	RecordRefresh(provider, result string)
}

// +kubebuilder:rbac:groups=tokens.tokenkeeper.dev,resources=managedtokens,verbs=get;list;watch
// +kubebuilder:rbac:groups=tokens.tokenkeeper.dev,resources=managedtokens/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=tokens.tokenkeeper.dev,resources=managedtokens/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=get;patch

// Reconcile runs one check of one ManagedToken, as a list of named steps.
func (r *ManagedTokenReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mt := &tokensv1alpha1.ManagedToken{}
	if err := r.APIReader.Get(ctx, req.NamespacedName, mt); err != nil {
		if apierrors.IsNotFound(err) {
			r.pendingStore().forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !mt.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	rn := r.begin(mt)
	if err := r.load(ctx, rn); err != nil {
		return ctrl.Result{}, err
	}
	if r.storePending(ctx, rn) {
		r.refreshOrProbe(ctx, rn)
		r.persistState(ctx, rn)
	}
	// Status is written even when publishing failed, so what was done (a
	// refresh, a handled request, a failure) is recorded before a retry.
	pubErr := r.publish(ctx, rn)
	if pubErr == nil {
		pubErr = r.restartConsumers(ctx, rn)
	}
	res, err := r.finish(ctx, rn)
	if err = errors.Join(pubErr, err); err != nil {
		return ctrl.Result{}, err
	}
	return res, nil
}

// run is the working data of one reconcile.
type run struct {
	key    types.NamespacedName
	mt     *tokensv1alpha1.ManagedToken
	before *tokensv1alpha1.ManagedToken
	now    time.Time

	prov         provider.Provider
	creds        provider.Credentials
	credsVersion string

	// state is what the state Secret holds (or the pending pair).
	state tokenState
	// stored is false while state is a pair that is not stored yet.
	stored bool
	// pendingEntry is set when state came from the pending store.
	pendingEntry *pendingEntry
	// next is a new state to store (after a bootstrap, refresh or probe).
	next *tokenState
	// obtained is true when next holds a newly issued token.
	obtained bool
	// grant is the credentials key a bootstrap consumed ("" for a refresh).
	grant string

	refreshBefore time.Duration
	checkInterval time.Duration

	// blockReason/blockMessage: a precondition failed; no provider call.
	blockReason, blockMessage string
	// failure is this reconcile's provider failure.
	failure *provider.Error
	// storeErr is set when a new pair could not be stored.
	storeErr error
	// tokenChanged: the published access token changed.
	tokenChanged bool
	// soon asks for a quick requeue (state rotated by someone else).
	soon bool
}

func (r *ManagedTokenReconciler) pendingStore() *pendingStore {
	r.pendingOnce.Do(func() {
		if r.pending == nil {
			r.pending = newPendingStore()
		}
	})
	return r.pending
}

// begin sets up a run: the effective spec values and a status baseline.
func (r *ManagedTokenReconciler) begin(mt *tokensv1alpha1.ManagedToken) *run {
	rn := &run{
		key:    client.ObjectKeyFromObject(mt),
		mt:     mt,
		before: mt.DeepCopy(),
		now:    r.Clock.Now(),
		stored: true,
	}
	rn.refreshBefore, rn.checkInterval = effectiveDurations(&mt.Spec)
	return rn
}

// effectiveDurations applies the provider-specific default of refreshBefore
// (an OpenAPI default cannot depend on another field) and the default of
// checkInterval (also defaulted by the API server).
func effectiveDurations(spec *tokensv1alpha1.ManagedTokenSpec) (refreshBefore, checkInterval time.Duration) {
	def := tokensv1alpha1.DefaultRefreshBeforeAmoCRM
	if spec.Provider == tokensv1alpha1.ProviderFacebook {
		def = tokensv1alpha1.DefaultRefreshBeforeFacebook
	}
	refreshBefore, _ = time.ParseDuration(def)
	if spec.RefreshBefore != nil && spec.RefreshBefore.Duration > 0 {
		refreshBefore = spec.RefreshBefore.Duration
	}
	checkInterval, _ = time.ParseDuration(tokensv1alpha1.DefaultCheckInterval)
	if spec.CheckInterval != nil && spec.CheckInterval.Duration >= time.Minute {
		checkInterval = spec.CheckInterval.Duration
	}
	return refreshBefore, checkInterval
}

func (rn *run) block(reason, format string, args ...any) {
	if rn.blockReason == "" {
		rn.blockReason, rn.blockMessage = reason, fmt.Sprintf(format, args...)
	}
}

// load reads the provider, the state Secret (or a pending pair) and the
// credentials Secret.
func (r *ManagedTokenReconciler) load(ctx context.Context, rn *run) error {
	rn.prov = r.Providers[rn.mt.Spec.Provider]
	if rn.prov == nil {
		rn.block(ReasonProviderNotConfigured, "provider %s is not enabled in this operator", rn.mt.Spec.Provider)
	}

	st, found, err := r.readState(ctx, rn.mt)
	var foreign errStateNotOwned
	switch {
	case errors.As(err, &foreign):
		rn.block(ReasonStateSecretNotOwned, "%s; the operator keeps its state there and will not touch it: delete or rename that Secret", foreign.Error())
		return nil
	case err != nil:
		return err
	case !found:
		// No state Secret. If we stored one before, it was deleted: write
		// what we know again rather than lose the refresh token.
		if last, ok := r.pendingStore().lastStored(rn.key, rn.mt.UID); ok {
			st = last
			rn.pendingEntry = &pendingEntry{uid: rn.mt.UID, state: last}
		}
	}
	rn.state = st
	if p, ok := r.pendingStore().get(rn.key, rn.mt.UID); ok {
		rn.state, rn.pendingEntry = p.state, &p
	}
	if rn.pendingEntry != nil {
		rn.stored = false
	}

	ref := rn.mt.Spec.CredentialsSecretRef.Name
	sec := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: rn.mt.Namespace, Name: ref}, sec); err != nil {
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading credentials Secret %s: %w", ref, err)
		}
		rn.block(ReasonCredentialsSecretNotFound, "credentials Secret %q not found in namespace %q: create it (see config/samples)", ref, rn.mt.Namespace)
		return nil
	}
	rn.creds, rn.credsVersion = provider.Credentials(sec.Data), sec.ResourceVersion
	if rn.prov != nil {
		if err := rn.prov.ValidateCredentials(rn.creds); err != nil {
			pe := provider.AsError(err)
			rn.block(ReasonCredentialsKeyMissing, "credentials Secret %q: %s", ref, pe.Message)
		}
	}
	return nil
}

// readState reads the state Secret from the API server. A Secret of that
// name that this ManagedToken does not control blocks the run.
func (r *ManagedTokenReconciler) readState(ctx context.Context, mt *tokensv1alpha1.ManagedToken) (tokenState, bool, error) {
	sec := &corev1.Secret{}
	name := stateSecretName(mt.Name)
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: mt.Namespace, Name: name}, sec); err != nil {
		if apierrors.IsNotFound(err) {
			return tokenState{}, false, nil
		}
		return tokenState{}, false, fmt.Errorf("reading state Secret %s: %w", name, err)
	}
	if !metav1.IsControlledBy(sec, mt) {
		return tokenState{}, false, errStateNotOwned{name: name}
	}
	st, err := decodeState(sec.Data)
	if err != nil {
		// A corrupt state Secret is not silently replaced: that could drop a
		// live refresh token. Report and let a human look.
		return tokenState{}, false, fmt.Errorf("state Secret %s: %w", name, err)
	}
	return st, true, nil
}

type errStateNotOwned struct{ name string }

func (e errStateNotOwned) Error() string {
	return fmt.Sprintf("state Secret %q exists but is not controlled by this ManagedToken", e.name)
}

// storePending writes a pair that was issued but not stored yet. It returns
// true when the provider may be called in this run (nothing is pending).
func (r *ManagedTokenReconciler) storePending(ctx context.Context, rn *run) bool {
	if rn.pendingEntry == nil {
		return true
	}
	e := *rn.pendingEntry
	if err := r.writeState(ctx, rn.mt, e.state); err != nil {
		e.attempts++
		r.pendingStore().put(rn.key, e)
		rn.storeErr = err
		log.FromContext(ctx).Error(err, "new token still not stored; provider calls paused for this token", "attempt", e.attempts)
		return false
	}
	r.pendingStore().stored(rn.key, rn.mt.UID, e.state)
	rn.stored = true
	return true
}

// decisionInput gathers what decide needs from the run.
func (rn *run) decisionInput() decisionInput {
	st := &rn.mt.Status
	in := decisionInput{
		Now:            rn.now,
		Token:          rn.state.Token,
		RefreshBefore:  rn.refreshBefore,
		CheckInterval:  rn.checkInterval,
		ForceRequested: rn.forceRequest() != "",
		Halted:         st.HaltedInputs != "" && st.HaltedInputs == rn.inputs(),
		Resume:         st.HaltedInputs != "" && st.HaltedInputs != rn.inputs(),
		RefreshJitter:  tokenJitter(string(rn.mt.UID), rn.refreshBefore),
		CheckJitter:    tokenJitter(string(rn.mt.UID), rn.checkInterval),
	}
	if st.NextRetryTime != nil {
		in.RetryAt = st.NextRetryTime.Time
	}
	if st.LastCheckTime != nil {
		in.LastCheck = st.LastCheckTime.Time
	}
	in.Grant, _ = rn.bootstrapGrant()
	return in
}

// forceRequest returns the refresh-requested-at value when it is new: not
// recorded as handled in status, nor in the stored state.
func (rn *run) forceRequest() string {
	v := rn.mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation]
	if v == "" || v == rn.mt.Status.LastHandledRefreshRequest || v == rn.state.HandledRequest {
		return ""
	}
	return v
}

// inputs fingerprints what a human can change to resume after a halt. It
// holds no secret: generation, the credentials Secret's resourceVersion and
// the refresh request.
func (rn *run) inputs() string {
	return fmt.Sprintf("generation=%d,credentials=%s,refreshRequest=%s",
		rn.mt.Generation, rn.credsVersion, rn.mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation])
}

// bootstrapGrant returns the first grant in the credentials that has not
// been consumed, and its fingerprint.
func (rn *run) bootstrapGrant() (string, string) {
	if rn.prov == nil || rn.creds == nil {
		return "", ""
	}
	for _, g := range rn.prov.BootstrapGrants(rn.creds) {
		fp := fingerprint(g, rn.creds.Get(g))
		if !rn.state.hasConsumed(fp) {
			return g, fp
		}
	}
	return "", ""
}

// refreshOrProbe decides, then calls the provider when something is due.
func (r *ManagedTokenReconciler) refreshOrProbe(ctx context.Context, rn *run) {
	if rn.blockReason != "" {
		return
	}
	in := rn.decisionInput()
	act, why := decide(in)
	logger := log.FromContext(ctx)
	logger.V(1).Info("decided", "action", act.String(), "why", why)
	if act == actionNone {
		return
	}
	if in.ForceRequested {
		handled := rn.forceRequest()
		rn.mt.Status.LastHandledRefreshRequest = handled
		defer func() {
			if rn.next != nil {
				rn.next.HandledRequest = handled
			}
		}()
	}
	req := provider.Request{Spec: &rn.mt.Spec, Credentials: rn.creds}
	switch act {
	case actionBootstrap:
		grant, fp := rn.bootstrapGrant()
		tok, err := rn.prov.Bootstrap(ctx, req, grant)
		r.count(rn, "bootstrap", err)
		if err != nil {
			r.fail(ctx, rn, err)
			return
		}
		next := rn.state.withConsumed(fp)
		next.Token = tok
		rn.succeed(next, true)
		rn.grant = grant
		logger.Info("obtained a token from the credentials Secret", "grant", grant, "tokenType", tok.Type)
	case actionRefresh:
		r.refresh(ctx, rn, req)
	case actionProbe:
		tok, err := rn.prov.Probe(ctx, req, rn.state.Token)
		if err != nil {
			if pe := provider.AsError(err); pe.Kind == provider.KindTokenRejected && rn.state.Token.Refreshable {
				logger.Info("access token rejected by the provider; refreshing")
				r.refresh(ctx, rn, req)
				return
			}
			r.fail(ctx, rn, err)
			return
		}
		next := rn.state
		next.Token = tok
		rn.succeed(next, false)
	}
}

// refresh re-reads the state right before refreshing, refreshes, and on a
// terminal answer re-reads the state again to rule out a rotation that
// already happened elsewhere.
func (r *ManagedTokenReconciler) refresh(ctx context.Context, rn *run, req provider.Request) {
	logger := log.FromContext(ctx)
	if rn.stored {
		fresh, _, err := r.readState(ctx, rn.mt)
		if err != nil {
			r.fail(ctx, rn, &provider.Error{Kind: provider.KindTransient, Reason: "StateReadFailed", Message: "could not re-read the state Secret before refreshing", Op: "refresh", Err: err})
			return
		}
		if rotatedElsewhere(rn.state, fresh) {
			logger.Info("state changed since it was read; not refreshing on stale data")
			rn.state, rn.soon = fresh, true
			return
		}
	}
	sent := rn.state.Token
	tok, err := rn.prov.Refresh(ctx, req, sent)
	if err != nil {
		if pe := provider.AsError(err); pe.Kind == provider.KindReauthorize && sent.RefreshToken != "" {
			if fresh, _, rerr := r.readState(ctx, rn.mt); rerr == nil && rotatedElsewhere(rn.state, fresh) {
				logger.Info("refresh token was already rotated elsewhere; using the stored pair")
				rn.state, rn.soon = fresh, true
				return
			}
		}
		r.count(rn, "refresh", err)
		r.fail(ctx, rn, err)
		return
	}
	r.count(rn, "refresh", nil)
	next := rn.state
	next.Token = tok
	rn.succeed(next, true)
	logger.Info("refreshed the token", "tokenType", tok.Type, "expiresAt", tok.ExpiresAt)
}

// rotatedElsewhere reports whether the stored state holds a different token
// than the one this run started from.
func rotatedElsewhere(had, fresh tokenState) bool {
	if fresh.Token == nil || had.Token == nil {
		return (fresh.Token == nil) != (had.Token == nil)
	}
	return fresh.Token.AccessToken != had.Token.AccessToken || fresh.Token.RefreshToken != had.Token.RefreshToken
}

func (r *ManagedTokenReconciler) count(rn *run, op string, err error) {
	if r.Metrics == nil || op == "" {
		return
	}
	result := "success"
	if err != nil {
		result = provider.AsError(err).Kind.String()
	}
	r.Metrics.RecordRefresh(string(rn.mt.Spec.Provider), result)
}

// succeed records a successful provider call.
func (rn *run) succeed(next tokenState, obtained bool) {
	st := &rn.mt.Status
	now := metav1.NewTime(rn.now)
	st.ConsecutiveFailures = 0
	st.NextRetryTime = nil
	st.HaltedInputs = ""
	st.LastCheckTime = &now
	rn.next, rn.obtained = &next, obtained
}

// fail records a provider failure and when (or whether) to try again.
func (r *ManagedTokenReconciler) fail(ctx context.Context, rn *run, err error) {
	pe := provider.AsError(err)
	st := &rn.mt.Status
	now := metav1.NewTime(rn.now)
	st.ConsecutiveFailures++
	st.LastFailureTime = &now
	st.NextRetryTime = nil
	switch pe.Kind {
	case provider.KindReauthorize, provider.KindConfiguration, provider.KindBlocked, provider.KindTokenRejected:
		// A human must act: no more provider calls until an input changes.
		st.HaltedInputs = rn.inputs()
	default:
		wait := backoff(st.ConsecutiveFailures, rn.now, rn.state.Token, rn.checkInterval)
		if pe.Kind == provider.KindThrottled && pe.RetryAfter > 0 {
			wait = pe.RetryAfter
		}
		t := metav1.NewTime(rn.now.Add(wait))
		st.NextRetryTime = &t
	}
	rn.failure = pe
	log.FromContext(ctx).Info("provider call failed", "kind", pe.Kind.String(), "reason", pe.Reason, "op", pe.Op, "httpStatus", pe.HTTPStatus, "code", pe.Code)
}

// persistState stores a new state, first and with optimistic concurrency.
// If storing fails, the pair is kept in memory and retried, and the provider
// is not called for this token until it is stored.
func (r *ManagedTokenReconciler) persistState(ctx context.Context, rn *run) {
	if rn.next == nil {
		return
	}
	if err := r.writeState(ctx, rn.mt, *rn.next); err != nil {
		if rn.obtained {
			r.pendingStore().put(rn.key, pendingEntry{uid: rn.mt.UID, state: *rn.next, attempts: 1})
			rn.state, rn.stored, rn.storeErr = *rn.next, false, err
			log.FromContext(ctx).Error(err, "new token could not be stored; keeping it in memory and retrying")
		} else {
			rn.storeErr = err
		}
		rn.next = nil
		return
	}
	r.pendingStore().stored(rn.key, rn.mt.UID, *rn.next)
	rn.state, rn.next = *rn.next, nil
}

// writeState creates or updates the state Secret. Updates carry the
// resourceVersion just read (optimistic concurrency); on a conflict the
// Secret is read again and the write retried, because the pair being written
// is the newest one the provider issued.
func (r *ManagedTokenReconciler) writeState(ctx context.Context, mt *tokensv1alpha1.ManagedToken, st tokenState) error {
	name := stateSecretName(mt.Name)
	data := encodeState(st)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		cur := &corev1.Secret{}
		err = r.APIReader.Get(ctx, types.NamespacedName{Namespace: mt.Namespace, Name: name}, cur)
		if apierrors.IsNotFound(err) {
			sec := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: mt.Namespace, Labels: ownedLabels(mt, roleState)},
				Type:       stateSecretType,
				Data:       data,
			}
			if err = ctrl.SetControllerReference(mt, sec, r.Scheme); err != nil {
				return err
			}
			if err = r.Create(ctx, sec); apierrors.IsAlreadyExists(err) {
				continue
			}
			return err
		}
		if err != nil {
			return err
		}
		if !metav1.IsControlledBy(cur, mt) {
			return errStateNotOwned{name: name}
		}
		if sameData(cur.Data, data) {
			return nil
		}
		cur.Data = data
		if err = r.Update(ctx, cur); apierrors.IsConflict(err) {
			continue
		}
		return err
	}
	return err
}

// ownedLabels are the labels of every Secret the operator writes; the
// manager's cache selects Secrets by ManagedByLabel.
func ownedLabels(mt *tokensv1alpha1.ManagedToken, role string) map[string]string {
	return map[string]string{
		tokensv1alpha1.ManagedByLabel:    tokensv1alpha1.ManagedByValue,
		tokensv1alpha1.ManagedTokenLabel: mt.Name,
		tokensv1alpha1.SecretRoleLabel:   role,
	}
}
