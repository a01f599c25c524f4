package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// haltSuffix ends the message of every condition that stops provider calls.
const haltSuffix = " The operator will not call the provider again for this token until spec, the credentials Secret or the " +
	tokensv1alpha1.RefreshRequestedAtAnnotation + " annotation changes."

// finish computes the status, writes it once (only when it changed), emits
// events for transitions and returns when to look again.
func (r *ManagedTokenReconciler) finish(ctx context.Context, rn *run) (ctrl.Result, error) {
	r.computeStatus(rn)
	r.emitEvents(rn)
	if !equality.Semantic.DeepEqual(rn.before.Status, rn.mt.Status) {
		if err := r.Status().Patch(ctx, rn.mt, client.MergeFrom(rn.before)); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: r.requeue(rn)}, nil
}

// requeue returns when to reconcile again.
func (r *ManagedTokenReconciler) requeue(rn *run) time.Duration {
	switch {
	case rn.soon:
		return time.Second
	case rn.storeErr != nil && !rn.stored:
		attempts := int32(1)
		if e, ok := r.pendingStore().get(rn.key, rn.mt.UID); ok {
			attempts = e.attempts
		}
		return backoff(attempts, rn.now, nil, rn.checkInterval)
	}
	in := rn.decisionInput()
	if in.Halted || rn.blockReason != "" {
		// Nothing heals by itself; watches bring the next reconcile. Still
		// look once per checkInterval so status stays honest.
		in.RetryAt = time.Time{}
	}
	return requeueAfter(in)
}

// computeStatus derives the status from the stored token and this run's
// outcome. It holds no secret values.
func (r *ManagedTokenReconciler) computeStatus(rn *run) {
	st := &rn.mt.Status
	st.ObservedGeneration = rn.mt.Generation
	if h := rn.state.HandledRequest; rn.stored && h != "" && h == rn.mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation] {
		st.LastHandledRefreshRequest = h
	}
	t := rn.state.Token
	if rn.stored && t != nil {
		st.TokenType = t.Type
		st.Scopes = t.Scopes
		st.ExpirationTimestamp = optTime(t.Expires, t.ExpiresAt)
		st.DataAccessExpirationTimestamp = optTime(!t.DataAccessExpiresAt.IsZero(), t.DataAccessExpiresAt)
		st.RefreshTokenExpirationTimestamp = optTime(t.Refreshable && !t.RefreshTokenExpiresAt.IsZero(), t.RefreshTokenExpiresAt)
		st.LastRefreshTime = optTime(!t.ObtainedAt.IsZero(), t.ObtainedAt)
		next := nextRefreshTime(t, rn.refreshBefore)
		st.NextRefreshTime = optTime(t.Refreshable && !next.IsZero(), next)
	}
	now := metav1.NewTime(rn.now)
	ready := func(s metav1.ConditionStatus, reason, msg string) {
		setCondition(rn.mt, tokensv1alpha1.ConditionReady, s, reason, msg, now)
	}
	reauth := func(s metav1.ConditionStatus, reason, msg string) {
		setCondition(rn.mt, tokensv1alpha1.ConditionReauthorizationRequired, s, reason, msg, now)
	}
	reauthFromToken := func() {
		s, reason, msg := reauthorization(t, rn.now, rn.refreshBefore, rn.mt.Spec.CredentialsSecretRef.Name)
		reauth(s, reason, msg)
	}

	switch {
	case rn.blockReason != "":
		ready(metav1.ConditionFalse, rn.blockReason, rn.blockMessage)
		reauthFromToken()
	case rn.storeErr != nil && !rn.stored:
		ready(metav1.ConditionFalse, ReasonStatePending, "a new token was issued but could not be stored yet; retrying with back-off, and the provider is not called meanwhile")
		reauthFromToken()
	case rn.failure != nil:
		r.failureConditions(rn, ready, reauth, reauthFromToken)
	case st.HaltedInputs != "" && st.HaltedInputs == rn.inputs():
		// Halted earlier and nothing changed: keep the conditions that say why.
		if meta.FindStatusCondition(st.Conditions, tokensv1alpha1.ConditionReady) == nil {
			ready(metav1.ConditionFalse, "Halted", "a human must act."+haltSuffix)
		}
	case t == nil:
		ready(metav1.ConditionFalse, ReasonNoToken, "no token yet: the credentials Secret holds no grant that has not been used already; put a new one in it")
		reauth(metav1.ConditionTrue, ReasonNoToken, "put a new authorization_code, refresh_token or access_token into the credentials Secret")
	default:
		s, reason, msg := readiness(t, rn.now, st.NextRefreshTime)
		ready(s, reason, msg)
		reauthFromToken()
	}
}

