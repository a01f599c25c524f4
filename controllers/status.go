package controllers

import (
	"context"
	"errors"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// haltSuffix ends the message of every condition that stops provider calls.
const haltSuffix = " The operator will not call the provider again for this token until spec, the credentials Secret or the " +
	tokensv1alpha1.RefreshRequestedAtAnnotation + " annotation changes."

// finish writes the status once (only when it changed), emits events for
// transitions and new tokens, and returns when to look again: the plan of
// the state this run ends with.
//
// A reconcile's status write carries the resourceVersion the run loaded
// (optimistic concurrency): a run that lost a race to another writer (a
// callback, a second manager) never puts its older projection over the
// newer one; it looks again soon instead, and reports no transition it did
// not write. TestStaleRunDoesNotOverwriteNewerToken fails without it. A
// callback's write does not carry it (see writeStatus).
func (r *ManagedTokenReconciler) finish(ctx context.Context, in *inputs, out outcome, pub published, status tokensv1alpha1.ManagedTokenStatus) (ctrl.Result, error) {
	written, err := r.writeStatus(ctx, in, status)
	r.emitEvents(in, out, written)
	switch {
	case apierrors.IsConflict(err) && pub.err == nil:
		log.FromContext(ctx).V(1).Info("the ManagedToken changed since this run loaded it; looking again")
		return ctrl.Result{RequeueAfter: minWake}, nil
	case err != nil:
		return ctrl.Result{}, errors.Join(pub.err, err)
	case pub.err != nil:
		return ctrl.Result{}, pub.err
	}
	return ctrl.Result{RequeueAfter: wakeAfterRun(in, out, pub, status)}, nil
}

// writeStatus patches the status when it changed, on the condition (for a
// reconcile) that the ManagedToken is still at the resourceVersion the run
// loaded. It returns the status the ManagedToken has now as far as this run
// knows: the new one, or the loaded one when the write failed.
func (r *ManagedTokenReconciler) writeStatus(ctx context.Context, in *inputs, status tokensv1alpha1.ManagedTokenStatus) (tokensv1alpha1.ManagedTokenStatus, error) {
	if equality.Semantic.DeepEqual(in.mt.Status, status) {
		return status, nil
	}
	after := in.mt.DeepCopy()
	after.Status = status
	patch := client.MergeFromWithOptions(in.mt, client.MergeFromWithOptimisticLock{})
	if in.callback != nil {
		// A callback projects the state it has just stored, the newest
		// there is, and its page promises status up to date when it
		// answers; it has no requeue to look again with. A conflict with
		// the leader's status write (a reconcile running meanwhile) must not
		// leave the page ahead of status (TestAuthorizeProviderErrorAndDenial
		// failed on that), so its write does not carry the resourceVersion.
		patch = client.MergeFrom(in.mt)
	}
	if err := r.Status().Patch(ctx, after, patch); err != nil {
		return in.mt.Status, err
	}
	r.memory().wroteStatus(in.key, in.mt.UID, in.mt.ResourceVersion, after.ResourceVersion, status)
	return status, nil
}

// publishedLaterWake is the longest wait after a run found a later token
// published than the state it loaded. The state Secret watch brings the
// newer state at once; this is the fallback should it never come (an older
// state Secret restored from a backup): a look each minute, not each second
// (TestPublishedLaterIsNoHotLoop).
const publishedLaterWake = time.Minute

// wakeAfterRun is when to reconcile again: soon after a conflict, with
// back-off while a pair is not stored, else the plan of the new state (at
// most publishedLaterWake when a later token was found published).
func wakeAfterRun(in *inputs, out outcome, pub published, status tokensv1alpha1.ManagedTokenStatus) time.Duration {
	w := planWake(in, out, pub, status)
	if pub.publishedLater {
		return min(w, publishedLaterWake)
	}
	return w
}

// planWake is wakeAfterRun before the publishedLater cap.
func planWake(in *inputs, out outcome, pub published, status tokensv1alpha1.ManagedTokenStatus) time.Duration {
	switch {
	case out.conflict, pub.superseded:
		return minWake
	case !out.stored:
		attempts := int32(1)
		if in.pending != nil {
			attempts = in.pending.attempts + 1
		}
		return retryDelay(attempts, 0, in.now, nil, in.checkInterval)
	case out.storeErr != nil:
		// Exponential, and before the token's expiry: a write refused
		// for good (an admission policy) is not tried every 5 s forever
		// (TestAPIErrorsBackOffAndAreReported).
		return retryDelay(max(out.apiErrors, 1), 0, in.now, out.state.Token, in.checkInterval)
	}
	after := *in
	after.record = stateRecord{state: out.state, rv: out.rv}
	after.pending, after.restore = nil, nil
	after.mt = in.mt.DeepCopy()
	after.mt.Status = status
	d := after.decisionInput()
	d.ForceRequested = false // handled, or deferred to the next event
	p := decide(d)
	if p.Action != actionNone {
		return minWake
	}
	if w := authorizationWake(out.state.Authorization, in.now); w > 0 && w < p.Wake {
		return w
	}
	return p.Wake
}

// projectStatus derives the status from the inputs and the outcome, as a
// pure function. It holds no secret values.
func projectStatus(in *inputs, out outcome, pub published) tokensv1alpha1.ManagedTokenStatus {
	mt := in.mt.DeepCopy()
	st := &mt.Status
	st.ObservedGeneration = mt.Generation
	state := out.state
	if h := state.HandledRequest; out.stored && h != "" && h == mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation] {
		st.LastHandledRefreshRequest = h
	}
	if out.checked {
		now := metav1.NewTime(in.now)
		st.LastCheckTime = &now
	}
	projectFailure(st, state.Failure)

	t := state.Token
	refreshBefore := effectiveRefreshBefore(&mt.Spec, t)
	var sched plan
	if t != nil {
		d := in.decisionInput()
		d.Token, d.RefreshBefore = t, refreshBefore
		sched.RefreshAt, sched.EffectiveRefreshBefore, sched.Capped = refreshSchedule(d)
	}
	if out.stored && t != nil {
		st.TokenType = t.Type
		st.Scopes = t.Scopes
		st.ExpirationTimestamp = optTime(t.Expires, t.ExpiresAt)
		st.DataAccessExpirationTimestamp = optTime(!t.DataAccessExpiresAt.IsZero(), t.DataAccessExpiresAt)
		st.RefreshTokenExpirationTimestamp = optTime(t.Refreshable && !t.RefreshTokenExpiresAt.IsZero(), t.RefreshTokenExpiresAt)
		st.LastRefreshTime = optTime(!t.ObtainedAt.IsZero(), t.ObtainedAt)
		st.NextRefreshTime = optTime(t.Refreshable && !sched.RefreshAt.IsZero(), sched.RefreshAt)
	}
	if in.problem != nil {
		// Blocked: no refresh is planned until the problem is gone.
		st.NextRefreshTime = nil
	}
	setConditions(mt, in, out, pub, sched)
	st.Authorization = projectAuthorization(state.Authorization, in.now)
	return mt.Status
}

