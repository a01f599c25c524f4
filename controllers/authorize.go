package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/authz"
	"github.com/tokenkeeper/tokenkeeper/internal/callback"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// One-time authorization (kubectl tokenkeeper authorize):
//
//  1. The command mints a state and puts only its hash in the
//     authorize-request annotation (internal/authz).
//  2. A reconcile accepts the request: it stores the hash, the
//     ManagedToken's UID, a deadline (authz.RequestTTL) and the consent URL
//     in the state Secret, and projects them into status.authorization,
//     where the command finds the consent URL.
//  3. The provider redirects the human's browser (or, for an AmoCRM
//     installation from inside the account, sends a request itself) to the
//     authorization endpoint. HandleCallback checks the state, the
//     ManagedToken and, for AmoCRM, the referer, without any write or
//     provider call, and then exchanges the code through the rotation
//     protocol of every spend (execute.go): the intent write that precedes
//     the exchange also marks the request used, conditionally on the state
//     it checked, so a state is spent at most once.

const (
	// grantAuthorizationCode is the credentials key under which a
	// callback's code is offered to the provider (both providers take it).
	grantAuthorizationCode = "authorization_code"
	// authzRequestLabel on a state Secret holds the first 40 hex digits of
	// its request's hash, so a callback finds the Secret with one label
	// selector (from the cache) instead of reading every state Secret.
	authzRequestLabel = "tokens.tokenkeeper.dev/authorization-request"
	// callbackAttempts bounds how often a callback re-reads after a
	// conflict before the exchange (nothing was spent then).
	callbackAttempts = 3
	// defaultCallbackWait bounds how long a callback waits for a spend in
	// progress (a refresh of the same token) to end before it spends its
	// code (ManagedTokenReconciler.CallbackWait).
	defaultCallbackWait = 20 * time.Second

	eventAuthorizationRequested = "AuthorizationRequested"
	eventAuthorizationCompleted = "AuthorizationCompleted"
	eventAuthorizationFailed    = "AuthorizationFailed"
	eventAuthorizationExpired   = "AuthorizationExpired"
	eventAuthorizationRefused   = "AuthorizationRefused"
)

// replayedMessage answers a callback whose request a callback already took.
const replayedMessage = "this authorization request was already used: run kubectl tokenkeeper authorize again"

// taken reports whether a callback already took the request (its code is
// being, or was, exchanged, or consent was denied).
func (a *authzRecord) taken() bool { return a.Used != nil || a.Phase != "" }

// callbackGrant is a code an authorization callback brought.
type callbackGrant struct {
	code string
	// host is the AmoCRM account host the referer named ("" for Facebook).
	host string
	// hash is the request's hash; "" for an unsolicited AmoCRM code.
	hash string
}

// requestKey is how an annotation value is recorded: the hash itself when
// well formed, else a fixed-size marker of the malformed value.
func requestKey(v string) string {
	if authz.ValidHash(v) {
		return v
	}
	return "invalid:" + authz.Hash(v)[len(authz.HashPrefix):]
}

// newAuthorizationRequest returns the annotation's request key when the
// stored state does not hold that request for this ManagedToken yet.
func newAuthorizationRequest(mt *tokensv1alpha1.ManagedToken, cur *authzRecord) string {
	v := mt.Annotations[tokensv1alpha1.AuthorizeRequestAnnotation]
	if v == "" {
		return ""
	}
	k := requestKey(v)
	if cur != nil && cur.Hash == k && cur.UID == string(mt.UID) {
		return ""
	}
	return k
}

// authzLabelValue is the label a state Secret carries for its request.
func authzLabelValue(a *authzRecord) string {
	if a == nil || !authz.ValidHash(a.Hash) {
		return ""
	}
	return authzLabelOf(a.Hash)
}

// authzLabelOf is the authzRequestLabel value of a well-formed hash.
func authzLabelOf(hash string) string {
	return hash[len(authz.HashPrefix) : len(authz.HashPrefix)+40]
}

