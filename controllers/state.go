package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// The state Secret is the operator's own durable record of a credential:
// the current access token, the rotated refresh token (AmoCRM), the
// fingerprints of grants already tried, and the bookkeeping of the rotation
// protocol (a spend in progress, the last failure, the handled refresh
// request). It is never mounted by workloads, never the output Secret and
// never the user's credentials Secret (which the operator only reads, so
// GitOps tools do not fight over it).
//
// It has no owner reference, so deleting a ManagedToken does not delete the
// only copy of a rotated refresh token: a ManagedToken created again with the
// same name and provider adopts it (see adoptable). An orphaned state Secret
// is deleted after the orphan retention (see orphan.go).
const (
	stateSecretType corev1.SecretType = "tokens.tokenkeeper.dev/state"
	stateNamePrefix                   = "tokenkeeper-state-"

	roleOutput = "output"
	roleState  = "state"

	keyAccessToken          = "access_token"
	keyPublishedAccessToken = "published_access_token"
	keyAPIDomain            = "api_domain"
	keyRefreshToken         = "refresh_token"
	keyExpiresAt            = "expires_at"
	keyRefreshExpiresAt     = "refresh_token_expires_at"
	keyDataAccessExpiresAt  = "data_access_expires_at"
	keyObtainedAt           = "obtained_at"
	keyTokenType            = "token_type"
	keyScopes               = "scopes"
	keyRefreshable          = "refreshable"
	keyConsumed             = "consumed_grants"
	keyHandledRequest       = "handled_refresh_request"
	keyProvider             = "provider"
	keyIntent               = "spend_intent"
	keyFailure              = "last_failure"
	keyGrantRejection       = "grant_rejection"
	keyCredentialsVersion   = "credentials_version"
	keyAuthorization        = "authorization"

	// maxConsumed bounds the remembered grant fingerprints.
	maxConsumed = 16
)

// stateSecretName is the name of a ManagedToken's state Secret.
func stateSecretName(mtName string) string { return stateNamePrefix + mtName }

// tokenState is the decoded content of a state Secret.
type tokenState struct {
	Token *provider.Token
	// Provider is the provider the token belongs to, so a ManagedToken of
	// another provider never adopts it.
	Provider string
	// Consumed are fingerprints of grants already tried (used, or refused by
	// the provider), newest last. A grant is tried once per value.
	Consumed []string
	// HandledRequest is the refresh-requested-at value whose refresh
	// produced this state. It is stored with the outcome of that refresh, so
	// a forced refresh happens exactly once.
	HandledRequest string
	// Intent is a spend (refresh or grant exchange) that started and has no
	// known outcome yet; see spendIntent.
	Intent *spendIntent
	// Failure is the last failed provider call since the last success.
	Failure *failureRecord
	// GrantRejection is a new grant the provider refused while a usable
	// token was stored: the token stays, and the grant is not retried until
	// its value changes.
	GrantRejection *failureRecord
	// CredsVersion is the credentials Secret's resourceVersion this state
	// was decided with (see ManagedTokenReconciler.CredentialsVersion).
	CredsVersion string
	// Authorization is the last one-time authorization request (kubectl
	// tokenkeeper authorize); see authorize.go.
	Authorization *authzRecord
}

// authzRecord is an authorization request as the state Secret keeps it:
// the hash of its OAuth state (never the state), the ManagedToken it is
// bound to, its deadline, and what became of it. A callback uses it once:
// the write that records the spend intent of its code also marks it used,
// conditionally, so two callbacks with the same state cannot both spend.
type authzRecord struct {
	// Hash is authz.Hash of the state.
	Hash string `json:"hash"`
	// UID is the ManagedToken's UID when the request was accepted.
	UID string `json:"uid"`
	// Accepted and Expires bound the request (authz.RequestTTL).
	Accepted time.Time `json:"accepted"`
	Expires  time.Time `json:"expires"`
	// ConsentURL is the provider's consent page without the state.
	ConsentURL string `json:"consentURL,omitempty"`
	// Used is when a callback took the request.
	Used *time.Time `json:"used,omitempty"`
	// Phase is "" while pending, else Completed or Failed; Message says why.
	Phase   string `json:"phase,omitempty"`
	Message string `json:"message,omitempty"`
}

// spendIntent is written, with a conditional update, before a refresh token
// or a grant that the call uses up is sent to the provider (see
// provider.Consumes; a call that uses nothing up writes none). While it is
// there and its deadline has not passed, no other reconciler (in this
// manager or another) spends anything for this token. If it is still there after its deadline, the
// spender stopped without an answer: the next spend sends the same value
// again, and if the provider then calls it used, the outcome is reported as
// unknown (ReasonRefreshOutcomeUnknown) instead of guessed.
type spendIntent struct {
	// Op is "refresh" or "bootstrap".
	Op string `json:"op"`
	// Grant is the credentials key spent by a bootstrap.
	Grant string `json:"grant,omitempty"`
	// Spent is the fingerprint of the refresh token or grant value sent.
	Spent string `json:"spent"`
	// Started and Deadline bound the spend.
	Started  time.Time `json:"started"`
	Deadline time.Time `json:"deadline"`
	// Unanswered is set when a spend of the same value ended without a
	// definite answer (timeout, lost connection, crash); it is when the
	// first such spend started.
	Unanswered *time.Time `json:"unanswered,omitempty"`
	// Request is the refresh-requested-at value this spend handles.
	Request string `json:"request,omitempty"`
}