// projectFailure reports the stored failure bookkeeping in status.
func projectFailure(st *tokensv1alpha1.ManagedTokenStatus, f *failureRecord) {
	st.ConsecutiveFailures, st.NextRetryTime, st.HaltedInputs = 0, nil, ""
	if f == nil {
		return
	}
	st.ConsecutiveFailures = f.Count
	at := metav1.NewTime(f.At.UTC().Truncate(time.Second))
	st.LastFailureTime = &at
	if f.Halted {
		st.HaltedInputs = f.Inputs
	} else {
		st.NextRetryTime = optTime(true, f.RetryAt)
	}
}

// setConditions sets Ready and ReauthorizationRequired.
func setConditions(mt *tokensv1alpha1.ManagedToken, in *inputs, out outcome, pub published, sched plan) {
	now := metav1.NewTime(in.now)
	ready := func(s metav1.ConditionStatus, reason, msg string) {
		setCondition(mt, tokensv1alpha1.ConditionReady, s, reason, msg, now)
	}
	reauth := func(s metav1.ConditionStatus, reason, msg string) {
		setCondition(mt, tokensv1alpha1.ConditionReauthorizationRequired, s, reason, msg, now)
	}
	state := out.state
	t := state.Token
	reauthFromToken := func() {
		s, reason, msg := reauthorization(t, in.now, sched.EffectiveRefreshBefore, mt)
		reauth(s, reason, msg)
	}
	f := state.Failure
	halted := f != nil && f.Halted && f.Inputs == in.inputsFingerprint()
	problem := in.problem
	if problem == nil {
		problem = pub.problem
	}

	switch {
	case problem != nil:
		ready(metav1.ConditionFalse, problem.reason, problem.message)
		switch {
		case problem.reason == ReasonAuthorizationRequired:
			reauth(metav1.ConditionTrue, problem.reason, problem.message)
		case t != nil:
			reauthFromToken()
		default:
			// No token to judge (the state Secret cannot be read, say):
			// neither "no human action needed" from before, nor a stale
			// observedGeneration (TestCorruptStateIsReportedNotOverwritten).
			reauth(metav1.ConditionUnknown, problem.reason, "cannot tell while Ready is False: "+problem.message)
		}
	case !out.stored:
		ready(metav1.ConditionFalse, ReasonStatePending, "a new token was issued but could not be stored yet; retrying with back-off, and the provider is not called meanwhile")
		reauthFromToken()
	case out.storeErr != nil:
		msg := "the Kubernetes API refused a read or write this run needed (" + redactAPIError(out.storeErr, t) + ")"
		if out.called || out.checked || out.failure != nil {
			msg += ": the provider's answer could not be stored"
		} else {
			msg += ", so no provider call could start"
		}
		msg += "; retrying with back-off"
		if state.usable(in.now) {
			ready(metav1.ConditionTrue, ReasonKubernetesAPIError, "the published token is still valid"+untilText(t)+", but "+msg)
		} else {
			ready(metav1.ConditionFalse, ReasonKubernetesAPIError, msg)
		}
		if t != nil {
			reauthFromToken()
		}
	case f != nil && (halted || f.Kind == provider.KindReauthorize.String() || f.Kind == provider.KindTokenRejected.String()):
		msg := f.Op + ": " + f.Message
		if halted {
			msg += haltSuffix
		}
		ready(metav1.ConditionFalse, f.Reason, msg)
		switch f.Kind {
		case provider.KindReauthorize.String(), provider.KindTokenRejected.String():
			reauth(metav1.ConditionTrue, f.Reason, f.Op+": "+f.Message+"; to re-authorize, run "+authorizeCommand(mt))
		default:
			reauthFromToken()
		}
	case pub.outputErr != nil:
		// Ready says whether workloads have a usable token: they do not
		// have this one (TestOutputNotWrittenIsNotReady).
		// publish runs only with a stored token, so t is not nil here.
		ready(metav1.ConditionFalse, ReasonOutputNotWritten, "the token is stored, but Secret "+strconv.Quote(mt.Spec.SecretName)+
			" could not be written: "+redactAPIError(pub.outputErr, t)+"; retrying with back-off")
		reauthFromToken()
	case f != nil:
		retry := ""
		if !f.RetryAt.IsZero() {
			retry = "; retrying at " + f.RetryAt.UTC().Format(time.RFC3339)
		}
		msg := f.Op + ": " + f.Message + retry
		if state.usable(in.now) {
			ready(metav1.ConditionTrue, ReasonRefreshFailing, "the published token is still valid"+untilText(t)+", but "+msg)
		} else {
			ready(metav1.ConditionFalse, f.Reason, msg)
		}
		reauthFromToken()
	case t == nil:
		ready(metav1.ConditionFalse, ReasonNoToken, "no token yet: the credentials Secret holds no grant that has not been tried already; run "+authorizeCommand(mt)+", or put a new grant into the credentials Secret")
		reauth(metav1.ConditionTrue, ReasonNoToken, "run "+authorizeCommand(mt)+", or put a new "+grantKeys(mt.Spec.Provider)+" into the credentials Secret")
	default:
		s, reason, msg := readiness(t, in.now, sched)
		if g := state.GrantRejection; g != nil {
			msg += "; the new grant in the credentials Secret was not used: " + g.Reason + ": " + g.Message
		}
		ready(s, reason, msg)
		reauthFromToken()
	}
}