// acceptAuthorization records a new authorization request in the state
// Secret (a conditional write, like every state write).
func (r *ManagedTokenReconciler) acceptAuthorization(ctx context.Context, in *inputs) outcome {
	out := outcome{state: in.current(), rv: in.record.rv, stored: true}
	rec := &authzRecord{Hash: in.authzRequest, UID: string(in.mt.UID), Accepted: in.now, Expires: in.now.Add(authz.RequestTTL)}
	rec.Accepted, rec.Expires = rec.Accepted.UTC().Truncate(time.Second), rec.Expires.UTC().Truncate(time.Second)
	switch {
	case !authz.ValidHash(in.authzRequest):
		rec.Phase, rec.Message = string(tokensv1alpha1.AuthorizationFailed), "the "+tokensv1alpha1.AuthorizeRequestAnnotation+" annotation is not sha256:<64 hex digits>: start the authorization with kubectl tokenkeeper authorize"
	case r.ConsentURL == nil:
		rec.Phase, rec.Message = string(tokensv1alpha1.AuthorizationFailed), "the operator's authorization endpoint is not enabled: run the manager with --authorization-bind-address (the Helm value authorization.enabled, or the kustomize component config/components/authorization)"
	default:
		if in.creds == nil {
			if err := r.readCredentials(ctx, in); err != nil {
				out.storeErr = err
				return out
			}
		}
		u, err := r.ConsentURL(&in.mt.Spec, in.creds)
		var why string
		var pe *provider.Error
		switch {
		case in.creds == nil:
			why = fmt.Sprintf("the credentials Secret %q was not found in namespace %q", in.mt.Spec.CredentialsSecretRef.Name, in.mt.Namespace)
		case errors.As(err, &pe):
			why = pe.Message
		case err != nil:
			why = err.Error()
		}
		if why != "" {
			rec.Phase, rec.Message = string(tokensv1alpha1.AuthorizationFailed), "no consent page can be built: "+why
		} else {
			rec.ConsentURL = u
		}
	}
	next := in.record.state.clone()
	next.Authorization = rec
	rv, err := r.saveState(ctx, in.mt, in.record.rv, next)
	switch {
	case err == errConflict:
		out.conflict = true
	case err != nil:
		out.storeErr = err
	default:
		log.FromContext(ctx).Info("authorization requested", "requestID", authz.RequestID(rec.Hash), "expires", rec.Expires, "phase", rec.Phase)
		out.state, out.rv = next, rv
	}
	return out
}

// authorizationResult is the recorded end of a request after its code was
// exchanged: Completed with the token, or Failed with the provider's words.
func authorizationResult(now time.Time, next tokenState, o outcome) (string, string) {
	at := now.UTC().Format(time.RFC3339)
	switch {
	case o.obtained && next.Token != nil:
		return string(tokensv1alpha1.AuthorizationCompleted), "authorized at " + at + ": obtained a " + next.Token.Type + " token" + untilText(next.Token)
	case o.failure != nil:
		return string(tokensv1alpha1.AuthorizationFailed), "the provider refused the code at " + at + ": " + o.failure.Reason + ": " + o.failure.Message
	case o.grantRejected != nil:
		return string(tokensv1alpha1.AuthorizationFailed), "the provider's answer at " + at + " was not adopted: " + o.grantRejected.Reason + ": " + o.grantRejected.Message
	}
	return string(tokensv1alpha1.AuthorizationFailed), "the code exchange at " + at + " ended without a token"
}

// projectAuthorization is status.authorization, a pure projection of the
// stored request.
func projectAuthorization(a *authzRecord, now time.Time) *tokensv1alpha1.AuthorizationStatus {
	if a == nil {
		return nil
	}
	exp := metav1.NewTime(a.Expires)
	st := &tokensv1alpha1.AuthorizationStatus{RequestID: authz.RequestID(a.Hash), Phase: authorizationPhase(a, now), ExpirationTimestamp: &exp, Message: a.Message}
	switch st.Phase {
	case tokensv1alpha1.AuthorizationPending:
		st.ConsentURL = a.ConsentURL
		st.Message = "waiting for consent until " + a.Expires.UTC().Format(time.RFC3339) + ": open the URL kubectl tokenkeeper authorize printed"
	case tokensv1alpha1.AuthorizationExpired:
		st.Message = "no callback arrived before " + a.Expires.UTC().Format(time.RFC3339) + ": run kubectl tokenkeeper authorize again"
	case tokensv1alpha1.AuthorizationFailed:
		if a.Phase == "" {
			st.Message = "a callback took this request at " + a.Used.UTC().Format(time.RFC3339) +
				", and its outcome was never recorded (the manager stopped during the exchange, or could not store it): see the Ready condition, and run kubectl tokenkeeper authorize again if the token is not Ready"
		}
	}
	return st
}

