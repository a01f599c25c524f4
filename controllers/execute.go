package controllers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

const (
	opRefresh   = "refresh"
	opBootstrap = "bootstrap"
)

// outcome is what execute returns: the state this run ends with, and what
// happened on the way. It holds no secret beyond the state itself.
type outcome struct {
	// state is the state after this run; rv its resourceVersion.
	state tokenState
	rv    string
	// stored is false while state holds a pair that is only in memory.
	stored bool
	// obtained: state holds a token issued in this run; grant is the
	// credentials key it came from ("" for a refresh).
	obtained bool
	grant    string
	// checked: the provider confirmed the token in this run.
	checked bool
	// failure is this run's provider failure; grantRejected a new grant the
	// provider refused while a usable token stayed in place.
	failure       *provider.Error
	grantRejected *provider.Error
	// storeErr: the state could not be written; conflict: the state changed
	// under this run, which re-reads and decides again soon.
	storeErr error
	conflict bool
	// apiErrors counts the consecutive runs of this ManagedToken, this one
	// included, that met storeErr (set by Reconcile): their back-off.
	apiErrors int32
	// deferred: the manager is stopping, so no new spend was started.
	deferred bool
	// called: the provider was called with the spent value (a conflict
	// after this point must not send it again).
	called bool
	// viaCallback: the spend exchanged a code from an authorization
	// callback.
	viaCallback bool
}

// execute carries out the plan. Spends follow the rotation protocol
// (spend); probes never write token material (probe).
func (r *ManagedTokenReconciler) execute(ctx context.Context, in *inputs, p plan) outcome {
	out := outcome{state: in.current(), rv: in.record.rv, stored: in.pending == nil}
	switch {
	case in.pending != nil:
		// First store a pair the provider issued (load sets no pending pair
		// when the state Secret itself is the problem).
		return r.storePending(ctx, in)
	case in.restore != nil:
		// The state Secret was deleted: write what we know again rather
		// than lose the refresh token, before anything else (a problem with
		// the credentials, an authorization request the lost state had
		// recorded: TestDeletedStateRestoredBeforeAuthorizationRequest).
		return r.commit(ctx, in, nil, "", *in.restore, outcome{state: *in.restore}, commitKeepingPair)
	case in.record.adopt:
		// A state Secret of an earlier ManagedToken of this name: adopt it
		// (and resume from its pair) before anything else, even while this
		// token is blocked (its credentials Secret missing, say). Left with
		// the earlier token's orphaned-at mark, it would be deleted as soon
		// as this one is deleted too, if the mark is older than the
		// retention (TestBlockedRecreateAdoptsTheOrphanedState). A state
		// Secret that is itself the problem is never adopted (load sets no
		// record then).
		log.FromContext(ctx).Info("adopting the state Secret of an earlier ManagedToken of this name")
		return r.commit(ctx, in, nil, in.record.rv, in.record.state, outcome{state: in.record.state}, commitKeepingPair)
	case in.problem != nil && in.authzRequest != "" && !in.stateBroken:
		// A token that cannot be obtained from the credentials is exactly
		// what an authorization request is for.
		return r.acceptAuthorization(ctx, in)
	case in.problem != nil:
		return out
	case in.authzRequest != "":
		// A new authorization request: record it (nothing else this run).
		return r.acceptAuthorization(ctx, in)
	}
	if p.Action == actionNone {
		return out
	}
	if in.creds == nil {
		// A call is due: now the credentials are needed.
		decidedWith := in.credsVersion
		if err := r.readCredentials(ctx, in); err != nil {
			out.storeErr = err
			return out
		}
		if in.problem != nil {
			return out
		}
		if in.credsVersion != decidedWith {
			// They changed after the watch told load they had not: the
			// decision never saw a grant they may hold now, and storing
			// their new version would hide it for good. Decide again.
			log.FromContext(ctx).V(1).Info("credentials changed since the decision; deciding again")
			out.conflict = true
			return out
		}
	}
	if p.Action == actionProbe {
		return r.probe(ctx, in, p)
	}
	return r.spend(ctx, in, p)
}

