package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Provider names the service that issued a token.
// +kubebuilder:validation:Enum=Facebook;AmoCRM
type Provider string

const (
	ProviderFacebook Provider = "Facebook"
	ProviderAmoCRM   Provider = "AmoCRM"
)

// Well-known names shared by the controller, the manifests, the docs and the
// kubectl plugin.
const (
	// RefreshRequestedAtAnnotation forces one refresh each time its value changes.
	RefreshRequestedAtAnnotation = "tokens.tokenkeeper.dev/refresh-requested-at"
	// ManagedTokenLabel on a Secret names the ManagedToken it belongs to.
	ManagedTokenLabel = "tokens.tokenkeeper.dev/managed-token"
	// SecretRoleLabel tells an output Secret ("output") from a state Secret ("state").
	SecretRoleLabel = "tokens.tokenkeeper.dev/secret-role"
	// ManagedByLabel and ManagedByValue mark every Secret the operator writes.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "tokenkeeper"
	// AuthorizeRequestAnnotation starts a one-time authorization (kubectl
	// tokenkeeper authorize). Its value is "sha256:" and the hex SHA-256 of
	// the OAuth state the command minted: the state itself never reaches the
	// cluster. The operator binds the hash to the ManagedToken's UID, accepts
	// one callback carrying the state within 15 minutes, and
	// reports progress in status.authorization.
	AuthorizeRequestAnnotation = "tokens.tokenkeeper.dev/authorize-request"
	// RestartedAtAnnotation is set on a rollout restart target's pod template
	// when the published token changes.
	RestartedAtAnnotation = "tokens.tokenkeeper.dev/restartedAt"
	// ObtainedAtAnnotation on an output Secret is when the published token
	// was obtained (RFC 3339). The operator never replaces a published
	// token with one obtained earlier.
	ObtainedAtAnnotation = "tokens.tokenkeeper.dev/obtained-at"

	// Keys of the output Secret.
	OutputAccessTokenKey = "access_token"
	OutputExpiresAtKey   = "expires_at"

	// Condition types.
	ConditionReady                   = "Ready"
	ConditionReauthorizationRequired = "ReauthorizationRequired"

	// DefaultGraphAPIVersion is the Graph API version used when
	// spec.facebook.graphAPIVersion is not set (v26.0, July 2026).
	DefaultGraphAPIVersion = "v26.0"
	// DefaultRefreshBeforeFacebook and DefaultRefreshBeforeAmoCRM are the
	// provider-specific defaults of spec.refreshBefore for tokens the
	// operator renews; DefaultRefreshBeforeMonitored is the default for
	// tokens only a human can renew (a long-lived AmoCRM token, a Facebook
	// user token), so the warning comes weeks ahead. For tokens the operator
	// refreshes, each is capped at half the token's lifetime.
	DefaultRefreshBeforeFacebook  = "168h"
	DefaultRefreshBeforeAmoCRM    = "2h"
	DefaultRefreshBeforeMonitored = "336h"
	// DefaultCheckInterval is the default of spec.checkInterval.
	DefaultCheckInterval = "2h"

	// AmoCRMCallbackPath and FacebookCallbackPath are where the operator's
	// authorization endpoint (--authorization-bind-address) serves the OAuth
	// callbacks: the integration's redirect URI points there.
	AmoCRMCallbackPath   = "/callback/amocrm"
	FacebookCallbackPath = "/callback/facebook"
)

// AuthorizationPhase is the progress of a one-time authorization.
// +kubebuilder:validation:Enum=Pending;Completed;Failed;Expired
type AuthorizationPhase string

const (
	// AuthorizationPending: waiting for the human's consent and the callback.
	AuthorizationPending AuthorizationPhase = "Pending"
	// AuthorizationCompleted: the callback's code was exchanged and stored.
	AuthorizationCompleted AuthorizationPhase = "Completed"
	// AuthorizationFailed: the callback came, and the request could not be
	// completed (the provider refused the code, the human denied consent);
	// message says why. Run the command again.
	AuthorizationFailed AuthorizationPhase = "Failed"
	// AuthorizationExpired: no callback came in time.
	AuthorizationExpired AuthorizationPhase = "Expired"
)

