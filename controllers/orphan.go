package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// DefaultOrphanRetention is how long a state Secret outlives its
// ManagedToken by default.
const DefaultOrphanRetention = 30 * 24 * time.Hour

// reconcileOrphan handles a ManagedToken that is gone. Its state Secret
// (which has no owner reference, see state.go) is kept, marked with the
// time it became an orphan, so that a ManagedToken created again with the
// same name (Argo CD Replace=true, a namespace restore) resumes from the
// stored pair instead of replaying a consumed grant. After the retention it
// is deleted, so orphaned refresh tokens do not live forever.
//
// cert-manager's precedent is the same: a Certificate's Secret outlives the
// Certificate unless asked otherwise.
func (r *ManagedTokenReconciler) reconcileOrphan(ctx context.Context, key types.NamespacedName) (ctrl.Result, error) {
	r.memory().forget(key)
	sec := &corev1.Secret{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: stateSecretName(key.Name)}, sec); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if sec.Labels[tokensv1alpha1.ManagedTokenLabel] != key.Name || sec.Labels[tokensv1alpha1.SecretRoleLabel] != roleState || len(sec.OwnerReferences) > 0 {
		// Not ours, or still owned (written before state Secrets lost
		// their owner reference): the garbage collector decides.
		return ctrl.Result{}, nil
	}
	retention := r.OrphanRetention
	if retention <= 0 {
		retention = DefaultOrphanRetention
	}
	now := r.Clock.Now()
	since, err := time.Parse(time.RFC3339, sec.Annotations[orphanedAtAnnotation])
	if err != nil {
		if sec.Annotations == nil {
			sec.Annotations = map[string]string{}
		}
		sec.Annotations[orphanedAtAnnotation] = now.UTC().Format(time.RFC3339)
		if err := r.Update(ctx, sec); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		log.FromContext(ctx).Info("ManagedToken is gone; keeping its state Secret for a re-create", "secret", sec.Name, "retention", retention.String())
		return ctrl.Result{RequeueAfter: retention}, nil
	}
	if left := since.Add(retention).Sub(now); left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	// The cache said the ManagedToken is gone; a re-create it has not seen
	// yet would lose its pair. Ask the API server once, here only (the
	// delete is rare), before deleting (TestOrphanDeleteChecksTheAPIServer).
	// A list by name, not a get: the manager's role lists and watches
	// ManagedTokens and needs no get (TestLeastPrivilege).
	if r.APIReader != nil {
		var list tokensv1alpha1.ManagedTokenList
		if err := r.APIReader.List(ctx, &list, client.InNamespace(key.Namespace), client.MatchingFields{"metadata.name": key.Name}); err != nil {
			return ctrl.Result{}, err
		}
		if len(list.Items) > 0 {
			log.FromContext(ctx).Info("the ManagedToken exists again; keeping its state Secret", "secret", sec.Name)
			return ctrl.Result{RequeueAfter: minWake}, nil
		}
	}
	pre := client.Preconditions{ResourceVersion: &sec.ResourceVersion}
	if err := r.Delete(ctx, sec, pre); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return ctrl.Result{}, err
	}
	log.FromContext(ctx).Info("deleted the state Secret of a ManagedToken gone for longer than the retention", "secret", sec.Name)
	return ctrl.Result{}, nil
}
