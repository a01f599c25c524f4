package controllers

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// credentialsIndex indexes ManagedTokens by the credentials Secret they read.
const credentialsIndex = ".spec.credentialsSecretRef.name"

// OwnedSecretsSelector selects the Secrets the operator writes. The
// manager's cache holds only these Secrets (see cmd/main.go), so memory does
// not grow with the number of Secrets in the cluster.
func OwnedSecretsSelector() labels.Selector {
	return labels.SelectorFromSet(labels.Set{tokensv1alpha1.ManagedByLabel: tokensv1alpha1.ManagedByValue})
}

// ManagerCacheOptions is the manager's cache configuration: only the Secrets
// the operator writes are cached. Credentials Secrets are read directly and
// watched through a CredentialsWatch.
//
// The cache drops managedFields from every object it holds: nothing reads
// them, and they are a large share of a cached ManagedToken or Secret
// (measured with make bench; see the README).
func ManagerCacheOptions() cache.Options {
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Label: OwnedSecretsSelector()},
		},
		DefaultTransform: cache.TransformStripManagedFields(),
	}
}

// CredentialsWatch notices changes of credentials Secrets within seconds
// without holding the cluster's other Secrets.
//
// A credentials Secret is always in its ManagedToken's namespace, so it
// watches Secret metadata only in the namespaces that hold ManagedTokens:
// one metadata-only cache per such namespace, started when the first
// ManagedToken appears there and stopped when the last one is gone. Secrets
// in every other namespace cost nothing, however many there are. A label
// selector would be cheaper still, but would make users label their
// credentials Secrets; and one cluster-wide metadata watch (the earlier
// design) kept an entry for every Secret of the cluster. Each watched
// namespace costs one watch request; the Secrets there that are not
// credentials cost an entry each, stripped to name, namespace,
// resourceVersion and UID: annotations such as kubectl's
// last-applied-configuration can carry Secret data.
//
// These caches are apart from the manager's cache because that one selects
// Secrets by label (per GVK, so a metadata informer there would inherit the
// selector). Add the watch to the manager (it is a Runnable) and pass it to
// SetupWithManager.
type CredentialsWatch struct {
	cfg        *rest.Config
	httpClient *http.Client
	scheme     *runtime.Scheme
	mapper     meta.RESTMapper
	tokens     cache.Cache // the manager's cache, which holds the ManagedTokens

	// syncWait bounds how long lookups wait for a namespace's watch to
	// sync, counted from the watch's start (default credentialsSyncWait).
	syncWait time.Duration
	// beforeStart, when set, runs before a namespace's cache starts (tests
	// hold a watch unsynced with it).
	beforeStart func(ctx context.Context, ns string)

	mu      sync.Mutex
	ctx     context.Context // set by Start
	ctrl    controller.Controller
	handler handler.TypedEventHandler[*metav1.PartialObjectMetadata, reconcile.Request]
	byNS    map[string]*namespaceWatch
}

// credentialsSyncWait is how long, from the start of a namespace's watch,
// a lookup waits for the watch to sync before it gives up and the
// reconciler reads the credentials Secret from the API server.
//
// After a restart every namespace's watch starts at once, and listing a
// namespace's Secret metadata takes a second or more with thousands of
// Secrets there: a lookup that gave up after a fixed second (the earlier
// design) cost a live read for each token reconciled that early (2 of
// 10,000 in make bench). The deadline is counted from the watch's start,
// not per lookup, so a watch that never syncs (a namespace whose Secrets
// the manager may not list) delays its tokens once, by at most this much,
// and then every lookup there falls back to a live read at once.
// TestRestartWhileCredentialsWatchSyncs holds a watch unsynced both ways.
const credentialsSyncWait = 20 * time.Second

type namespaceWatch struct {
	cache   cache.Cache
	cancel  context.CancelFunc
	started time.Time
	synced  chan struct{} // closed once the cache has synced
}

// NewCredentialsWatch returns the credentials watch of mgr.
func NewCredentialsWatch(mgr ctrl.Manager) (*CredentialsWatch, error) {
	return &CredentialsWatch{
		cfg: mgr.GetConfig(), httpClient: mgr.GetHTTPClient(), scheme: mgr.GetScheme(), mapper: mgr.GetRESTMapper(),
		tokens: mgr.GetCache(),
		byNS:   map[string]*namespaceWatch{},
	}, nil
}