// ManagedTokenSpec describes one OAuth credential to keep fresh.
// +kubebuilder:validation:XValidation:rule="self.provider != 'AmoCRM' || has(self.amocrm)",message="spec.amocrm is required when provider is AmoCRM: set amocrm.domain and amocrm.redirectURI",fieldPath=".amocrm",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="self.provider != 'AmoCRM' || !has(self.facebook)",message="spec.facebook must not be set when provider is AmoCRM: remove the facebook block",fieldPath=".facebook",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="self.provider != 'Facebook' || !has(self.amocrm)",message="spec.amocrm must not be set when provider is Facebook: remove the amocrm block",fieldPath=".amocrm",reason=FieldValueForbidden
// +kubebuilder:validation:XValidation:rule="self.secretName != self.credentialsSecretRef.name",message="spec.secretName must differ from spec.credentialsSecretRef.name: the operator never writes to the credentials Secret",fieldPath=".secretName",reason=FieldValueInvalid
type ManagedTokenSpec struct {
	// provider is the service that issued the token: Facebook or AmoCRM.
	// It cannot be changed after creation.
	// +required
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="provider is immutable: create a new ManagedToken to change it"
	Provider Provider `json:"provider"`

	// credentialsSecretRef names a Secret in the same namespace that holds the
	// credentials. The operator only reads it. Keys:
	// Facebook: app_id, app_secret, access_token.
	// AmoCRM: client_id, client_secret, and refresh_token or authorization_code
	// (optionally access_token); or a long-lived token alone in access_token.
	// +required
	CredentialsSecretRef SecretReference `json:"credentialsSecretRef"`

	// secretName is the output Secret, in the same namespace, that workloads
	// mount. It holds access_token and expires_at (RFC 3339; absent when the
	// token never expires). It must not be the credentials Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="secretName must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
	SecretName string `json:"secretName"`

	// refreshBefore: refresh when the token expires within this duration
	// (for a token only a human can renew: ask for reauthorization then).
	// Defaults to 168h for Facebook and 2h for AmoCRM, and 336h (14 days)
	// for tokens only a human can renew (applied by the controller, since an
	// OpenAPI default cannot depend on the provider or the token). For a
	// token the operator refreshes, it is capped at half the token's observed
	// lifetime, so a token is refreshed at most once per half lifetime.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) > duration('0s')",message="refreshBefore must be a positive duration such as 2h, 90m or 168h"
	RefreshBefore *metav1.Duration `json:"refreshBefore,omitempty"`

	// checkInterval is the longest time between two checks of the token.
	// At least 1m.
	// +optional
	// +kubebuilder:default="2h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1m')",message="checkInterval must be a duration of at least 1m, such as 2h or 30m"
	CheckInterval *metav1.Duration `json:"checkInterval,omitempty"`

	// facebook holds Facebook settings; only with provider Facebook.
	// +optional
	Facebook *FacebookSpec `json:"facebook,omitempty"`

	// amocrm holds AmoCRM (Kommo) settings; required with provider AmoCRM.
	// +optional
	AmoCRM *AmoCRMSpec `json:"amocrm,omitempty"`

	// secretTemplate is merged into the output Secret's metadata. The
	// operator's own labels win over labels of the same name here.
	// +optional
	SecretTemplate *SecretTemplate `json:"secretTemplate,omitempty"`

	// rolloutRestartTargets are workloads in the same namespace whose pods are
	// restarted (as by kubectl rollout restart) when the published token
	// changes. Workloads that read the mounted file need no restart.
	// +optional
	// +listType=map
	// +listMapKey=kind
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	RolloutRestartTargets []RolloutRestartTarget `json:"rolloutRestartTargets,omitempty"`
}

// SecretReference names a Secret in the ManagedToken's namespace.
type SecretReference struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="name must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
	Name string `json:"name"`
}

