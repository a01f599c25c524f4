package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// outputData is exactly what workloads get: the access token, and its
// expiry in RFC 3339 when it expires. Never a refresh token or a secret.
func outputData(t *provider.Token) map[string][]byte {
	d := map[string][]byte{tokensv1alpha1.OutputAccessTokenKey: []byte(t.Published())}
	if t.Expires {
		d[tokensv1alpha1.OutputExpiresAtKey] = []byte(t.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return d
}

// desiredOutput merges secretTemplate into the output Secret's metadata; the
// operator's own labels win.
func desiredOutput(mt *tokensv1alpha1.ManagedToken, t *provider.Token) (labels, annotations map[string]string, data map[string][]byte) {
	labels, annotations = map[string]string{}, map[string]string{}
	if tpl := mt.Spec.SecretTemplate; tpl != nil {
		maps.Copy(labels, tpl.Labels)
		maps.Copy(annotations, tpl.Annotations)
	}
	maps.Copy(labels, ownedLabels(mt, roleOutput))
	return labels, annotations, outputData(t)
}

// published is what publish returns.
type published struct {
	// tokenChanged: the published access token changed (and consumers were
	// restarted, or a restart is owed).
	tokenChanged bool
	// problem: the output Secret belongs to someone else.
	problem *stateProblem
	// superseded: the output Secret changed since it was read, so it was
	// left alone and the run looks again soon. publishedLater: it holds a
	// token obtained later than the one this run would publish, so it was
	// left alone; the state Secret watch brings the newer state.
	superseded, publishedLater bool
	// outputErr: the output Secret could not be read or written, so
	// workloads do not have the stored token (status says so). err is it,
	// or a failed consumer restart, which events report.
	outputErr error
	err       error
}

// publish writes the stored token into the output Secret, restoring it when
// it was deleted or edited, and restarts consumers when the token changed.
// A Secret of that name that this ManagedToken does not control is never
// touched.
func (r *ManagedTokenReconciler) publish(ctx context.Context, in *inputs, out outcome) published {
	t := out.state.Token
	if t == nil || !out.stored || in.problem != nil {
		return published{}
	}
	pub := r.writeOutput(ctx, in.mt, t)
	if pub.err == nil && pub.problem == nil {
		pub.err = r.restartConsumers(ctx, in, pub.tokenChanged)
	}
	return pub
}

// writeOutput creates or updates the output Secret.
func (r *ManagedTokenReconciler) writeOutput(ctx context.Context, mt *tokensv1alpha1.ManagedToken, t *provider.Token) published {
	key := types.NamespacedName{Namespace: mt.Namespace, Name: mt.Spec.SecretName}
	labels, annotations, data := desiredOutput(mt, t)

	cur := &corev1.Secret{}
	err := r.Get(ctx, key, cur) // the cache holds only Secrets labelled as ours
	if apierrors.IsNotFound(err) {
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace, Labels: labels, Annotations: annotations},
			Type:       corev1.SecretTypeOpaque,
			Data:       data,
		}
		if err := ctrl.SetControllerReference(mt, sec, r.Scheme); err != nil {
			return outputFailed(err)
		}
		stampObtainedAt(sec.Annotations, t)
		err = r.Create(ctx, sec)
		if err == nil {
			return published{} // a first publish restarts nobody
		}
		if !apierrors.IsAlreadyExists(err) {
			return outputFailed(fmt.Errorf("creating output Secret %s: %w", key.Name, err))
		}
		// It exists but is not in the cache: unlabelled, so either foreign or
		// ours with its labels removed. Ask the API server.
		cur = &corev1.Secret{}
		if err := r.APIReader.Get(ctx, key, cur); err != nil {
			return outputFailed(fmt.Errorf("reading output Secret %s: %w", key.Name, err))
		}
	} else if err != nil {
		return outputFailed(fmt.Errorf("reading output Secret %s: %w", key.Name, err))
	}

	adopted := previousIncarnation(cur, mt)
	if adopted {
		// Written for an earlier ManagedToken of this name (deleted and
		// created again before the garbage collector removed it): adopt.
		cur.OwnerReferences = nil
		if err := ctrl.SetControllerReference(mt, cur, r.Scheme); err != nil {
			return outputFailed(err)
		}
	}
	if !metav1.IsControlledBy(cur, mt) {
		return published{problem: &stateProblem{ReasonSecretNotOwned, fmt.Sprintf(
			"Secret %q already exists and is not managed by this ManagedToken; the operator will not touch it: delete it, or choose another spec.secretName", key.Name)}}
	}
	if publishedLater(cur, t) {
		// A run that loaded an older state (racing a callback or a second
		// manager that refreshed meanwhile) must not put its token back
		// over the newer one. The state Secret watch brings this
		// ManagedToken back with the newer state. The update below carries
		// the resourceVersion read here, so a newer publish this run has not
		// seen makes it conflict instead of landing.
		// TestStaleRunDoesNotOverwriteNewerToken covers both.
		log.FromContext(ctx).V(1).Info("output Secret holds a token obtained later; leaving it", "secret", key.Name)
		return published{publishedLater: true}
	}
	changed := !sameData(cur.Data, data) || cur.Type != corev1.SecretTypeOpaque
	pub := published{tokenChanged: string(cur.Data[tokensv1alpha1.OutputAccessTokenKey]) != t.Published()}
	newLabels, newAnn := mergeInto(cur.Labels, labels), mergeInto(cur.Annotations, annotations)
	if changed {
		// Stamped only with new data, so that Secrets written before the
		// annotation existed cost no write until the token changes.
		stampObtainedAt(newAnn, t)
	}
	if !adopted && !changed && maps.Equal(newLabels, cur.Labels) && maps.Equal(newAnn, cur.Annotations) {
		return pub
	}
	cur.Labels, cur.Annotations, cur.Data = newLabels, newAnn, data
	if err := r.Update(ctx, cur); apierrors.IsConflict(err) {
		// Another writer, or this manager's own previous write that the
		// cache has not seen yet (TestOutputConflictLooksAgain).
		log.FromContext(ctx).V(1).Info("output Secret changed since it was read; looking again", "secret", key.Name)
		return published{superseded: true}
	} else if err != nil {
		return outputFailed(fmt.Errorf("updating output Secret %s: %w", key.Name, err))
	}
	log.FromContext(ctx).Info("output Secret updated", "secret", key.Name, "tokenChanged", pub.tokenChanged)
	return pub
}