// spend runs the rotation protocol for one refresh or grant exchange:
//
//  1. record the intent (what is spent, until when) with a write
//     conditional on the resourceVersion the decision was based on (read
//     from the cache): a conflict means the cache was stale or someone else
//     moved first, and the run decides again instead of spending;
//  2. call the provider and store the outcome, as one critical section
//     that shutdown cannot cut (a bounded deadline instead);
//  3. if the outcome cannot be stored, keep a new pair in memory, retry, and
//     call the provider for nothing else until it is stored.
//
// Step 1 is for calls that use up what they send (provider.Consumes: an
// AmoCRM refresh token, any authorization code). A call that consumes
// nothing (a Facebook exchange or system-user refresh, adopting an AmoCRM
// long-lived token) writes no intent: made twice, by two managers or again
// after a crash, it only yields two valid tokens. Its outcome is stored
// only on the state it started from or over another run's bookkeeping;
// when the token, the authorization request or a spend in flight changed,
// it is dropped (see commitOnStartOnly), so it never undoes a concurrent
// spend's intent or a used authorization request
// (TestSpendIntentOnlyForConsumingCalls,
// TestUnfencedSpendDropsItsResultWhenStateMoved). A write that fails for
// another reason keeps a new token in memory, as in step 3: dropped, it
// would be fetched again at every retry while writes fail.
//
// TestCrashPoints kills or cancels the manager at each boundary.
func (r *ManagedTokenReconciler) spend(ctx context.Context, in *inputs, p plan) outcome {
	out := outcome{state: in.current(), rv: in.record.rv, stored: true}
	logger := log.FromContext(ctx)
	// Counted as in flight before the intent is written: a stopping
	// manager (Settle) either waits for this spend or finds it refused.
	end, ok := r.memory().spending()
	defer end()
	if !ok || ctx.Err() != nil {
		// Shutting down, or the lease is lost: start no new spend.
		out.deferred = true
		return out
	}
	base := in.record.state
	// The deadline counts from now, not from when the inputs were loaded
	// (which may have waited for a cache): the critical section below runs
	// for up to the spend timeout after the intent is written, and the
	// intent must not look expired to others before it ends.
	intent := &spendIntent{Started: in.now, Deadline: r.Clock.Now().Add(r.spendTimeout()), Request: in.forceRequest()}
	if p.Action == actionBootstrap {
		intent.Op = opBootstrap
		intent.Grant, intent.Spent = in.bootstrapGrant()
	} else {
		intent.Op, intent.Spent = opRefresh, spentFingerprint(base.Token)
	}
	fenced := in.callback != nil || in.prov.Consumes(intent.Grant)
	if prev := base.Intent; fenced && prev != nil && prev.Spent == intent.Spent {
		// The same value was sent before without an answer.
		intent.Unanswered = prev.Unanswered
		if intent.Unanswered == nil {
			started := prev.Started
			intent.Unanswered = &started
		}
	}
	withIntent := base.clone()
	withIntent.Intent = intent
	withIntent.CredsVersion = in.credsVersion
	if cb := in.callback; cb != nil && cb.hash != "" {
		// The same conditional write spends the authorization request: a
		// second callback with this state finds it used.
		used := in.now
		a := *withIntent.Authorization
		a.Used = &used
		withIntent.Authorization = &a
	}
	rv := in.record.rv
	if fenced {
		var err error
		rv, err = r.saveState(ctx, in.mt, in.record.rv, withIntent)
		if errors.Is(err, errConflict) {
			logger.V(1).Info("state changed since it was read; deciding again")
			out.conflict = true
			return out
		}
		if err != nil {
			out.storeErr = err
			return out
		}
	}

	// The critical section: from here the manager's context may be
	// cancelled (SIGTERM, lease loss) without cutting the call or the write,
	// and a stopping manager waits for it (Run, Settle).
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.spendTimeout())
	defer cancel()

	req := provider.Request{Spec: &in.mt.Spec, Credentials: in.creds}
	if in.callback != nil {
		req.AccountHost = in.callback.host
	}
	var tok *provider.Token
	var err error
	if p.Action == actionBootstrap {
		tok, err = in.prov.Bootstrap(cctx, req, intent.Grant)
		r.count(in, "bootstrap", err)
	} else {
		tok, err = in.prov.Refresh(cctx, req, base.Token)
		r.count(in, "refresh", err)
	}
	next, o := settle(in, withIntent, tok, err)
	o.called, o.viaCallback = true, in.callback != nil
	if o.obtained {
		logger.Info("obtained a new token", "op", intent.Op, "grant", intent.Grant, "tokenType", tok.Type, "expiresAt", tok.ExpiresAt)
	}
	if pe := o.failure; pe != nil {
		logFailure(ctx, pe)
	}
	if !fenced {
		// Nothing was used up: there is no unanswered spend for a next one
		// to know about, and no intent to leave.
		next.Intent = nil
		return r.commit(cctx, in, intent, rv, next, o, commitOnStartOnly)
	}
	return r.commit(cctx, in, intent, rv, next, o, commitKeepingPair)
}

