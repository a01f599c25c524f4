package controllers

import (
	"context"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

const (
	// defaultKeeperInterval is how often the keeper tries again to store
	// the pairs that are still only in memory.
	defaultKeeperInterval = 5 * time.Second
	// keeperFlushMargin is how long a stopping keeper keeps trying after
	// the last spend in flight could have ended (its spend timeout). The
	// manager's graceful shutdown timeout (75s by default) is longer than
	// both together (45s + 15s).
	keeperFlushMargin = 15 * time.Second
	// keeperFlushRetry is how often a stopping keeper tries.
	keeperFlushRetry = 200 * time.Millisecond
	// defaultKeeperMinAge: a running keeper leaves a pair alone for its
	// first second, while the run that left it pending writes its status
	// (StateNotStored). Storing it sooner could let the leader's Ready land
	// before that write, which would then stand until the next wake.
	defaultKeeperMinAge = time.Second
)

// keeper stores the pairs this process obtained but could not store (the
// state write kept failing until the spend's deadline). Without it, only a
// reconcile of that ManagedToken retried, and reconciles run only on the
// leader: a pair obtained by an authorization callback on another replica
// stayed in that replica's memory and died with it. The keeper runs on
// every replica, leader or not, tries every few seconds, and when the
// manager stops, keeps trying until the spends in flight have ended
// (TestKeeperStoresCallbackPairWithoutReconcile; with two managers,
// TestKeeperOnReplicaThatDoesNotLead).
//
// The reconciler still stores a pending pair first thing in its run; both
// go through storePending, which serializes them per ManagedToken and never
// writes over a newer pair.
type keeper struct {
	r        *ManagedTokenReconciler
	interval time.Duration
	// minAge overrides defaultKeeperMinAge (tests; negative: none).
	minAge time.Duration
}

var _ manager.LeaderElectionRunnable = (*keeper)(nil)

// NeedLeaderElection is false: a non-leader can hold a pair too.
func (k *keeper) NeedLeaderElection() bool { return false }

// Start tries to store the pending pairs every interval until ctx is done,
// then stops as described at Settle.
func (k *keeper) Start(ctx context.Context) error {
	interval, minAge := k.interval, k.minAge
	if interval <= 0 {
		interval = defaultKeeperInterval
	}
	if minAge == 0 {
		minAge = defaultKeeperMinAge
	}
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithName("keeper"))
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			k.r.Settle(ctx)
			return nil
		case <-t.C:
			k.r.storeKept(ctx, minAge)
		}
	}
}

// Settle runs when the manager stops: from the keeper when its context
// ends, and from Run once the manager has returned. It refuses new spends,
// then stores the pairs only in memory until no spend is in flight and none
// is pending: a spend in flight at stop ends (shutdown does not cut it) and
// may leave a pair it could not store. It gives up after the spend timeout
// plus a margin (TestKeeperWaitsForSpendInFlightAtStop,
// TestLeaseLossWaitsForSpendInFlight). Several may run at once: storePending
// serializes them per ManagedToken.
func (r *ManagedTokenReconciler) Settle(ctx context.Context) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.spendTimeout()+keeperFlushMargin)
	defer cancel()
	mem := r.memory()
	mem.stop()
	for !mem.settled() {
		r.storeKept(fctx, 0)
		if mem.settled() {
			return
		}
		if sleepCtx(fctx, keeperFlushRetry) != nil {
			if n := len(mem.pendingEntries()); n > 0 {
				log.FromContext(ctx).Error(nil, "stopping with new tokens that could not be stored; they are lost with this process", "count", n)
			} else {
				log.FromContext(ctx).Info("stopping while a spend is still in flight")
			}
			return
		}
	}
}

// Run starts mgr and, when it returns for whatever reason, waits for the
// spends in flight (Settle) before returning its error. cmd/main.go runs
// the manager this way. On a SIGTERM the manager's graceful shutdown
// already waits for them (the keeper settles as it stops). On a lost lease
// it does not: controller-runtime sets its shutdown timeout to zero and
// returns at once, and main would exit with a pair in hand and not stored
// (TestLeaseLossWaitsForSpendInFlight). Finishing that write after the lease
// is gone is safe: it is conditional on the state the spend's intent was
// written on, and a new leader waits for that intent.
func (r *ManagedTokenReconciler) Run(ctx context.Context, mgr manager.Manager) error {
	return r.runWith(ctx, mgr.Start)
}

// runWith is Run with the manager's Start passed in (tests watch it return).
func (r *ManagedTokenReconciler) runWith(ctx context.Context, start func(context.Context) error) error {
	err := start(ctx)
	r.Settle(ctx)
	return err
}

// storeKept tries once to store every pair that has been only in memory for
// at least minAge.
func (r *ManagedTokenReconciler) storeKept(ctx context.Context, minAge time.Duration) {
	for key, e := range r.memory().pendingEntries() {
		if e.mt == nil || time.Since(e.since) < minAge {
			continue
		}
		lctx := log.IntoContext(ctx, log.FromContext(ctx).WithValues("managedToken", key.String()))
		r.storePending(lctx, &inputs{key: key, mt: e.mt, pending: &e})
	}
}