// failureRecord is a provider failure as the state Secret keeps it: the
// classification and its safe message, never a token.
type failureRecord struct {
	Kind    string    `json:"kind"`
	Reason  string    `json:"reason"`
	Message string    `json:"message"`
	Op      string    `json:"op,omitempty"`
	At      time.Time `json:"at"`
	// Count is the number of consecutive failures.
	Count int32 `json:"count"`
	// RetryAt is when a failure that heals by itself is retried; zero when
	// calls are halted.
	RetryAt time.Time `json:"retryAt,omitempty"`
	// Halted: a human must act; no provider call until Inputs change.
	Halted bool `json:"halted,omitempty"`
	// Inputs fingerprints what a human can change (see inputsFingerprint).
	// A change of inputs ends a halt and a back-off.
	Inputs string `json:"inputs"`
}

// usable reports whether the state holds a token that can be published now.
func (s tokenState) usable(now time.Time) bool {
	return s.Token != nil && (!s.Token.Expires || now.Before(s.Token.ExpiresAt))
}

// fingerprint identifies a credentials value without revealing it.
func fingerprint(key, value string) string {
	sum := sha256.Sum256([]byte(key + "\x00" + value))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// spentFingerprint identifies the refresh token a refresh of t sends.
func spentFingerprint(t *provider.Token) string {
	if t == nil {
		return ""
	}
	return fingerprint(keyRefreshToken, t.RefreshToken+"\x00"+t.AccessToken)
}

func (s tokenState) hasConsumed(fp string) bool { return slices.Contains(s.Consumed, fp) }

// clone returns a deep enough copy of s to modify.
func (s tokenState) clone() tokenState {
	out := s
	out.Consumed = slices.Clone(s.Consumed)
	if s.Token != nil {
		t := *s.Token
		t.Scopes = slices.Clone(s.Token.Scopes)
		out.Token = &t
	}
	if s.Intent != nil {
		i := *s.Intent
		out.Intent = &i
	}
	if s.Failure != nil {
		f := *s.Failure
		out.Failure = &f
	}
	if s.GrantRejection != nil {
		f := *s.GrantRejection
		out.GrantRejection = &f
	}
	if s.Authorization != nil {
		a := *s.Authorization
		out.Authorization = &a
	}
	return out
}

// withConsumed returns a copy of s that remembers fp.
func (s tokenState) withConsumed(fp string) tokenState {
	out := s.clone()
	if fp != "" && !out.hasConsumed(fp) {
		out.Consumed = append(out.Consumed, fp)
	}
	if n := len(out.Consumed); n > maxConsumed {
		out.Consumed = out.Consumed[n-maxConsumed:]
	}
	return out
}

func encodeState(s tokenState) map[string][]byte {
	d := map[string][]byte{}
	if s.Provider != "" {
		d[keyProvider] = []byte(s.Provider)
	}
	if len(s.Consumed) > 0 {
		d[keyConsumed] = []byte(strings.Join(s.Consumed, "\n"))
	}
	if s.HandledRequest != "" {
		d[keyHandledRequest] = []byte(s.HandledRequest)
	}
	if s.CredsVersion != "" {
		d[keyCredentialsVersion] = []byte(s.CredsVersion)
	}
	putJSON := func(k string, v any) {
		b, err := json.Marshal(v)
		if err == nil {
			d[k] = b
		}
	}
	if s.Intent != nil {
		putJSON(keyIntent, s.Intent)
	}
	if s.Failure != nil {
		putJSON(keyFailure, s.Failure)
	}
	if s.GrantRejection != nil {
		putJSON(keyGrantRejection, s.GrantRejection)
	}
	if s.Authorization != nil {
		putJSON(keyAuthorization, s.Authorization)
	}
	t := s.Token
	if t == nil {
		return d
	}
	d[keyAccessToken] = []byte(t.AccessToken)
	if t.PublishedAccessToken != "" {
		d[keyPublishedAccessToken] = []byte(t.PublishedAccessToken)
	}
	if t.APIDomain != "" {
		d[keyAPIDomain] = []byte(t.APIDomain)
	}
	if t.RefreshToken != "" {
		d[keyRefreshToken] = []byte(t.RefreshToken)
	}
	putTime := func(k string, v time.Time) {
		if !v.IsZero() {
			d[k] = []byte(v.UTC().Format(time.RFC3339))
		}
	}
	if t.Expires {
		putTime(keyExpiresAt, t.ExpiresAt)
	}
	putTime(keyRefreshExpiresAt, t.RefreshTokenExpiresAt)
	putTime(keyDataAccessExpiresAt, t.DataAccessExpiresAt)
	putTime(keyObtainedAt, t.ObtainedAt)
	if t.Type != "" {
		d[keyTokenType] = []byte(t.Type)
	}
	if len(t.Scopes) > 0 {
		d[keyScopes] = []byte(strings.Join(t.Scopes, ","))
	}
	d[keyRefreshable] = []byte(fmt.Sprint(t.Refreshable))
	return d
}

// storedForm returns t with its times as the state Secret keeps them (UTC,
// whole seconds), so a decision made right after obtaining a token is the
// same as one made after reading it back.
func storedForm(t *provider.Token) *provider.Token {
	if t == nil {
		return nil
	}
	cp := *t
	cp.Scopes = slices.Clone(t.Scopes)
	for _, tm := range []*time.Time{&cp.ExpiresAt, &cp.RefreshTokenExpiresAt, &cp.DataAccessExpiresAt, &cp.ObtainedAt} {
		if !tm.IsZero() {
			*tm = tm.UTC().Truncate(time.Second)
		}
	}
	if !cp.Expires {
		cp.ExpiresAt = time.Time{}
	}
	return &cp
}

// errCorruptState is a state Secret the operator cannot read. It is never
// overwritten: that could drop a live refresh token.
type errCorruptState struct{ key string }

func (e errCorruptState) Error() string {
	return fmt.Sprintf("state Secret key %q cannot be read", e.key)
}

// decodeState reads a state Secret. A Secret without an access token holds
// only bookkeeping. Unreadable content is an errCorruptState naming the key
// (never its value).
func decodeState(d map[string][]byte) (tokenState, error) {
	var s tokenState
	s.Provider = string(d[keyProvider])
	if c := strings.TrimSpace(string(d[keyConsumed])); c != "" {
		s.Consumed = strings.Split(c, "\n")
	}
	s.HandledRequest = string(d[keyHandledRequest])
	s.CredsVersion = string(d[keyCredentialsVersion])
	getJSON := func(k string, v any) error {
		if len(d[k]) == 0 {
			return nil
		}
		if err := json.Unmarshal(d[k], v); err != nil {
			return errCorruptState{key: k}
		}
		return nil
	}
	var in spendIntent
	var fail, rej failureRecord
	var az authzRecord
	for _, e := range []struct {
		key string
		v   any
	}{{keyIntent, &in}, {keyFailure, &fail}, {keyGrantRejection, &rej}, {keyAuthorization, &az}} {
		if err := getJSON(e.key, e.v); err != nil {
			return tokenState{}, err
		}
	}
	if len(d[keyIntent]) > 0 {
		s.Intent = &in
	}
	if len(d[keyFailure]) > 0 {
		s.Failure = &fail
	}
	if len(d[keyGrantRejection]) > 0 {
		s.GrantRejection = &rej
	}
	if len(d[keyAuthorization]) > 0 {
		s.Authorization = &az
	}
	if len(d[keyAccessToken]) == 0 {
		if len(d[keyRefreshToken]) > 0 {
			// A refresh token without its access token is not something
			// the operator writes: do not guess.
			return tokenState{}, errCorruptState{key: keyAccessToken}
		}
		return s, nil
	}
	t := &provider.Token{
		AccessToken:          string(d[keyAccessToken]),
		PublishedAccessToken: string(d[keyPublishedAccessToken]),
		APIDomain:            string(d[keyAPIDomain]),
		RefreshToken:         string(d[keyRefreshToken]),
		Type:                 string(d[keyTokenType]),
	}
	switch r := string(d[keyRefreshable]); r {
	case "true", "false":
		t.Refreshable = r == "true"
	default:
		return tokenState{}, errCorruptState{key: keyRefreshable}
	}
	if sc := string(d[keyScopes]); sc != "" {
		t.Scopes = strings.Split(sc, ",")
	}
	var err error
	getTime := func(k string) time.Time {
		v := d[k]
		if len(v) == 0 || err != nil {
			return time.Time{}
		}
		var tm time.Time
		tm, err = time.Parse(time.RFC3339, string(v))
		if err != nil {
			err = errCorruptState{key: k}
		}
		return tm
	}
	t.ExpiresAt = getTime(keyExpiresAt)
	t.Expires = !t.ExpiresAt.IsZero()
	t.RefreshTokenExpiresAt = getTime(keyRefreshExpiresAt)
	t.DataAccessExpiresAt = getTime(keyDataAccessExpiresAt)
	t.ObtainedAt = getTime(keyObtainedAt)
	if err != nil {
		return tokenState{}, err
	}
	s.Token = t
	return s, nil
}

// sameData reports whether two Secret data maps are equal.
func sameData(a, b map[string][]byte) bool {
	return maps.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}