// settle is the pure part of a spend's end: the state to store after the
// provider answered (or did not), and the outcome to report.
func settle(in *inputs, withIntent tokenState, tok *provider.Token, err error) (tokenState, outcome) {
	next, o := settleSpend(in, withIntent, tok, err)
	if a := next.Authorization; in.callback != nil && in.callback.hash != "" && a != nil {
		a.Phase, a.Message = authorizationResult(in.now, next, o)
	}
	return next, o
}

func settleSpend(in *inputs, withIntent tokenState, tok *provider.Token, err error) (tokenState, outcome) {
	intent := withIntent.Intent
	next := withIntent.clone()
	next.Intent = nil
	if intent.Request != "" {
		next.HandledRequest = intent.Request
	}
	o := outcome{}
	if err == nil {
		current := withIntent.Token
		if intent.Op == opBootstrap && in.callback == nil && current != nil && current.Refreshable && !tok.Refreshable {
			// Never downgrade a refreshable token to a monitored one by an
			// implicit bootstrap: keep the token, say why, and do not try
			// this grant again until its value changes.
			pe := &provider.Error{Kind: provider.KindConfiguration, Reason: ReasonGrantNotAdopted, Op: opBootstrap,
				Message: "the credentials Secret's " + intent.Grant + " is a token the operator cannot renew, and a renewable one is stored: it was not adopted. To switch, delete the ManagedToken's state Secret and re-create the credentials"}
			next = next.withConsumed(intent.Spent)
			next.GrantRejection = failureFrom(pe, in, nil, 1)
			o.grantRejected = pe
			return next, o
		}
		next.Token = storedForm(tok)
		next.Failure, next.GrantRejection = nil, nil
		if intent.Op == opBootstrap {
			next = next.withConsumed(intent.Spent)
		}
		o.obtained, o.checked = true, true
		if intent.Op == opBootstrap {
			o.grant = intent.Grant
		}
		return next, o
	}

	pe := provider.AsError(err)
	if pe.Kind == provider.KindTransient {
		// No definite answer: the value may have been spent. Keep the
		// intent (expired, so it blocks nobody) so that the next spend of
		// the same value knows, and retry with back-off.
		kept := *intent
		kept.Deadline = in.now
		if kept.Unanswered == nil {
			started := intent.Started
			kept.Unanswered = &started
		}
		next.Intent = &kept
	} else if intent.Unanswered != nil && pe.Kind == provider.KindReauthorize {
		// The provider now refuses a value that an earlier, unanswered
		// spend sent: that spend most likely succeeded and its answer was
		// lost. Say so rather than guess.
		pe = &provider.Error{Kind: provider.KindReauthorize, Reason: ReasonRefreshOutcomeUnknown, Op: pe.Op, HTTPStatus: pe.HTTPStatus, Code: pe.Code,
			Message: "a " + intent.Op + " sent at " + intent.Unanswered.UTC().Format(time.RFC3339) +
				" got no answer (timeout, lost connection or a stopped manager), and the provider now refuses the value it sent (" + pe.Message +
				"): the new pair was most likely issued and never received. Re-authorize: run `kubectl tokenkeeper authorize " + in.mt.Name + " -n " + in.mt.Namespace + "`, or put a new " + grantKeys(in.mt.Spec.Provider) + " into the credentials Secret"}
	}
	if intent.Op == opBootstrap && pe.Kind != provider.KindTransient && pe.Kind != provider.KindThrottled {
		if withIntent.usable(in.now) {
			// A usable token stays in place; the refused grant is reported
			// and not retried until its value changes.
			next = next.withConsumed(intent.Spent)
			next.GrantRejection = failureFrom(pe, in, nil, 1)
			o.grantRejected = pe
			return next, o
		}
		if pe.Kind == provider.KindReauthorize {
			// The provider refused the grant itself (used, expired,
			// revoked): never send it again. Other refusals (a wrong client
			// secret) halt, and the grant is tried again once the inputs
			// change.
			next = next.withConsumed(intent.Spent)
		}
	}
	next.Failure = failureFrom(pe, in, withIntent.Token, nextFailureCount(withIntent.Failure))
	o.failure = pe
	return next, o
}

