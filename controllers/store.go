package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

const (
	// ownerUIDAnnotation on a state Secret is the UID of the ManagedToken
	// that last wrote it.
	ownerUIDAnnotation = "tokens.tokenkeeper.dev/owner-uid"
	// orphanedAtAnnotation marks a state Secret whose ManagedToken is gone.
	orphanedAtAnnotation = "tokens.tokenkeeper.dev/orphaned-at"
)

// errConflict: the state Secret changed since the decision was made. The
// caller re-reads and decides again; it never overwrites blindly.
var errConflict = errors.New("the state Secret changed since it was read")

// stateRecord is a state Secret as read: its content and the
// resourceVersion that every write based on it carries ("" when there is
// no state Secret yet, and a write creates it).
type stateRecord struct {
	state tokenState
	rv    string
	// adopt: the Secret was written for an earlier ManagedToken of this
	// name (or before state Secrets lost their owner reference), or is
	// marked orphaned; the next write adopts it.
	adopt bool
}

// stateProblem is a state Secret the operator must not use or overwrite.
type stateProblem struct{ reason, message string }

// readStateSecret returns the state Secret from reader, nil when absent.
func readStateSecret(ctx context.Context, reader client.Reader, mt *tokensv1alpha1.ManagedToken) (*corev1.Secret, error) {
	sec := &corev1.Secret{}
	name := stateSecretName(mt.Name)
	if err := reader.Get(ctx, types.NamespacedName{Namespace: mt.Namespace, Name: name}, sec); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading state Secret %s: %w", name, err)
	}
	return sec, nil
}

// parseStateSecret decodes a state Secret for mt. A Secret of that name that
// the operator did not write, one that holds another provider's token, or
// one that cannot be read is a stateProblem: the operator stops for that
// token and never overwrites it.
func parseStateSecret(sec *corev1.Secret, mt *tokensv1alpha1.ManagedToken) (stateRecord, *stateProblem) {
	if sec == nil {
		return stateRecord{}, nil
	}
	name := sec.Name
	ours := sec.Labels[tokensv1alpha1.ManagedByLabel] == tokensv1alpha1.ManagedByValue &&
		sec.Labels[tokensv1alpha1.ManagedTokenLabel] == mt.Name &&
		sec.Labels[tokensv1alpha1.SecretRoleLabel] == roleState && sec.Type == stateSecretType
	if !ours && !metav1.IsControlledBy(sec, mt) {
		return stateRecord{}, &stateProblem{ReasonStateSecretNotOwned, fmt.Sprintf(
			"Secret %q exists but was not written by tokenkeeper for this ManagedToken; the operator keeps its state there and will not touch it: delete or rename that Secret", name)}
	}
	st, err := decodeState(sec.Data)
	if err != nil {
		return stateRecord{}, &stateProblem{ReasonStateCorrupt, fmt.Sprintf(
			"state Secret %q is corrupt (%v); the operator will not overwrite it, since it may hold the only copy of a refresh token. Restore it from a backup, or delete it and put a new grant into the credentials Secret", name, err)}
	}
	if st.Provider != "" && st.Provider != string(mt.Spec.Provider) {
		return stateRecord{}, &stateProblem{ReasonStateSecretNotOwned, fmt.Sprintf(
			"state Secret %q holds a %s token of an earlier ManagedToken named %q, not a %s one; delete that Secret to start over",
			name, st.Provider, mt.Name, mt.Spec.Provider)}
	}
	adopt := sec.Annotations[ownerUIDAnnotation] != string(mt.UID) || sec.Annotations[orphanedAtAnnotation] != "" || len(sec.OwnerReferences) > 0
	return stateRecord{state: st, rv: sec.ResourceVersion, adopt: adopt}, nil
}

