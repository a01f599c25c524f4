package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
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
// watched through NewCredentialsCache.
func ManagerCacheOptions() cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Secret{}: {Label: OwnedSecretsSelector()},
	}}
}

// NewCredentialsCache returns a cache for the metadata of all Secrets, used
// only to notice changes of credentials Secrets within seconds. It is apart
// from the manager's cache because that one selects Secrets by label (per
// GVK, so a metadata-only informer there would inherit the selector), and it
// keeps nothing but name, namespace and resourceVersion: annotations such as
// kubectl's last-applied-configuration can carry Secret data.
//
// namespaces, when given, restricts the watch to them.
func NewCredentialsCache(mgr ctrl.Manager, namespaces ...string) (cache.Cache, error) {
	var byNS map[string]cache.Config
	for _, ns := range namespaces {
		if byNS == nil {
			byNS = map[string]cache.Config{}
		}
		byNS[ns] = cache.Config{}
	}
	return cache.New(mgr.GetConfig(), cache.Options{
		DefaultNamespaces: byNS,
		HTTPClient:        mgr.GetHTTPClient(),
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		DefaultTransform: func(in any) (any, error) {
			if m, ok := in.(*metav1.PartialObjectMetadata); ok {
				m.ObjectMeta = metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, ResourceVersion: m.ResourceVersion, UID: m.UID}
			}
			return in, nil
		},
	})
}

// SetupWithManager registers the controller: ManagedTokens (spec or
// annotation changes, not status-only updates), the Secrets it owns, and the
// metadata of credentials Secrets through credsCache (which must have been
// added to the manager).
func (r *ManagedTokenReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, credsCache cache.Cache, maxConcurrent int) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tokensv1alpha1.ManagedToken{}, credentialsIndex, func(o client.Object) []string {
		return []string{o.(*tokensv1alpha1.ManagedToken).Spec.CredentialsSecretRef.Name}
	}); err != nil {
		return err
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	secretMeta := &metav1.PartialObjectMetadata{}
	secretMeta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return ctrl.NewControllerManagedBy(mgr).
		For(&tokensv1alpha1.ManagedToken{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		// Output Secrets are owned; state Secrets have no owner (see
		// state.go): both are mapped to their ManagedToken by label.
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(forOwnedSecret)).
		WatchesRawSource(source.Kind(credsCache, secretMeta, handler.TypedEnqueueRequestsFromMapFunc(r.forCredentials))).
		WithOptions(controller.Options{MaxConcurrentReconciles: maxConcurrent}).
		Named("managedtoken").
		Complete(r)
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
func (r *ManagedTokenReconciler) forCredentials(ctx context.Context, s *metav1.PartialObjectMetadata) []reconcile.Request {
	var list tokensv1alpha1.ManagedTokenList
	if err := r.List(ctx, &list, client.InNamespace(s.Namespace), client.MatchingFields{credentialsIndex: s.Name}); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, mt := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: mt.Namespace, Name: mt.Name}})
	}
	return reqs
}