// nextFailureCount is the consecutive-failure count after one more failure.
func nextFailureCount(prev *failureRecord) int32 {
	if prev == nil {
		return 1
	}
	return prev.Count + 1
}

// failureFrom builds the stored record of a failure: halted when a human
// must act, else with its retry time.
func failureFrom(pe *provider.Error, in *inputs, t *provider.Token, count int32) *failureRecord {
	f := &failureRecord{Kind: pe.Kind.String(), Reason: pe.Reason, Message: pe.Message, Op: pe.Op,
		At: in.now, Count: count, Inputs: in.inputsFingerprint()}
	switch pe.Kind {
	case provider.KindReauthorize, provider.KindConfiguration, provider.KindBlocked, provider.KindTokenRejected:
		f.Halted = true
	default:
		retryAfter := time.Duration(0)
		if pe.Kind == provider.KindThrottled {
			retryAfter = pe.RetryAfter
		}
		f.RetryAt = in.now.Add(retryDelay(count, retryAfter, in.now, t, in.checkInterval))
	}
	return f
}

// commitRule says what commit does when the stored state moved on.
type commitRule int

const (
	// commitKeepingPair writes a pair this run obtained on top of any
	// state that holds no newer pair: the value it was obtained with is
	// used up, so the pair must not be lost.
	commitKeepingPair commitRule = iota
	// commitOnStartOnly is for a spend that wrote no intent. On a conflict
	// it writes again only on the state the run started from, or, when the
	// run obtained a token, on a state that differs from it by another
	// run's bookkeeping alone, such as its failure record (same token, same
	// authorization request, no spend in flight: see unfencedMayOverwrite).
	// On anything else, that wins and this run's result is dropped.
	commitOnStartOnly
)