// saveState writes next as mt's state, conditionally: base is the
// resourceVersion the decision was based on ("" creates the Secret). Any
// change since then is errConflict. The write also adopts the Secret for mt
// (owner UID, no orphan mark, no owner reference: see state.go).
func (r *ManagedTokenReconciler) saveState(ctx context.Context, mt *tokensv1alpha1.ManagedToken, base string, next tokenState) (string, error) {
	next.Provider = string(mt.Spec.Provider)
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:            stateSecretName(mt.Name),
			Namespace:       mt.Namespace,
			Labels:          stateLabels(mt, next),
			Annotations:     map[string]string{ownerUIDAnnotation: string(mt.UID)},
			ResourceVersion: base,
		},
		Type: stateSecretType,
		Data: encodeState(next),
	}
	var err error
	if base == "" {
		err = r.Create(ctx, sec)
	} else {
		err = r.Update(ctx, sec)
	}
	switch {
	case err == nil:
		return sec.ResourceVersion, nil
	case apierrors.IsAlreadyExists(err):
		r.noteUnlabelledState(ctx, mt)
		return "", errConflict
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return "", errConflict
	}
	return "", fmt.Errorf("writing state Secret %s: %w", sec.Name, err)
}

// noteUnlabelledState runs when creating the state Secret found one of
// that name. Usually the cache had not seen it yet, and deciding again is
// enough. But a Secret without tokenkeeper's label (made by hand, or with
// the label removed) never shows in the label-selected cache: each run
// would decide to create it again, a second later, forever. So it is
// recorded, and load reads it from the API server instead, which reports it
// (StateSecretNotOwned) until it is gone
// (TestUnlabelledStateSecretIsReported).
func (r *ManagedTokenReconciler) noteUnlabelledState(ctx context.Context, mt *tokensv1alpha1.ManagedToken) {
	if r.APIReader == nil {
		return
	}
	sec, err := readStateSecret(ctx, r.APIReader, mt)
	if err != nil || sec == nil {
		return
	}
	if sec.Labels[tokensv1alpha1.ManagedByLabel] != tokensv1alpha1.ManagedByValue {
		r.memory().setUnlabelled(client.ObjectKeyFromObject(mt), mt.UID, true)
	}
}

// stateLabels are a state Secret's labels: the owned labels, and the
// label a callback finds its authorization request by.
func stateLabels(mt *tokensv1alpha1.ManagedToken, s tokenState) map[string]string {
	l := ownedLabels(mt, roleState)
	if v := authzLabelValue(s.Authorization); v != "" {
		l[authzRequestLabel] = v
	}
	return l
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

// memory keeps what this process must not forget between reconciles:
// pairs the provider issued that could not be stored yet (while one is
// pending, the provider is not called for that ManagedToken, because the
// old refresh token is already dead), the last stored state (so a deleted
// state Secret is written again), rollout restarts that failed, and state
// versions the cache has not caught up with (newerState).
// It is a last resort behind the state Secret, not a second source of truth:
// a process that dies loses it, which the README says.
type memory struct {
	mu       sync.Mutex
	pending  map[types.NamespacedName]memEntry
	last     map[types.NamespacedName]memEntry
	restarts map[types.NamespacedName]bool
	// written is the status this process last wrote, with the
	// resourceVersion the ManagedToken had before that write: while the
	// cache still shows that version, the cache has not seen the write.
	written map[types.NamespacedName]writtenStatus
	// newer is a state Secret version a commit found on the API server
	// when the cache still showed an older one (see newerState).
	newer map[types.NamespacedName]newerState
	// apiErrors counts each ManagedToken's consecutive runs that met a
	// Kubernetes API error (countAPIErrors).
	apiErrors map[types.NamespacedName]int32
	// unlabelled marks the ManagedTokens whose state Secret name is taken
	// by a Secret without tokenkeeper's label, which the label-selected
	// cache never shows (see noteUnlabelledState).
	unlabelled map[types.NamespacedName]types.UID
	// storing serializes storing a pending pair per ManagedToken: the
	// reconciler and the keeper may both try. An entry lives only while
	// someone holds or waits for it.
	storing map[types.NamespacedName]*storeLock
	// inFlight counts the spends in their critical section (provider call
	// and store): a stopping manager waits for them (Settle).
	inFlight int
	// stopping: Settle has begun, and no new spend may start.
	stopping bool
}

// storeLock is one ManagedToken's store lock and how many hold or wait
// for it.
type storeLock struct {
	mu    sync.Mutex
	users int
}

type writtenStatus struct {
	uid           types.UID
	before, after string // resourceVersions around the write
	status        tokensv1alpha1.ManagedTokenStatus
}

// newerState is a state Secret as read from the API server (rec) after a
// write based on the cache's version (before) conflicted: while the cache
// still shows before, the decision uses rec. Without it a run whose write
// records no intent (a Facebook refresh) would call the provider again at
// each retry until the cache caught up (TestLaggingCacheCallsTheProviderOnce).
type newerState struct {
	uid    types.UID
	before string
	rec    stateRecord
}

type memEntry struct {
	uid      types.UID
	state    tokenState
	attempts int32
	// mt is the ManagedToken the pair was obtained for: the keeper stores
	// a pending pair with it, without a reconcile (see keeper.go); since is
	// when the pair was left pending.
	mt    *tokensv1alpha1.ManagedToken
	since time.Time
	// intent is the spend intent the pair's run wrote (nil when it wrote
	// none): a state holding it is this pair's own, not another spend's.
	intent *spendIntent
}

func newMemory() *memory {
	return &memory{
		pending:  map[types.NamespacedName]memEntry{},
		last:     map[types.NamespacedName]memEntry{},
		restarts: map[types.NamespacedName]bool{},
		written:  map[types.NamespacedName]writtenStatus{},
		newer:    map[types.NamespacedName]newerState{},
		storing:  map[types.NamespacedName]*storeLock{},

		unlabelled: map[types.NamespacedName]types.UID{},
		apiErrors:  map[types.NamespacedName]int32{},
	}
}

// lockStore takes the per-ManagedToken lock for storing a pending pair and
// returns its unlock. The last user's unlock removes the lock, so locks of
// deleted ManagedTokens do not pile up (TestStoreLocksAreReleased).
func (m *memory) lockStore(key types.NamespacedName) func() {
	m.mu.Lock()
	l := m.storing[key]
	if l == nil {
		l = &storeLock{}
		m.storing[key] = l
	}
	l.users++
	m.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		m.mu.Lock()
		defer m.mu.Unlock()
		if l.users--; l.users == 0 {
			delete(m.storing, key)
		}
	}
}