// FacebookSpec holds Facebook (Meta Graph API) settings.
type FacebookSpec struct {
	// graphAPIVersion is the Graph API version to call, such as v26.0.
	// +optional
	// +kubebuilder:default="v26.0"
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^v[0-9]+\\\\.[0-9]+$')",message="graphAPIVersion must look like v26.0"
	GraphAPIVersion string `json:"graphAPIVersion,omitempty"`

	// pageID, when set, makes the operator publish a Page access token of
	// this Page instead of the token in the credentials Secret. That token
	// (a long-lived user token or a system-user token with a role on the
	// Page) stays the managed one: the operator derives the Page token from
	// it (GET /{page-id}?fields=access_token), which then does not expire,
	// and checks both at every check. The Page token stops working when the
	// user's session ends, the password changes or the Page role is removed.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+$')",message="pageID must be the numeric ID of the Facebook Page, such as 104169029247128"
	PageID string `json:"pageID,omitempty"`

	// redirectURI is the app's OAuth redirect URI for kubectl tokenkeeper
	// authorize, byte-for-byte as listed in the app's Valid OAuth Redirect
	// URIs: the operator's authorization endpoint at /callback/facebook.
	// It is sent in the login dialog and again in the code exchange, which
	// Facebook requires to be identical.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getHostname() != '' && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['localhost', '127.0.0.1', '::1']))",message="redirectURI must be an absolute https:// URL (http:// only for localhost, 127.0.0.1 or [::1])"
	RedirectURI string `json:"redirectURI,omitempty"`

	// scopes are the permissions the login dialog of kubectl tokenkeeper
	// authorize asks for, such as ads_read or pages_show_list.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:Pattern=`^[a-z][a-z0-9_]*$`
	Scopes []string `json:"scopes,omitempty"`
}

// AmoCRMSpec holds AmoCRM (Kommo) settings.
type AmoCRMSpec struct {
	// domain is the account's host: <subdomain>.amocrm.ru, <subdomain>.amocrm.com
	// or <subdomain>.kommo.com.
	// +required
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\\\.(amocrm\\\\.ru|amocrm\\\\.com|kommo\\\\.com)$')",message="domain must be <subdomain>.amocrm.ru, <subdomain>.amocrm.com or <subdomain>.kommo.com, with a single lowercase subdomain label"
	Domain string `json:"domain"`

	// redirectURI is the integration's redirect URI, byte-for-byte as set in
	// the integration. AmoCRM requires it on every token request.
	// +required
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getHostname() != '' && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['localhost', '127.0.0.1', '::1']))",message="redirectURI must be an absolute https:// URL (http:// only for localhost, 127.0.0.1 or [::1])"
	RedirectURI string `json:"redirectURI"`

	// acceptUnsolicitedCodes lets the authorization endpoint accept a code
	// that Kommo sends without a state of ours (an administrator installed
	// or re-installed the integration from inside the account). Such a code
	// is accepted only while this ManagedToken waits for authorization (no
	// usable token, or ReauthorizationRequired), and only when its referer
	// (and client_id, if the callback carries one) match exactly one such
	// ManagedToken. Off by
	// default: anyone who can make Kommo send a code for this integration
	// to the redirect URI, for an account with this domain, can then set
	// the token (see the README, "Authorization").
	// +optional
	AcceptUnsolicitedCodes bool `json:"acceptUnsolicitedCodes,omitempty"`
}