// outputFailed is the outcome of a publish that could not write the
// output Secret.
func outputFailed(err error) published {
	return published{outputErr: err, err: err}
}

// stampObtainedAt records in ann when t was obtained.
func stampObtainedAt(ann map[string]string, t *provider.Token) {
	if !t.ObtainedAt.IsZero() {
		ann[tokensv1alpha1.ObtainedAtAnnotation] = t.ObtainedAt.UTC().Format(time.RFC3339Nano)
	}
}

// publishedLater reports whether sec holds another token, obtained after t
// (the order newerPair uses for stored pairs).
func publishedLater(sec *corev1.Secret, t *provider.Token) bool {
	v, ok := sec.Annotations[tokensv1alpha1.ObtainedAtAnnotation]
	if !ok || t.ObtainedAt.IsZero() || string(sec.Data[tokensv1alpha1.OutputAccessTokenKey]) == t.Published() {
		return false
	}
	at, err := time.Parse(time.RFC3339Nano, v)
	return err == nil && at.After(t.ObtainedAt)
}

// previousIncarnation reports whether sec is the output Secret of an
// earlier ManagedToken with mt's name.
func previousIncarnation(sec *corev1.Secret, mt *tokensv1alpha1.ManagedToken) bool {
	ref := metav1.GetControllerOf(sec)
	return ref != nil && ref.Kind == "ManagedToken" && ref.Name == mt.Name && ref.UID != mt.UID &&
		sec.Labels[tokensv1alpha1.ManagedByLabel] == tokensv1alpha1.ManagedByValue &&
		sec.Labels[tokensv1alpha1.ManagedTokenLabel] == mt.Name && sec.Labels[tokensv1alpha1.SecretRoleLabel] == roleOutput
}

// mergeInto returns a copy of have with want's entries set; entries others
// added (another controller's annotations, say) are kept.
func mergeInto(have, want map[string]string) map[string]string {
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	if len(out) == 0 && have == nil {
		return nil
	}
	return out
}

// restartConsumers patches the pod template of each rolloutRestartTarget,
// as kubectl rollout restart does, when the published token changed. It does
// nothing on a reconcile that did not change the token, except retry a
// restart that failed before (kept in memory, since the next reconcile no
// longer sees the change).
func (r *ManagedTokenReconciler) restartConsumers(ctx context.Context, in *inputs, tokenChanged bool) error {
	store := r.memory()
	if len(in.mt.Spec.RolloutRestartTargets) == 0 || !(tokenChanged || store.restartOwed(in.key)) {
		return nil
	}
	stamp := in.now.UTC().Format(time.RFC3339Nano)
	patch := fmt.Appendf(nil, `{"spec":{"template":{"metadata":{"annotations":{%q:%q}}}}}`, tokensv1alpha1.RestartedAtAnnotation, stamp)
	var errs []error
	for _, tgt := range in.mt.Spec.RolloutRestartTargets {
		var obj client.Object
		switch tgt.Kind {
		case "Deployment":
			obj = &appsv1.Deployment{}
		case "StatefulSet":
			obj = &appsv1.StatefulSet{}
		case "DaemonSet":
			obj = &appsv1.DaemonSet{}
		default:
			continue
		}
		obj.SetNamespace(in.mt.Namespace)
		obj.SetName(tgt.Name)
		if err := r.Patch(ctx, obj, client.RawPatch(types.StrategicMergePatchType, patch)); err != nil {
			if apierrors.IsNotFound(err) {
				r.Recorder.Eventf(in.mt, nil, corev1.EventTypeWarning, "RestartTargetNotFound", "RolloutRestart", "%s %q not found; not restarted", tgt.Kind, tgt.Name)
				continue
			}
			errs = append(errs, fmt.Errorf("restarting %s %s: %w", tgt.Kind, tgt.Name, err))
			continue
		}
		r.Recorder.Eventf(in.mt, nil, corev1.EventTypeNormal, "RolloutRestarted", "RolloutRestart", "restarted %s %q because the token changed", tgt.Kind, tgt.Name)
	}
	store.setRestartOwed(in.key, len(errs) > 0)
	return errors.Join(errs...)
}