// Start follows the ManagedTokens of the manager's cache and watches the
// namespaces that hold them, until ctx is done.
func (w *CredentialsWatch) Start(ctx context.Context) error {
	w.mu.Lock()
	w.ctx = ctx
	w.mu.Unlock()
	inf, err := w.tokens.GetInformer(ctx, &tokensv1alpha1.ManagedToken{})
	if err != nil {
		return err
	}
	nsOf := func(obj any) string {
		if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if o, ok := obj.(client.Object); ok {
			return o.GetNamespace()
		}
		return ""
	}
	// The informer replays the ManagedTokens it holds as adds, so every
	// namespace that already holds one is watched from the start.
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.watch(nsOf(obj)) },
		DeleteFunc: func(obj any) { w.release(ctx, nsOf(obj)) },
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	_ = inf.RemoveEventHandler(reg)
	return nil
}

// bind makes the watch enqueue into c through h; SetupWithManager calls it
// before the manager starts.
func (w *CredentialsWatch) bind(c controller.Controller, h handler.TypedEventHandler[*metav1.PartialObjectMetadata, reconcile.Request]) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ctrl, w.handler = c, h
}

// watch starts watching Secret metadata in ns, unless it is watched already.
func (w *CredentialsWatch) watch(ns string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ns == "" || w.byNS[ns] != nil || w.ctx == nil || w.ctrl == nil {
		return
	}
	logger := ctrl.Log.WithName("credentials-watch").WithValues("namespace", ns)
	c, err := cache.New(w.cfg, cache.Options{
		DefaultNamespaces: map[string]cache.Config{ns: {}},
		HTTPClient:        w.httpClient,
		Scheme:            w.scheme,
		Mapper:            w.mapper,
		DefaultTransform: func(in any) (any, error) {
			if m, ok := in.(*metav1.PartialObjectMetadata); ok {
				m.ObjectMeta = metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, ResourceVersion: m.ResourceVersion, UID: m.UID}
			}
			return in, nil
		},
	})
	if err != nil {
		// Not expected (the options are fixed). Changes of this namespace's
		// credentials Secrets are then noticed at the next check.
		logger.Error(err, "cannot watch credentials Secrets")
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	nw := &namespaceWatch{cache: c, cancel: cancel, started: time.Now(), synced: make(chan struct{})}
	go func() {
		if w.beforeStart != nil {
			w.beforeStart(ctx, ns)
		}
		if err := c.Start(ctx); err != nil {
			logger.Error(err, "credentials watch stopped")
		}
	}()
	secretMeta := &metav1.PartialObjectMetadata{}
	secretMeta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	go func() {
		// The Secret metadata informer, not the whole cache: a cache with
		// no informer yet counts as synced as soon as it starts.
		inf, err := c.GetInformer(ctx, secretMeta, cache.BlockUntilSynced(false))
		if err == nil && toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			close(nw.synced)
		}
	}()
	w.byNS[ns] = nw
	if err := w.ctrl.Watch(startOnly{source.Kind(c, secretMeta, w.handler)}); err != nil {
		logger.Error(err, "cannot watch credentials Secrets")
	}
	logger.V(1).Info("watching credentials Secrets")
}

// waitSynced reports whether the watch has synced, waiting for it until
// deadline at most.
func (nw *namespaceWatch) waitSynced(ctx context.Context, deadline time.Time) bool {
	select {
	case <-nw.synced:
		return true
	default:
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	select {
	case <-nw.synced:
		return true
	case <-ctx.Done():
		return false
	}
}

// startOnly hides a source's WaitForSync from the controller. A controller
// waits for every source registered before it starts to sync, and fails
// (stopping the manager) when one does not within its cache sync timeout:
// a namespace whose Secrets cannot be listed would then keep every token
// from being reconciled. Lookups wait for a namespace's watch instead,
// bounded by credentialsSyncWait (see ResourceVersion).
type startOnly struct {
	source.TypedSource[reconcile.Request]
}

// release stops watching ns once it holds no ManagedToken.
func (w *CredentialsWatch) release(ctx context.Context, ns string) {
	var list tokensv1alpha1.ManagedTokenList
	if err := w.tokens.List(ctx, &list, client.InNamespace(ns), client.Limit(1)); err != nil || len(list.Items) > 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if nw := w.byNS[ns]; nw != nil {
		nw.cancel()
		delete(w.byNS, ns)
		ctrl.Log.WithName("credentials-watch").V(1).Info("stopped watching credentials Secrets", "namespace", ns)
	}
}

// namespaces returns the watched namespaces, sorted.
func (w *CredentialsWatch) namespaces() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.byNS))
	for ns := range w.byNS {
		out = append(out, ns)
	}
	sort.Strings(out)
	return out
}

// watchOf returns the watch of ns, or nil when ns is not watched.
func (w *CredentialsWatch) watchOf(ns string) *namespaceWatch {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.byNS[ns]
}