// redactAPIError is a Kubernetes API error's text, safe for status and
// logs: an admission webhook's message is someone else's text, so the
// token's values are taken out of it (provider.Redact).
func redactAPIError(err error, t *provider.Token) string {
	if t == nil {
		return provider.Redact(err.Error())
	}
	return provider.Redact(err.Error(), t.Published(), t.AccessToken, t.RefreshToken)
}

// readiness reports whether the stored token can be used now.
func readiness(t *provider.Token, now time.Time, sched plan) (metav1.ConditionStatus, string, string) {
	switch {
	case !t.DataAccessExpiresAt.IsZero() && !now.Before(t.DataAccessExpiresAt) && (!t.Expires || now.Before(t.ExpiresAt)):
		// The token still authenticates, but Facebook answers data calls
		// with 190/493 until the user re-consents: workloads cannot use it
		// (TestFacebookDataAccessExpiry).
		return metav1.ConditionFalse, ReasonDataAccessExpired, "data access expired at " + t.DataAccessExpiresAt.UTC().Format(time.RFC3339) +
			": data calls fail with 190/493 until the user uses the app again (logs in and re-consents)"
	case !t.Expires:
		return metav1.ConditionTrue, ReasonTokenNeverExpires, "the token is valid and does not expire"
	case !now.Before(t.ExpiresAt):
		return metav1.ConditionFalse, ReasonTokenExpired, "the token expired at " + t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	msg := "the token is valid" + untilText(t)
	if t.Refreshable && !sched.RefreshAt.IsZero() {
		msg += "; next refresh at " + sched.RefreshAt.UTC().Format(time.RFC3339)
	}
	if sched.Capped {
		msg += "; refreshBefore is capped at " + sched.EffectiveRefreshBefore.String() + ", half the token's lifetime"
	}
	return metav1.ConditionTrue, ReasonTokenValid, msg
}

// reauthorization reports whether a human must act for a token that the
// operator cannot renew (or whose data access lapses), and by when.
func reauthorization(t *provider.Token, now time.Time, refreshBefore time.Duration, mt *tokensv1alpha1.ManagedToken) (metav1.ConditionStatus, string, string) {
	if t == nil {
		return metav1.ConditionFalse, ReasonAuthorized, "no human action needed"
	}
	where := ": run " + authorizeCommand(mt) + ", or put a new token into the credentials Secret " + `"` + mt.Spec.CredentialsSecretRef.Name + `"`
	switch {
	case !t.Refreshable && t.Expires && !now.Before(t.ExpiresAt):
		return metav1.ConditionTrue, ReasonTokenExpired, "the token expired at " + t.ExpiresAt.UTC().Format(time.RFC3339) + " and cannot be renewed without a human: log in again" + where
	case !t.Refreshable && t.Expires && !now.Before(t.ExpiresAt.Add(-refreshBefore)):
		return metav1.ConditionTrue, ReasonTokenExpiringSoon, "the token expires at " + t.ExpiresAt.UTC().Format(time.RFC3339) + " and cannot be renewed server-side: a human must log in again before then" + where
	case !t.DataAccessExpiresAt.IsZero() && !now.Before(t.DataAccessExpiresAt):
		return metav1.ConditionTrue, ReasonDataAccessExpired, "data access expired at " + t.DataAccessExpiresAt.UTC().Format(time.RFC3339) + ": the user must use the app (log in and re-consent)" + where
	case !t.DataAccessExpiresAt.IsZero() && !now.Before(t.DataAccessExpiresAt.Add(-refreshBefore)):
		return metav1.ConditionTrue, ReasonDataAccessExpiringSoon, "data access expires at " + t.DataAccessExpiresAt.UTC().Format(time.RFC3339) + ": the user must use the app (log in and re-consent) before then, or data calls fail with 190/493"
	}
	return metav1.ConditionFalse, ReasonAuthorized, "no human action needed"
}

// authorizeCommand is the command that answers ReauthorizationRequired.
func authorizeCommand(mt *tokensv1alpha1.ManagedToken) string {
	return "`kubectl tokenkeeper authorize " + mt.Name + " -n " + mt.Namespace + "`"
}

// grantKeys names the credentials keys that give mt's provider a new token:
// Facebook takes no refresh_token.
func grantKeys(p tokensv1alpha1.Provider) string {
	if p == tokensv1alpha1.ProviderFacebook {
		return "authorization_code or access_token"
	}
	return "authorization_code or refresh_token"
}

func untilText(t *provider.Token) string {
	if !t.Expires {
		return ""
	}
	return " until " + t.ExpiresAt.UTC().Format(time.RFC3339)
}

func optTime(ok bool, t time.Time) *metav1.Time {
	if !ok || t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &mt
}

// emitEvents records an event per condition transition, per new token and
// per refused grant; nothing on a reconcile that changed nothing.
func (r *ManagedTokenReconciler) emitEvents(in *inputs, out outcome, status tokensv1alpha1.ManagedTokenStatus) {
	if r.Recorder == nil {
		return
	}
	mt := in.mt
	if typ, reason, note, ok := authorizationEvent(mt.Status.Authorization, status.Authorization); ok {
		r.Recorder.Eventf(mt, nil, typ, reason, "Authorize", "%s", note)
	}
	if t := out.state.Token; out.obtained && out.stored && t != nil {
		switch {
		case out.viaCallback && in.callback != nil && in.callback.hash != "":
			// AuthorizationCompleted says it: one event per transition.
		case out.viaCallback:
			r.Recorder.Eventf(mt, nil, corev1.EventTypeNormal, "TokenObtained", "Authorize", "obtained a %s token%s from a code the account sent (an installation inside the account)", t.Type, untilText(t))
		case out.grant != "":
			r.Recorder.Eventf(mt, nil, corev1.EventTypeNormal, "TokenObtained", "Bootstrap", "took a %s token from the credentials Secret's %s%s", t.Type, out.grant, untilText(t))
		default:
			r.Recorder.Eventf(mt, nil, corev1.EventTypeNormal, "TokenRefreshed", "Refresh", "obtained a new %s token%s", t.Type, untilText(t))
		}
	}
	if g := out.grantRejected; g != nil && out.stored {
		r.Recorder.Eventf(mt, nil, corev1.EventTypeWarning, ReasonGrantRejected, "Bootstrap", "the new grant in the credentials Secret was not used and the current token stays: %s: %s", g.Reason, g.Message)
	}
	for _, ct := range []string{tokensv1alpha1.ConditionReady, tokensv1alpha1.ConditionReauthorizationRequired} {
		if !conditionChanged(mt.Status.Conditions, status.Conditions, ct) {
			continue
		}
		c := meta.FindStatusCondition(status.Conditions, ct)
		if c.Status == metav1.ConditionUnknown {
			continue // not news: Ready's event says why
		}
		good := (ct == tokensv1alpha1.ConditionReady) == (c.Status == metav1.ConditionTrue)
		if good && meta.FindStatusCondition(mt.Status.Conditions, ct) == nil && ct != tokensv1alpha1.ConditionReady {
			continue // a first "no action needed" is not news
		}
		if good && ct == tokensv1alpha1.ConditionReady && out.obtained && out.stored {
			continue // TokenObtained or TokenRefreshed already says it: one event per transition
		}
		typ := corev1.EventTypeNormal
		if !good {
			typ = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(mt, nil, typ, c.Reason, ct, "%s", c.Message)
	}
}