// SecretTemplate is metadata merged into the output Secret.
type SecretTemplate struct {
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// RolloutKind is a kind of workload that can be restarted.
// +kubebuilder:validation:Enum=Deployment;StatefulSet;DaemonSet
type RolloutKind string

// RolloutRestartTarget names a workload in the ManagedToken's namespace.
type RolloutRestartTarget struct {
	// +required
	Kind RolloutKind `json:"kind"`
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// ManagedTokenStatus is the observed state of a ManagedToken. It never holds
// a token, a refresh token or a client secret.
type ManagedTokenStatus struct {
	// observedGeneration is the generation the status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, and ReauthorizationRequired (a human must act).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// tokenType is the kind of token, for example AmoCRMOAuth,
	// AmoCRMLongLived, FacebookUserLongLived, FacebookSystemUserExpiring,
	// FacebookSystemUserNonExpiring or FacebookPage.
	// +optional
	TokenType string `json:"tokenType,omitempty"`

	// scopes granted to the token, where the provider reports them.
	// +optional
	// +listType=set
	Scopes []string `json:"scopes,omitempty"`

	// expirationTimestamp is the current access token's expiry; absent when it
	// never expires.
	// +optional
	ExpirationTimestamp *metav1.Time `json:"expirationTimestamp,omitempty"`

	// dataAccessExpirationTimestamp is when Facebook data access lapses
	// unless the user is active again (Facebook only).
	// +optional
	DataAccessExpirationTimestamp *metav1.Time `json:"dataAccessExpirationTimestamp,omitempty"`

	// refreshTokenExpirationTimestamp is about 90 days after the last
	// rotation of the refresh token (AmoCRM only).
	// +optional
	RefreshTokenExpirationTimestamp *metav1.Time `json:"refreshTokenExpirationTimestamp,omitempty"`

	// lastRefreshTime is when the operator last obtained a new token.
	// +optional
	LastRefreshTime *metav1.Time `json:"lastRefreshTime,omitempty"`

	// nextRefreshTime is expirationTimestamp minus refreshBefore.
	// +optional
	NextRefreshTime *metav1.Time `json:"nextRefreshTime,omitempty"`

	// lastCheckTime is when the operator last checked the token with the provider.
	// +optional
	LastCheckTime *metav1.Time `json:"lastCheckTime,omitempty"`

	// lastHandledRefreshRequest is the value of the
	// tokens.tokenkeeper.dev/refresh-requested-at annotation that was last handled.
	// +optional
	LastHandledRefreshRequest string `json:"lastHandledRefreshRequest,omitempty"`

	// consecutiveFailures counts failed provider calls since the last success.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// lastFailureTime is when the last provider call failed.
	// +optional
	LastFailureTime *metav1.Time `json:"lastFailureTime,omitempty"`

	// nextRetryTime is when the operator tries again after a failure that
	// can heal by itself (back-off, or the provider's Retry-After).
	// +optional
	NextRetryTime *metav1.Time `json:"nextRetryTime,omitempty"`

	// haltedInputs is set when the operator stopped calling the provider
	// because a human must act (for example a revoked refresh token or an IP
	// block). It records the inputs in force then (generation, credentials
	// Secret version, refresh request); calls resume when any of them changes.
	// +optional
	HaltedInputs string `json:"haltedInputs,omitempty"`

	// authorization is the last one-time authorization requested with
	// kubectl tokenkeeper authorize.
	// +optional
	Authorization *AuthorizationStatus `json:"authorization,omitempty"`
}

// AuthorizationStatus is the progress of a one-time authorization. It never
// holds the OAuth state, a code or a token.
type AuthorizationStatus struct {
	// requestID is the first 12 hex digits of the request's state hash, so
	// the command that started it can recognise it.
	RequestID string `json:"requestID"`

	// phase: Pending, Completed, Failed or Expired.
	Phase AuthorizationPhase `json:"phase"`

	// consentURL is the provider's consent page without the state
	// parameter, which only the command that started the request holds.
	// +optional
	ConsentURL string `json:"consentURL,omitempty"`

	// expirationTimestamp is when a pending request stops being accepted.
	// +optional
	ExpirationTimestamp *metav1.Time `json:"expirationTimestamp,omitempty"`

	// message says what happened, in words.
	// +optional
	Message string `json:"message,omitempty"`
}

// ManagedToken keeps one OAuth access token fresh and publishes it in a Secret.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mt,categories=tokenkeeper
// +kubebuilder:printcolumn:name="Provider",type=string,JSONPath=`.spec.provider`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.status.tokenType`,priority=1
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Reauth",type=string,JSONPath=`.status.conditions[?(@.type=="ReauthorizationRequired")].status`,priority=1
// +kubebuilder:printcolumn:name="Expires",type=string,format=date-time,JSONPath=`.status.expirationTimestamp`
// +kubebuilder:printcolumn:name="Next Refresh",type=string,format=date-time,JSONPath=`.status.nextRefreshTime`
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.spec.secretName`,priority=1
// +kubebuilder:printcolumn:name="Authorization",type=string,JSONPath=`.status.authorization.phase`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name must be at most 63 characters: it is used as a label value on the Secrets the operator writes"
type ManagedToken struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   ManagedTokenSpec   `json:"spec"`
	Status ManagedTokenStatus `json:"status,omitempty"`
}

// ManagedTokenList contains a list of ManagedToken.
// +kubebuilder:object:root=true
type ManagedTokenList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ManagedToken `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ManagedToken{}, &ManagedTokenList{})
}