// cacheFor returns the metadata cache of ns, or nil when ns is not watched.
func (w *CredentialsWatch) cacheFor(ns string) cache.Cache {
	if nw := w.watchOf(ns); nw != nil {
		return nw.cache
	}
	return nil
}

// ResourceVersion returns the resourceVersion of the credentials Secret
// ns/name from the metadata watch, without a request to the API server. ok
// is false when the Secret is not there, or the watch has not synced by
// credentialsSyncWait after its start (until then the lookup waits for it).
//
// It is called for a ManagedToken in ns, so ns holds one: a namespace not
// watched yet is watched now. The ManagedToken informer notifies the
// controller and Start's handler independently, so after a restart the
// first reconcile of a namespace can come before that handler has run
// (make bench saw one such live read in 1,000 tokens);
// TestCredentialsLookupStartsTheWatch. A reconcile racing the deletion of
// a namespace's last ManagedToken can leave a watch running for it until
// another ManagedToken there is deleted.
func (w *CredentialsWatch) ResourceVersion(ctx context.Context, ns, name string) (rv string, ok bool) {
	nw := w.watchOf(ns)
	if nw == nil {
		w.watch(ns)
		if nw = w.watchOf(ns); nw == nil {
			return "", false
		}
	}
	wait := w.syncWait
	if wait <= 0 {
		wait = credentialsSyncWait
	}
	if !nw.waitSynced(ctx, nw.started.Add(wait)) {
		return "", false
	}
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	if err := nw.cache.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, m); err != nil {
		return "", false
	}
	return m.ResourceVersion, true
}

// SetupWithManager registers the controller: ManagedTokens (spec or
// annotation changes, not status-only updates), the Secrets it owns, and the
// metadata of credentials Secrets through creds (which must have been added
// to the manager).
func (r *ManagedTokenReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, creds *CredentialsWatch, maxConcurrent int) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tokensv1alpha1.ManagedToken{}, credentialsIndex, func(o client.Object) []string {
		return []string{o.(*tokensv1alpha1.ManagedToken).Spec.CredentialsSecretRef.Name}
	}); err != nil {
		return err
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	if r.CredentialsVersion == nil {
		r.CredentialsVersion = creds.ResourceVersion
	}
	// Due work first: controller-runtime's priority queue (the default since
	// v0.22) gives the events of an informer's initial list a low priority,
	// so after a restart a token whose requeue falls due, or whose inputs
	// change, is reconciled before the resync of thousands of idle ones
	// (make bench measures it: "a token made due during the restart").
	c, err := ctrl.NewControllerManagedBy(mgr).
		For(&tokensv1alpha1.ManagedToken{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		// Output Secrets are owned; state Secrets have no owner (see
		// state.go): both are mapped to their ManagedToken by label.
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(forOwnedSecret)).
		WithOptions(controller.Options{MaxConcurrentReconciles: maxConcurrent}).
		Named("managedtoken").
		Build(r)
	if err != nil {
		return err
	}
	creds.bind(c, handler.TypedEnqueueRequestsFromMapFunc(r.forCredentials))
	// On every replica: a pair obtained there must be stored even if it
	// does not lead (see keeper.go).
	return mgr.Add(&keeper{r: r})
}

// forOwnedSecret maps a Secret the operator wrote to its ManagedToken.
func forOwnedSecret(_ context.Context, o client.Object) []reconcile.Request {
	name := o.GetLabels()[tokensv1alpha1.ManagedTokenLabel]
	if name == "" || o.GetLabels()[tokensv1alpha1.ManagedByLabel] != tokensv1alpha1.ManagedByValue {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
}

// forCredentials maps a credentials Secret to the ManagedTokens that read it.
// It also maps a Secret without tokenkeeper's label that holds a state
// Secret's name to its ManagedToken, which reports it until it is gone
// (noteUnlabelledState): its deletion wakes the token at once. (The watch
// keeps no labels; the reconciler's memory says which names are taken.)
func (r *ManagedTokenReconciler) forCredentials(ctx context.Context, s *metav1.PartialObjectMetadata) []reconcile.Request {
	var list tokensv1alpha1.ManagedTokenList
	if err := r.List(ctx, &list, client.InNamespace(s.Namespace), client.MatchingFields{credentialsIndex: s.Name}); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items)+1)
	if name, ok := strings.CutPrefix(s.Name, stateNamePrefix); ok {
		if key := (types.NamespacedName{Namespace: s.Namespace, Name: name}); r.memory().isUnlabelled(key, "") {
			reqs = append(reqs, reconcile.Request{NamespacedName: key})
		}
	}
	for _, mt := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: mt.Namespace, Name: mt.Name}})
	}
	return reqs
}