// failureConditions sets the conditions after a failed provider call.
func (r *ManagedTokenReconciler) failureConditions(rn *run, ready, reauth func(metav1.ConditionStatus, string, string), reauthFromToken func()) {
	pe, t := rn.failure, rn.state.Token
	msg := pe.Op + ": " + pe.Message
	switch pe.Kind {
	case provider.KindReauthorize, provider.KindTokenRejected:
		ready(metav1.ConditionFalse, pe.Reason, msg+haltSuffix)
		reauth(metav1.ConditionTrue, pe.Reason, msg)
	case provider.KindConfiguration, provider.KindBlocked:
		ready(metav1.ConditionFalse, pe.Reason, msg+haltSuffix)
		reauthFromToken()
	default:
		retry := ""
		if nt := rn.mt.Status.NextRetryTime; nt != nil {
			retry = "; retrying at " + nt.UTC().Format(time.RFC3339)
		}
		if t != nil && (!t.Expires || rn.now.Before(t.ExpiresAt)) {
			ready(metav1.ConditionTrue, ReasonRefreshFailing, "the published token is still valid"+untilText(t)+", but "+msg+retry)
		} else {
			ready(metav1.ConditionFalse, pe.Reason, msg+retry)
		}
		reauthFromToken()
	}
}

// readiness reports whether the stored token can be used now.
func readiness(t *provider.Token, now time.Time, next *metav1.Time) (metav1.ConditionStatus, string, string) {
	switch {
	case !t.Expires:
		return metav1.ConditionTrue, ReasonTokenNeverExpires, "the token is valid and does not expire"
	case !now.Before(t.ExpiresAt):
		return metav1.ConditionFalse, ReasonTokenExpired, "the token expired at " + t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	msg := "the token is valid" + untilText(t)
	if next != nil {
		msg += "; next refresh at " + next.UTC().Format(time.RFC3339)
	}
	return metav1.ConditionTrue, ReasonTokenValid, msg
}

// reauthorization reports whether a human must act for a token that the
// operator cannot renew (or whose data access lapses), and by when.
func reauthorization(t *provider.Token, now time.Time, refreshBefore time.Duration, credsName string) (metav1.ConditionStatus, string, string) {
	if t == nil {
		return metav1.ConditionFalse, ReasonAuthorized, "no human action needed"
	}
	where := " and put the new token into the credentials Secret " + `"` + credsName + `"`
	switch {
	case !t.Refreshable && t.Expires && !now.Before(t.ExpiresAt):
		return metav1.ConditionTrue, ReasonTokenExpired, "the token expired at " + t.ExpiresAt.UTC().Format(time.RFC3339) + " and cannot be renewed without a human: log in again" + where
	case !t.Refreshable && t.Expires && !now.Before(t.ExpiresAt.Add(-refreshBefore)):
		return metav1.ConditionTrue, ReasonTokenExpiringSoon, "the token expires at " + t.ExpiresAt.UTC().Format(time.RFC3339) + " and cannot be renewed server-side: a human must log in again before then" + where
	case !t.DataAccessExpiresAt.IsZero() && !now.Before(t.DataAccessExpiresAt.Add(-refreshBefore)):
		return metav1.ConditionTrue, ReasonDataAccessExpiringSoon, "data access expires at " + t.DataAccessExpiresAt.UTC().Format(time.RFC3339) + ": the user must use the app (log in and re-consent) before then, or data calls fail with 190/493"
	}
	return metav1.ConditionFalse, ReasonAuthorized, "no human action needed"
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

// emitEvents records an event per condition transition and per new token;
// nothing on a reconcile that changed nothing.
func (r *ManagedTokenReconciler) emitEvents(rn *run) {
	if r.Recorder == nil {
		return
	}
	if rn.obtained && rn.stored && rn.state.Token != nil {
		if rn.grant != "" {
			r.Recorder.Eventf(rn.mt, nil, corev1.EventTypeNormal, "TokenObtained", "Bootstrap", "took a %s token from the credentials Secret's %s%s", rn.state.Token.Type, rn.grant, untilText(rn.state.Token))
		} else {
			r.Recorder.Eventf(rn.mt, nil, corev1.EventTypeNormal, "TokenRefreshed", "Refresh", "obtained a new %s token%s", rn.state.Token.Type, untilText(rn.state.Token))
		}
	}
	for _, ct := range []string{tokensv1alpha1.ConditionReady, tokensv1alpha1.ConditionReauthorizationRequired} {
		if !conditionChanged(rn.before.Status.Conditions, rn.mt.Status.Conditions, ct) {
			continue
		}
		c := meta.FindStatusCondition(rn.mt.Status.Conditions, ct)
		good := (ct == tokensv1alpha1.ConditionReady) == (c.Status == metav1.ConditionTrue)
		if good && meta.FindStatusCondition(rn.before.Status.Conditions, ct) == nil && ct != tokensv1alpha1.ConditionReady {
			continue // a first "no action needed" is not news
		}
		typ := corev1.EventTypeNormal
		if !good {
			typ = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(rn.mt, nil, typ, c.Reason, ct, "%s", c.Message)
	}
}