// commit stores next, which was decided from the state at rv. On a
// conflict it re-reads: if the stored state still is the one this run
// started from (or holds this run's intent), the write is redone on top of
// it; if it moved on, the newer state wins (but see commitKeepingPair) and
// a failure of this run is dropped (a reconciler that lost a race never
// halts a healthy token). Other write errors are retried until ctx's
// deadline; a new pair that still cannot be stored is kept in memory.
func (r *ManagedTokenReconciler) commit(ctx context.Context, in *inputs, intent *spendIntent, rv string, next tokenState, o outcome, rule commitRule) outcome {
	logger := log.FromContext(ctx)
	delay := 50 * time.Millisecond
	for {
		newRV, err := r.saveState(ctx, in.mt, rv, next)
		if err == nil {
			o.state, o.rv, o.stored = next, newRV, true
			r.memory().stored(in.key, in.mt.UID, next)
			return o
		}
		if errors.Is(err, errConflict) {
			sec, rerr := readStateSecret(ctx, r.APIReader, in.mt)
			if rerr == nil {
				fresh, problem := parseStateSecret(sec, in.mt)
				switch {
				case problem != nil:
					// Someone replaced the Secret with something we must not
					// overwrite; keep a new pair in memory.
				case rule == commitOnStartOnly && unfencedMayOverwrite(fresh.state, in.current(), o.obtained, r.Clock.Now(), in.intentGrace),
					rule != commitOnStartOnly && ours(fresh.state, in.current(), intent),
					rule == commitKeepingPair && o.obtained && !newerPair(fresh.state, next):
					// Write again on top of what is stored now (fresh.rv is
					// "" when the Secret is gone: the write creates it).
					rv = fresh.rv
					continue
				default:
					logger.Info("the stored state moved on meanwhile; keeping the newer state")
					r.memory().sawNewer(in.key, in.mt.UID, in.readRV, fresh)
					return outcome{state: fresh.state, rv: fresh.rv, stored: true, conflict: true}
				}
			}
			err = errors.Join(err, rerr)
		}
		if d, ok := ctx.Deadline(); !ok || ctx.Err() != nil || time.Now().Add(delay).After(d) {
			o.storeErr = err
			if o.obtained {
				var own *spendIntent
				if rule == commitKeepingPair {
					own = intent
				}
				r.memory().setPending(in.key, memEntry{uid: in.mt.UID, state: next, attempts: 1, mt: in.mt, since: time.Now(), intent: own})
				o.state, o.stored = next, false
				logger.Error(err, "new token could not be stored; keeping it in memory and retrying")
			} else {
				o.state, o.stored = in.current(), true
			}
			return o
		}
		time.Sleep(delay)
		delay = min(delay*2, 2*time.Second)
	}
}

// ours reports whether fresh is still the state a run started from, or
// that state with the run's own intent.
//
// A write with no spend of its own (a probe, an adoption, a restore) was
// built from started as a whole, so it is redone only on that very state:
// on one with the same token but other bookkeeping (a callback that marked
// its code consumed and its request used) it would undo that
// (TestProbeRacingOtherWriteKeepsIt).
func ours(fresh, started tokenState, intent *spendIntent) bool {
	if intent == nil {
		return sameData(encodeState(fresh), encodeState(started))
	}
	if fresh.Intent != nil && fresh.Intent.Spent == intent.Spent && fresh.Intent.Started.Equal(intent.Started) {
		return true
	}
	return spentFingerprint(fresh.Token) == spentFingerprint(started.Token) && (fresh.Intent == nil || fresh.Intent.Deadline.Before(intent.Started))
}

// unfencedMayOverwrite reports whether a spend that wrote no intent may
// write its result over fresh, the state found on a conflict, having
// started from started: when fresh is started itself; or when the run
// obtained a token and fresh holds the same token, the same authorization
// request and no spend in flight, so that what changed is at most another
// run's bookkeeping (its failure record, a grant it marked used). That
// other run (a second manager) may have sent
// the same value and been refused because this run's call used it up
// (whether a Facebook exchange does is unconfirmed); its failure must not
// halt the token this run obtained (TestUnfencedExchangeRaceLoserDoesNotHalt).
// A spend in flight, a used authorization request or another token are
// never written over (TestUnfencedSpendDropsItsResultWhenStateMoved).
func unfencedMayOverwrite(fresh, started tokenState, obtained bool, now time.Time, grace time.Duration) bool {
	if sameData(encodeState(fresh), encodeState(started)) {
		return true
	}
	return obtained && spentFingerprint(fresh.Token) == spentFingerprint(started.Token) &&
		!liveIntent(fresh, now, grace) && sameAuthorization(fresh.Authorization, started.Authorization)
}

// sameAuthorization reports whether a and b are the same authorization
// request in the same phase (a callback that used it changed it).
func sameAuthorization(a, b *authzRecord) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// liveIntent reports whether s holds a spend intent whose deadline, plus
// grace, has not passed: a spend that may still be in flight.
func liveIntent(s tokenState, now time.Time, grace time.Duration) bool {
	return s.Intent != nil && now.Before(s.Intent.Deadline.Add(grace))
}

