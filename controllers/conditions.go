package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// Condition reasons (CamelCase, per the Kubernetes API conventions).
const (
	ReasonTokenValid                = "TokenValid"
	ReasonTokenNeverExpires         = "TokenNeverExpires"
	ReasonRefreshFailing            = "RefreshFailing"
	ReasonCredentialsSecretNotFound = "CredentialsSecretNotFound"
	ReasonCredentialsKeyMissing     = "CredentialsKeyMissing"
	ReasonSecretNotOwned            = "SecretNotOwned"
	ReasonStateSecretNotOwned       = "StateSecretNotOwned"
	ReasonStatePending              = "StateNotStored"
	ReasonNoToken                   = "NoToken"
	ReasonTokenExpired              = "TokenExpired"
	ReasonTokenExpiringSoon         = "TokenExpiringSoon"
	ReasonDataAccessExpiringSoon    = "DataAccessExpiringSoon"
	ReasonDataAccessExpired         = "DataAccessExpired"
	ReasonAuthorized                = "Authorized"
	ReasonProviderNotConfigured     = "ProviderNotConfigured"
	// ReasonAuthorizationRequired: no token yet and no grant in the
	// credentials Secret: a human runs kubectl tokenkeeper authorize.
	ReasonAuthorizationRequired = "AuthorizationRequired"
	// ReasonStateCorrupt: the state Secret cannot be read; it is not
	// overwritten and no provider call is made.
	ReasonStateCorrupt = "StateCorrupt"
	// ReasonRefreshOutcomeUnknown: a spend got no answer and the provider
	// now refuses the value it sent: the new pair was most likely lost.
	ReasonRefreshOutcomeUnknown = "RefreshOutcomeUnknown"
	// ReasonTokenRejectedAfterRefresh: a rejected token was refreshed and
	// the new one was rejected too: the cause is not the token.
	ReasonTokenRejectedAfterRefresh = provider.ReasonTokenRejectedAfterRefresh
	// ReasonGrantNotAdopted: a new grant would downgrade a refreshable
	// token to one only a human can renew; it was not adopted.
	ReasonGrantNotAdopted = "GrantNotAdopted"
	// ReasonKubernetesAPIError: the API server refused a read or write a
	// run needed (the state Secret's spend intent, the credentials Secret,
	// a failure record), for a reason other than a conflict.
	ReasonKubernetesAPIError = "KubernetesAPIError"
	// ReasonOutputNotWritten: the token is stored, but the output Secret
	// could not be written (API server errors, an admission webhook, a
	// quota), so workloads do not have it.
	ReasonOutputNotWritten = "OutputNotWritten"
	// ReasonGrantRejected is the event reason when a new grant was refused
	// while a usable token stayed in place.
	ReasonGrantRejected = "GrantRejected"
)

// setCondition sets a condition and always stamps observedGeneration.
// meta.SetStatusCondition keeps lastTransitionTime unless the status changes.
func setCondition(mt *tokensv1alpha1.ManagedToken, condType string, status metav1.ConditionStatus, reason, message string, now metav1.Time) {
	meta.SetStatusCondition(&mt.Status.Conditions, metav1.Condition{
		Type:               condType,
		Status:             status,
		Reason:             reason,
		Message:            message,
		ObservedGeneration: mt.Generation,
		LastTransitionTime: now,
	})
}

// conditionChanged reports whether condType's status or reason differs
// between two condition lists: the transitions that deserve an event.
func conditionChanged(before, after []metav1.Condition, condType string) bool {
	a := meta.FindStatusCondition(before, condType)
	b := meta.FindStatusCondition(after, condType)
	if a == nil || b == nil {
		return (a == nil) != (b == nil)
	}
	return a.Status != b.Status || a.Reason != b.Reason
}