// takenOutcomeGrace is how long after its expiry a request that a callback
// took may still wait for that callback's outcome: longer than the
// callback's wait for a spend in flight, its own spend and its publish.
const takenOutcomeGrace = 3 * time.Minute

func authorizationPhase(a *authzRecord, now time.Time) tokensv1alpha1.AuthorizationPhase {
	switch {
	case a.Phase != "":
		return tokensv1alpha1.AuthorizationPhase(a.Phase)
	case a.Used != nil && !now.Before(a.Expires.Add(takenOutcomeGrace)):
		// Taken, and its callback never recorded an outcome (a manager
		// killed during the exchange): not Pending forever
		// (TestTakenRequestWithoutOutcomeEnds).
		return tokensv1alpha1.AuthorizationFailed
	case a.Used != nil:
		// Taken by a callback whose exchange has not ended (or whose
		// outcome is not stored yet).
		return tokensv1alpha1.AuthorizationPending
	case !now.Before(a.Expires):
		return tokensv1alpha1.AuthorizationExpired
	}
	return tokensv1alpha1.AuthorizationPending
}

// authorizationWake is when a pending request expires, or a taken one
// stops waiting for its outcome (zero when none).
func authorizationWake(a *authzRecord, now time.Time) time.Duration {
	if a == nil || a.Phase != "" {
		return 0
	}
	end := a.Expires
	if a.Used != nil {
		end = a.Expires.Add(takenOutcomeGrace)
	}
	if !now.Before(end) {
		return 0
	}
	return end.Sub(now) + time.Second
}

// authorizationEvent is the event for a change of status.authorization.
func authorizationEvent(before, after *tokensv1alpha1.AuthorizationStatus) (typ, reason, note string, ok bool) {
	if after == nil || (before != nil && before.RequestID == after.RequestID && before.Phase == after.Phase) {
		return "", "", "", false
	}
	switch after.Phase {
	case tokensv1alpha1.AuthorizationPending:
		return corev1.EventTypeNormal, eventAuthorizationRequested, after.Message, true
	case tokensv1alpha1.AuthorizationCompleted:
		return corev1.EventTypeNormal, eventAuthorizationCompleted, after.Message, true
	case tokensv1alpha1.AuthorizationExpired:
		return corev1.EventTypeWarning, eventAuthorizationExpired, after.Message, true
	}
	return corev1.EventTypeWarning, eventAuthorizationFailed, after.Message, true
}

// HandleCallback is the authorization endpoint's callback.Handler. Every
// refusal happens before any write or provider call.
func (r *ManagedTokenReconciler) HandleCallback(ctx context.Context, p callback.Params) callback.Result {
	if p.State == "" {
		if p.Provider == tokensv1alpha1.ProviderAmoCRM && p.Code != "" {
			return r.unsolicited(ctx, p)
		}
		return callback.Result{Outcome: callback.MissingState, Message: "the callback carries no state: start the authorization with kubectl tokenkeeper authorize NAME"}
	}
	mt, rec, refusal := r.findRequest(ctx, p)
	if refusal != nil {
		return *refusal
	}
	name := mt.Namespace + "/" + mt.Name
	refuse := func(outcome, msg string) callback.Result {
		if r.Recorder != nil {
			r.Recorder.Eventf(mt, nil, corev1.EventTypeWarning, eventAuthorizationRefused, "Authorize", "a callback was refused (%s): %s", outcome, msg)
		}
		return callback.Result{Outcome: outcome, ManagedToken: name, Message: msg}
	}
	now := r.Clock.Now()
	switch {
	case rec.taken():
		return refuse(callback.Replayed, replayedMessage)
	case !now.Before(rec.Expires):
		return refuse(callback.Expired, "this authorization request expired at "+rec.Expires.UTC().Format(time.RFC3339)+": run kubectl tokenkeeper authorize again")
	}
	if p.Denied != "" {
		// The human declined: the request ends, and nothing is spent (the
		// provider's denial redirect need not name the account).
		return r.recordDenial(ctx, mt, rec, p)
	}
	host := ""
	if p.Provider == tokensv1alpha1.ProviderAmoCRM {
		var ok bool
		if host, ok = r.allowedReferer(ctx, mt, p.Referer); !ok {
			return refuse(callback.RefererNotAllowed, fmt.Sprintf("the account %q is not this ManagedToken's (spec.amocrm.domain %q, or a move the operator followed): authorize from the right account", p.Referer, mt.Spec.AmoCRM.Domain))
		}
	}
	return r.exchange(ctx, client.ObjectKeyFromObject(mt), callbackGrant{code: p.Code, host: host, hash: rec.Hash})
}