// newerPair reports whether the stored state holds a pair obtained after
// the one this run got.
func newerPair(stored, mine tokenState) bool {
	return stored.Token != nil && mine.Token != nil && stored.Token.ObtainedAt.After(mine.Token.ObtainedAt)
}

// storePending writes a pair that was issued but not stored yet. No
// provider call happens in such a run. The reconciler and the keeper
// (keeper.go) both call it; a per-ManagedToken lock serializes them, and a
// pair that the other one stored meanwhile is found stored, not written
// again.
func (r *ManagedTokenReconciler) storePending(ctx context.Context, in *inputs) outcome {
	mem := r.memory()
	defer mem.lockStore(in.key)()
	e := *in.pending
	if cur, ok := mem.pendingPair(in.key, e.uid); !ok || !samePair(cur.state, e.state) {
		// Stored by the other one while this one waited for the lock (by
		// the keeper for the ManagedToken that obtained it, or by a
		// reconcile of one created again with its name).
		if last, _, ok := mem.lastStored(in.key); ok && samePair(last, e.state) {
			return outcome{state: last, stored: true, obtained: true}
		}
	}
	// Written only on top of a state read just now: the cache's may be
	// older than a pair stored meanwhile elsewhere (a callback on another
	// replica), which this older pair must not overwrite
	// (TestPendingPairNotWrittenBlind).
	var newRV string
	sec, err := readStateSecret(ctx, r.APIReader, in.mt)
	if err == nil {
		fresh, problem := parseStateSecret(sec, in.mt)
		if problem != nil {
			// Not a Secret this pair may be written to (see parseStateSecret).
			return r.keepPending(ctx, in.key, e, errors.New(problem.message))
		}
		if same := samePair(fresh.state, e.state); same || newerPair(fresh.state, e.state) {
			mem.stored(in.key, in.mt.UID, fresh.state)
			return outcome{state: fresh.state, rv: fresh.rv, stored: true, obtained: same}
		}
		if i := fresh.state.Intent; liveIntent(fresh.state, r.Clock.Now(), defaultIntentGrace) &&
			(e.intent == nil || i.Spent != e.intent.Spent || !i.Started.Equal(e.intent.Started)) {
			// Another spend is in flight (an authorization callback on
			// another replica): written now, this pair would erase its
			// intent and its used authorization request. Wait for it to
			// end (TestPendingPairWaitsForSpendInFlight).
			return r.keepPending(ctx, in.key, e, errors.New("another spend of this token is in progress"))
		}
		newRV, err = r.saveState(ctx, in.mt, fresh.rv, e.state)
	}
	if err != nil {
		return r.keepPending(ctx, in.key, e, err)
	}
	mem.stored(in.key, in.mt.UID, e.state)
	return outcome{state: e.state, rv: newRV, stored: true, obtained: true}
}

// keepPending keeps a pair that could not be stored in memory, to be tried
// again.
func (r *ManagedTokenReconciler) keepPending(ctx context.Context, key types.NamespacedName, e memEntry, err error) outcome {
	e.attempts++
	r.memory().setPending(key, e)
	log.FromContext(ctx).Error(err, "new token still not stored; provider calls paused for this token", "attempt", e.attempts)
	return outcome{state: e.state, stored: false, storeErr: err}
}

// samePair reports whether both states hold the same token.
func samePair(a, b tokenState) bool {
	return a.Token != nil && b.Token != nil && spentFingerprint(a.Token) == spentFingerprint(b.Token)
}

