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
// then stops as described at flush.
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
			k.flush(ctx)
			return nil
		case <-t.C:
			k.r.storeKept(ctx, minAge)
		}
	}
}

// flush runs when the manager stops. A spend that was in flight then ends
// (it is not cut by shutdown) and may leave a pair it could not store: the
// keeper keeps trying until no spend is in flight and no pair is pending,
// for at most the spend timeout plus a margin
// (TestKeeperWaitsForSpendInFlightAtStop).
func (k *keeper) flush(ctx context.Context) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.r.spendTimeout()+keeperFlushMargin)
	defer cancel()
	mem := k.r.memory()
	for !mem.settled() {
		k.r.storeKept(fctx, 0)
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