// spending marks a spend in its critical section and returns its end. It
// returns ok false, and marks nothing, once the manager is stopping
// (Settle): a spend either counts before Settle looks, so that Settle
// waits for it, or does not start.
func (m *memory) spending() (end func(), ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping {
		return func() {}, false
	}
	m.inFlight++
	return func() {
		m.mu.Lock()
		m.inFlight--
		m.mu.Unlock()
	}, true
}

// stop marks the manager as stopping: spending refuses new spends from now.
func (m *memory) stop() {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
}

// settled reports whether no spend is in flight and no pair is pending.
func (m *memory) settled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.inFlight == 0 && len(m.pending) == 0
}

// pendingEntries returns the pairs not stored yet.
func (m *memory) pendingEntries() map[types.NamespacedName]memEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.pending)
}

// wroteStatus records a status write that took the ManagedToken from
// resourceVersion before to after.
func (m *memory) wroteStatus(key types.NamespacedName, uid types.UID, before, after string, st tokensv1alpha1.ManagedTokenStatus) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.written[key] = writtenStatus{uid: uid, before: before, after: after, status: *st.DeepCopy()}
}

// catchUp replaces mt's status and resourceVersion by those of the status
// write this process made when the cache has not seen that write yet, so a
// reconcile right after it neither writes the same status again nor reports
// the same transition twice, and its next status write (which carries the
// resourceVersion) does not conflict with this process's own last one.
func (m *memory) catchUp(key types.NamespacedName, mt *tokensv1alpha1.ManagedToken) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w, ok := m.written[key]; ok && w.uid == mt.UID && w.before == mt.ResourceVersion {
		mt.Status = *w.status.DeepCopy()
		mt.ResourceVersion = w.after
	}
}