// probe checks the token. It writes no token material: only metadata the
// provider reported (expiry, scopes, type) and the failure bookkeeping, with
// a write conditional on the state it read, so a probe racing a refresh can
// never restore an older pair (TestProbeRacingRefreshNeverRestoresOldPair).
// A rejected refreshable token is refreshed, and the new one probed once;
// a second rejection halts with ReasonTokenRejectedAfterRefresh.
func (r *ManagedTokenReconciler) probe(ctx context.Context, in *inputs, p plan) outcome {
	base := in.record.state
	req := provider.Request{Spec: &in.mt.Spec, Credentials: in.creds}
	tok, err := in.prov.Probe(ctx, req, base.Token)
	// What a probe may write: bookkeeping and token metadata, never the
	// token values (see mergeMetadata).
	next := base.clone()
	next.CredsVersion = in.credsVersion
	if v := in.forceRequest(); v != "" {
		next.HandledRequest = v
	}
	if err != nil {
		pe := provider.AsError(err)
		logFailure(ctx, pe)
		if pe.Kind == provider.KindTokenRejected && base.Token.Refreshable {
			log.FromContext(ctx).Info("access token rejected by the provider; refreshing")
			out := r.spend(ctx, in, plan{Action: actionRefresh, Why: "ProbeRejected"})
			if !out.obtained || !out.stored {
				return out
			}
			return r.probeAfterRefresh(ctx, in, out)
		}
		next.Failure = failureFrom(pe, in, base.Token, nextFailureCount(base.Failure))
		return r.commit(ctx, in, nil, in.record.rv, next, outcome{failure: pe}, commitKeepingPair)
	}
	mergeMetadata(next.Token, storedForm(tok))
	next.Failure = nil
	out := outcome{state: base, rv: in.record.rv, stored: true, checked: true}
	if sameData(encodeState(next), encodeState(base)) {
		return out
	}
	return r.commit(ctx, in, nil, in.record.rv, next, out, commitKeepingPair)
}

// probeAfterRefresh probes a token obtained because the previous one was
// rejected. A rejection again is not about the token (a disabled user, an
// account the token cannot reach): calls stop with a precise reason.
func (r *ManagedTokenReconciler) probeAfterRefresh(ctx context.Context, in *inputs, out outcome) outcome {
	req := provider.Request{Spec: &in.mt.Spec, Credentials: in.creds}
	_, err := in.prov.Probe(ctx, req, out.state.Token)
	if err == nil {
		return out
	}
	pe := provider.AsError(err)
	if pe.Kind == provider.KindTokenRejected {
		pe = provider.RejectedAfterRefresh(pe)
	}
	logFailure(ctx, pe)
	next := out.state.clone()
	next.Failure = failureFrom(pe, in, next.Token, 1)
	in2 := *in
	in2.record = stateRecord{state: out.state, rv: out.rv}
	o := r.commit(ctx, &in2, nil, out.rv, next, outcome{failure: pe, obtained: true}, commitKeepingPair)
	return o
}

// mergeMetadata copies what a probe may change into t: expiry, data access
// expiry, type, scopes, and what is derived from the managed token (a Page
// token derived again, the account host after a move). Never the managed
// token or the refresh token: the write that stores this is conditional on
// the state the probe started from.
func mergeMetadata(t, probed *provider.Token) {
	if t == nil || probed == nil {
		return
	}
	t.Expires, t.ExpiresAt = probed.Expires, probed.ExpiresAt
	t.DataAccessExpiresAt = probed.DataAccessExpiresAt
	if probed.Type != "" {
		t.Type = probed.Type
	}
	if len(probed.Scopes) > 0 {
		t.Scopes = append([]string(nil), probed.Scopes...)
	}
	// What the check says is published, including nothing: with
	// spec.facebook.pageID removed the provider clears it, and the managed
	// token is published again (TestRemovingPageIDPublishesTheManagedToken).
	t.PublishedAccessToken = probed.PublishedAccessToken
	if probed.APIDomain != "" {
		t.APIDomain = probed.APIDomain
	}
}

func logFailure(ctx context.Context, pe *provider.Error) {
	log.FromContext(ctx).Info("provider call failed", "kind", pe.Kind.String(), "reason", pe.Reason, "op", pe.Op, "httpStatus", pe.HTTPStatus, "code", pe.Code)
}

func (r *ManagedTokenReconciler) count(in *inputs, op string, err error) {
	if r.Metrics == nil {
		return
	}
	result := "success"
	if err != nil {
		result = provider.AsError(err).Kind.String()
	}
	r.Metrics.RecordRefresh(string(in.mt.Spec.Provider), result)
}