// findRequest finds the ManagedToken whose pending request the state
// belongs to. The comparison of hashes is constant-time.
func (r *ManagedTokenReconciler) findRequest(ctx context.Context, p callback.Params) (*tokensv1alpha1.ManagedToken, *authzRecord, *callback.Result) {
	unknown := &callback.Result{Outcome: callback.UnknownState, Message: "this authorization request is unknown: it was never made, or a newer one replaced it, or its ManagedToken was deleted. Run kubectl tokenkeeper authorize again"}
	hash := authz.Hash(p.State)
	var list corev1.SecretList
	if err := r.List(ctx, &list, client.MatchingLabels{
		tokensv1alpha1.ManagedByLabel:  tokensv1alpha1.ManagedByValue,
		tokensv1alpha1.SecretRoleLabel: roleState,
		authzRequestLabel:              authzLabelOf(hash),
	}); err != nil {
		log.FromContext(ctx).Error(err, "listing state Secrets for an authorization callback")
		return nil, nil, &callback.Result{Outcome: callback.NotStored, Message: "the operator cannot read its state right now; try again in a minute"}
	}
	for i := range list.Items {
		sec := &list.Items[i]
		mt := &tokensv1alpha1.ManagedToken{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: sec.Namespace, Name: sec.Labels[tokensv1alpha1.ManagedTokenLabel]}, mt); err != nil {
			continue
		}
		rec, problem := parseStateSecret(sec, mt)
		a := rec.state.Authorization
		if problem != nil || a == nil || !authz.Matches(p.State, a.Hash) || a.UID != string(mt.UID) {
			continue
		}
		if mt.Spec.Provider != p.Provider {
			return nil, nil, unknown
		}
		return mt, a, nil
	}
	return nil, nil, unknown
}

// allowedReferer checks an AmoCRM referer against spec.amocrm.domain and
// the account host the operator followed after a move (stored with the
// token). It returns the host to exchange the code at.
func (r *ManagedTokenReconciler) allowedReferer(ctx context.Context, mt *tokensv1alpha1.ManagedToken, referer string) (string, bool) {
	if mt.Spec.AmoCRM == nil || referer == "" {
		return "", false
	}
	if referer == mt.Spec.AmoCRM.Domain {
		return referer, true
	}
	sec, err := readStateSecret(ctx, r.Client, mt)
	if err != nil {
		return "", false
	}
	rec, problem := parseStateSecret(sec, mt)
	if problem == nil && rec.state.Token != nil && rec.state.Token.APIDomain != "" && rec.state.Token.APIDomain == referer {
		return referer, true
	}
	return "", false
}

// recordDenial records that the human refused consent: the request ends
// (Failed), with a conditional write, and nothing is spent.
func (r *ManagedTokenReconciler) recordDenial(ctx context.Context, mt *tokensv1alpha1.ManagedToken, rec *authzRecord, p callback.Params) callback.Result {
	name := mt.Namespace + "/" + mt.Name
	msg := "consent was not given at the provider (" + p.Denied + "): run kubectl tokenkeeper authorize again and approve"
	for range callbackAttempts {
		in, err := r.loadWith(ctx, client.ObjectKeyFromObject(mt), nil)
		if err != nil || in == nil || in.stateBroken {
			break
		}
		a := in.record.state.Authorization
		if a == nil || a.Hash != rec.Hash || a.taken() {
			return callback.Result{Outcome: callback.Replayed, ManagedToken: name, Message: replayedMessage}
		}
		next := in.record.state.clone()
		used := r.Clock.Now()
		next.Authorization.Used, next.Authorization.Phase, next.Authorization.Message = &used, string(tokensv1alpha1.AuthorizationFailed), msg
		if _, err := r.saveState(ctx, mt, in.record.rv, next); err == errConflict {
			continue
		} else if err != nil {
			break
		}
		return callback.Result{Outcome: callback.ConsentDenied, ManagedToken: name, Message: msg}
	}
	return callback.Result{Outcome: callback.NotStored, ManagedToken: name, Message: "the operator could not record the answer; run kubectl tokenkeeper authorize again"}
}