// sawNewer records that the API server holds rec, newer than the version
// before that the cache showed. An absent Secret (before "") is not
// recorded: a state Secret deleted later must be seen as deleted.
func (m *memory) sawNewer(key types.NamespacedName, uid types.UID, before string, rec stateRecord) {
	if before == "" || rec.rv == "" || rec.rv == before {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.newer[key] = newerState{uid: uid, before: before, rec: rec}
}

// catchUpState returns the newer state recorded for rec's version, while
// the cache still shows that version, and else rec (dropping a record the
// cache has moved past). A resourceVersion is never reused, so the cache
// showing before means only that it has not seen the newer write yet.
func (m *memory) catchUpState(key types.NamespacedName, uid types.UID, rec stateRecord) stateRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.newer[key]
	if !ok {
		return rec
	}
	if n.uid == uid && n.before == rec.rv {
		return n.rec
	}
	delete(m.newer, key)
	return rec
}

// pendingPair returns the unstored pair of the ManagedToken key with that uid.
func (m *memory) pendingPair(key types.NamespacedName, uid types.UID) (memEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.pending[key]
	return e, ok && e.uid == uid
}

// setPending keeps e as key's pair that is not stored yet.
//
// A ManagedToken has one pending slot. A pair from a fenced spend (it used
// up a refresh token or code: the only copy) is never replaced by one from
// an unfenced spend (a Facebook refresh, whose old token keeps working):
// on one replica a callback's exchange and the leader's unfenced refresh
// may both fail to store (TestPendingFencedPairIsNotReplaced).
func (m *memory) setPending(key types.NamespacedName, e memEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.pending[key]; ok && cur.intent != nil && e.intent == nil && cur.uid == e.uid {
		return
	}
	m.pending[key] = e
}

// pendingFor returns the unstored pair mt starts from: its own, or one that
// an earlier ManagedToken of the same name and provider obtained and could
// not store before it was deleted (Argo CD Replace=true deletes and creates
// again within seconds). A re-created ManagedToken resumes from its
// predecessor's state Secret (see reconcileOrphan); a pair still in memory
// is that chain one step further, and the refresh token the state Secret
// holds is already spent (TestRecreatedManagedTokenResumesFromPendingPair).
func (m *memory) pendingFor(key types.NamespacedName, mt *tokensv1alpha1.ManagedToken) (memEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.pending[key]
	if !ok {
		return memEntry{}, false
	}
	return e, e.uid == mt.UID || (e.mt != nil && e.mt.Spec.Provider == mt.Spec.Provider)
}

// stored records that s is durably stored for the ManagedToken.
func (m *memory) stored(key types.NamespacedName, uid types.UID, s tokenState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, key)
	m.last[key] = memEntry{uid: uid, state: s}
}

// lastStored returns the state last stored under key and the UID of the
// ManagedToken it was stored for (a ManagedToken deleted and created again
// with the name has another).
func (m *memory) lastStored(key types.NamespacedName) (tokenState, types.UID, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.last[key]
	return e.state, e.uid, ok
}

// restartOwed reports whether a failed rollout restart must be retried.
func (m *memory) restartOwed(key types.NamespacedName) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.restarts[key]
}

func (m *memory) setRestartOwed(key types.NamespacedName, owed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if owed {
		m.restarts[key] = true
	} else {
		delete(m.restarts, key)
	}
}

// forget drops everything kept for a deleted ManagedToken, except a pair
// that is still not stored: that one is kept until it is.
func (m *memory) forget(key types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.last, key)
	delete(m.restarts, key)
	delete(m.written, key)
	delete(m.newer, key)
	delete(m.unlabelled, key)
	delete(m.apiErrors, key)
}

// countAPIErrors records whether a run of key met a Kubernetes API error and
// returns how many runs in a row have (0 after one that did not).
func (m *memory) countAPIErrors(key types.NamespacedName, failed bool) int32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !failed {
		delete(m.apiErrors, key)
		return 0
	}
	m.apiErrors[key]++
	return m.apiErrors[key]
}

// setUnlabelled records whether the state Secret name of the ManagedToken
// key with that uid is taken by a Secret the cache cannot show.
func (m *memory) setUnlabelled(key types.NamespacedName, uid types.UID, taken bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if taken {
		m.unlabelled[key] = uid
	} else {
		delete(m.unlabelled, key)
	}
}

// isUnlabelled reports what setUnlabelled recorded for key and uid ("":
// any).
func (m *memory) isUnlabelled(key types.NamespacedName, uid types.UID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.unlabelled[key]
	return ok && (uid == "" || u == uid)
}