// exchange spends the callback's code through the rotation protocol and
// then runs the rest of a reconcile (publish, status), so the ManagedToken
// is Ready by the time the page answers. A conflict before the exchange
// (nothing spent yet) reads again and retries.
func (r *ManagedTokenReconciler) exchange(ctx context.Context, key types.NamespacedName, cb callbackGrant) callback.Result {
	name := key.Namespace + "/" + key.Name
	logger := log.FromContext(ctx).WithValues("managedToken", name)
	wait := r.CallbackWait
	if wait <= 0 {
		wait = defaultCallbackWait
	}
	waitUntil := time.Now().Add(wait)
	for attempt := 0; attempt < callbackAttempts; {
		in, err := r.loadWith(ctx, key, &cb)
		if err != nil || in == nil {
			return callback.Result{Outcome: callback.NotStored, ManagedToken: name, Message: "the ManagedToken or its state cannot be read right now; nothing was spent. Run kubectl tokenkeeper authorize again"}
		}
		if refusal := checkFresh(in, cb, name); refusal != nil {
			return *refusal
		}
		if i := in.record.state.Intent; i != nil && in.now.Before(i.Deadline.Add(in.intentGrace)) {
			// Another spend of this token is in flight (a refresh that uses
			// something up; one that does not writes no intent, and its
			// result is dropped if this callback stores first): let it end
			// and be stored, then spend the code on top of its outcome.
			if time.Now().After(waitUntil) || sleepCtx(ctx, 250*time.Millisecond) != nil {
				return callback.Result{Outcome: callback.NotStored, ManagedToken: name, Message: "a refresh of this token is still in progress; nothing was spent. Reload this page in a minute"}
			}
			continue
		}
		attempt++
		out := r.spend(ctx, in, plan{Action: actionBootstrap, Why: "AuthorizationCallback"})
		if out.conflict && !out.called {
			continue
		}
		pctx, cancel := publishContext(ctx, out)
		pub := r.publish(pctx, in, out)
		status := projectStatus(in, out, pub)
		_, err = r.finish(pctx, in, out, pub, status)
		cancel()
		if err != nil {
			logger.Error(err, "finishing after an authorization callback")
		}
		return callbackResult(in, out, pub, name)
	}
	return callback.Result{Outcome: callback.NotStored, ManagedToken: name, Message: "the ManagedToken's state kept changing; nothing was spent. Run kubectl tokenkeeper authorize again"}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// checkFresh re-checks a request on the state read from the API server
// just before the spend, and refuses what cannot go on.
func checkFresh(in *inputs, cb callbackGrant, name string) *callback.Result {
	switch {
	case in.stateBroken:
		return &callback.Result{Outcome: callback.NotStored, ManagedToken: name, Message: in.problem.message}
	case in.pending != nil:
		return &callback.Result{Outcome: callback.NotStored, ManagedToken: name, Message: "a token issued earlier is still being stored; nothing was spent. Try again in a minute"}
	case in.prov == nil:
		return &callback.Result{Outcome: callback.NotStored, ManagedToken: name, Message: in.problem.message}
	case in.problem != nil:
		return &callback.Result{Outcome: callback.ProviderError, ManagedToken: name, Message: "the code was not exchanged: " + in.problem.message}
	}
	if in.record.state.hasConsumed(fingerprint(grantAuthorizationCode, cb.code)) {
		// Spent on this token already: an unsolicited code (no request to
		// mark used) delivered again, or a reload that waited for the first
		// exchange (TestAuthorizeUnsolicitedDeliveredManyTimes).
		return &callback.Result{Outcome: callback.Replayed, ManagedToken: name, Message: replayedMessage}
	}
	if cb.hash == "" {
		return nil
	}
	a := in.record.state.Authorization
	if a == nil || a.Hash != cb.hash || a.UID != string(in.mt.UID) {
		return &callback.Result{Outcome: callback.UnknownState, ManagedToken: name, Message: "a newer authorization request replaced this one: use the newest URL"}
	}
	if a.taken() {
		return &callback.Result{Outcome: callback.Replayed, ManagedToken: name, Message: replayedMessage}
	}
	return nil
}

// callbackResult is the page's verdict on a spend.
func callbackResult(in *inputs, out outcome, pub published, name string) callback.Result {
	res := callback.Result{ManagedToken: name}
	switch {
	case out.obtained && out.stored && out.state.Token != nil && (pub.outputErr != nil || pub.problem != nil):
		// Authorized all the same: the pair is stored. The page does not
		// claim the publish; status says why it failed (OutputNotWritten,
		// SecretNotOwned).
		res.Outcome = callback.Accepted
		res.Message = "authorized: the operator obtained and stored a " + out.state.Token.Type + " token" + untilText(out.state.Token) +
			", but could not publish it in Secret " + in.mt.Spec.SecretName + " yet; kubectl tokenkeeper status shows why, and when it is Ready"
	case out.obtained && out.stored && out.state.Token != nil:
		res.Outcome = callback.Accepted
		res.Message = "authorized: the operator obtained a " + out.state.Token.Type + " token" + untilText(out.state.Token) +
			" and published it in Secret " + in.mt.Spec.SecretName + "."
	case out.obtained:
		res.Outcome = callback.NotStored
		res.Message = "the token was obtained, and the operator keeps retrying to store it; kubectl tokenkeeper status shows when it is Ready"
	case out.failure != nil:
		res.Outcome = callback.ProviderError
		res.Message = "the provider refused the code: " + out.failure.Reason + ": " + out.failure.Message
	case out.grantRejected != nil:
		res.Outcome = callback.ProviderError
		res.Message = "the provider's answer was not adopted: " + out.grantRejected.Reason + ": " + out.grantRejected.Message
	case out.deferred:
		res.Outcome = callback.NotStored
		res.Message = "the operator is stopping; nothing was spent. Run kubectl tokenkeeper authorize again in a minute"
	default:
		res.Outcome = callback.NotStored
		res.Message = "the operator could not record the authorization; nothing was spent. Run kubectl tokenkeeper authorize again"
	}
	return res
}

// unsolicited handles an AmoCRM code without our state: an administrator
// installed the integration from inside the account. Kommo documents that
// webhook with code, referer and from_widget only (no client_id). The code
// is taken only by a ManagedToken that opted in
// (spec.amocrm.acceptUnsolicitedCodes) and waits for authorization (not
// Ready, or ReauthorizationRequired), and only when exactly one such
// ManagedToken has the callback's account host and, if the callback names
// one, its client_id.
func (r *ManagedTokenReconciler) unsolicited(ctx context.Context, p callback.Params) callback.Result {
	refuse := func(msg string) callback.Result { return callback.Result{Outcome: callback.Unsolicited, Message: msg} }
	if p.Referer == "" {
		return refuse("the callback carries no state, and no referer to match it with: start the authorization with kubectl tokenkeeper authorize NAME")
	}
	var list tokensv1alpha1.ManagedTokenList
	if err := r.List(ctx, &list); err != nil {
		return callback.Result{Outcome: callback.NotStored, Message: "the operator cannot read its ManagedTokens right now; try again in a minute"}
	}
	type candidate struct {
		mt   *tokensv1alpha1.ManagedToken
		host string
	}
	var match []candidate
	for i := range list.Items {
		mt := &list.Items[i]
		if mt.Spec.Provider != tokensv1alpha1.ProviderAmoCRM || mt.Spec.AmoCRM == nil || !mt.Spec.AmoCRM.AcceptUnsolicitedCodes || !waitingForAuthorization(mt) {
			continue
		}
		host, ok := r.allowedReferer(ctx, mt, p.Referer)
		if !ok {
			continue
		}
		if p.ClientID != "" {
			creds := &corev1.Secret{}
			if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: mt.Namespace, Name: mt.Spec.CredentialsSecretRef.Name}, creds); err != nil ||
				provider.Credentials(creds.Data).Get("client_id") != p.ClientID {
				continue
			}
		}
		match = append(match, candidate{mt, host})
	}
	switch len(match) {
	case 0:
		return refuse("no ManagedToken waits for an unsolicited code from this account (and integration): opt in with spec.amocrm.acceptUnsolicitedCodes, or start with kubectl tokenkeeper authorize NAME")
	case 1:
	default:
		return refuse(fmt.Sprintf("%d ManagedTokens wait for an unsolicited code from this account; refusing to guess: start with kubectl tokenkeeper authorize NAME", len(match)))
	}
	return r.exchange(ctx, client.ObjectKeyFromObject(match[0].mt), callbackGrant{code: p.Code, host: match[0].host})
}

// waitingForAuthorization: a human must (re-)authorize this ManagedToken.
func waitingForAuthorization(mt *tokensv1alpha1.ManagedToken) bool {
	return !meta.IsStatusConditionTrue(mt.Status.Conditions, tokensv1alpha1.ConditionReady) ||
		meta.IsStatusConditionTrue(mt.Status.Conditions, tokensv1alpha1.ConditionReauthorizationRequired)
}
