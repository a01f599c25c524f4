package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tokenkeeper/tokenkeeper/internal/provider"
)

// The state Secret is the operator's own durable record of a credential:
// the current access token, the rotated refresh token (AmoCRM) and the
// fingerprints of consumed grants. It is never mounted by workloads, never
// the output Secret and never the user's credentials Secret (which the
// operator only reads, so GitOps tools do not fight over it).
const (
	stateSecretType corev1.SecretType = "tokens.tokenkeeper.dev/state"
	stateNamePrefix                   = "tokenkeeper-state-"

	roleOutput = "output"
	roleState  = "state"

	keyAccessToken         = "access_token"
	keyPublishedToken      = "published_access_token"
	keyAPIDomain           = "api_domain"
	keyRefreshToken        = "refresh_token"
	keyExpiresAt           = "expires_at"
	keyRefreshExpiresAt    = "refresh_token_expires_at"
	keyDataAccessExpiresAt = "data_access_expires_at"
	keyObtainedAt          = "obtained_at"
	keyTokenType           = "token_type"
	keyScopes              = "scopes"
	keyRefreshable         = "refreshable"
	keyConsumed            = "consumed_grants"
	keyHandledRequest      = "handled_refresh_request"

	// maxConsumed bounds the remembered grant fingerprints.
	maxConsumed = 16
)

// stateSecretName is the name of a ManagedToken's state Secret.
func stateSecretName(mtName string) string { return stateNamePrefix + mtName }

// tokenState is the decoded content of a state Secret.
type tokenState struct {
	Token *provider.Token
	// Consumed are fingerprints of grants already consumed, newest last.
	Consumed []string
	// HandledRequest is the refresh-requested-at value whose refresh produced
	// this state. It is stored with the new pair, so a failed status write
	// cannot cause a second refresh for the same request.
	HandledRequest string
}

// fingerprint identifies a credentials value without revealing it.
func fingerprint(key, value string) string {
	sum := sha256.Sum256([]byte(key + "\x00" + value))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func (s tokenState) hasConsumed(fp string) bool {
	for _, c := range s.Consumed {
		if c == fp {
			return true
		}
	}
	return false
}

// withConsumed returns a copy of s that remembers fp.
func (s tokenState) withConsumed(fp string) tokenState {
	out := tokenState{Token: s.Token, Consumed: append([]string(nil), s.Consumed...), HandledRequest: s.HandledRequest}
	if !out.hasConsumed(fp) {
		out.Consumed = append(out.Consumed, fp)
	}
	if n := len(out.Consumed); n > maxConsumed {
		out.Consumed = out.Consumed[n-maxConsumed:]
	}
	return out
}

func encodeState(s tokenState) map[string][]byte {
	d := map[string][]byte{}
	if len(s.Consumed) > 0 {
		d[keyConsumed] = []byte(strings.Join(s.Consumed, "\n"))
	}
	if s.HandledRequest != "" {
		d[keyHandledRequest] = []byte(s.HandledRequest)
	}
	t := s.Token
	if t == nil {
		return d
	}
	d[keyAccessToken] = []byte(t.AccessToken)
	if t.PublishedAccessToken != "" {
		d[keyPublishedToken] = []byte(t.PublishedAccessToken)
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

// decodeState reads a state Secret. A Secret without an access token holds
// only consumed fingerprints.
func decodeState(d map[string][]byte) (tokenState, error) {
	var s tokenState
	if c := strings.TrimSpace(string(d[keyConsumed])); c != "" {
		s.Consumed = strings.Split(c, "\n")
	}
	s.HandledRequest = string(d[keyHandledRequest])
	if len(d[keyAccessToken]) == 0 {
		return s, nil
	}
	t := &provider.Token{
		AccessToken:          string(d[keyAccessToken]),
		PublishedAccessToken: string(d[keyPublishedToken]),
		APIDomain:            string(d[keyAPIDomain]),
		RefreshToken:         string(d[keyRefreshToken]),
		Type:                 string(d[keyTokenType]),
		Refreshable:          string(d[keyRefreshable]) == "true",
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
			err = fmt.Errorf("state key %s is not an RFC 3339 time", k)
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

// pendingStore keeps new token pairs that the provider issued but that could
// not be stored yet. While a pair is pending, the provider is not called for
// that ManagedToken: the pair is retried until it is stored, because the old
// refresh token is already dead. It also remembers the last stored state, so
// a deleted state Secret is written again instead of being lost.
type pendingStore struct {
	mu      sync.Mutex
	pending map[types.NamespacedName]pendingEntry
	last    map[types.NamespacedName]lastEntry
	// restarts are rollout restarts that failed and are owed, since the
	// next reconcile no longer sees the token change.
	restarts map[types.NamespacedName]bool
}

type pendingEntry struct {
	uid      types.UID
	state    tokenState
	attempts int32
}

type lastEntry struct {
	uid   types.UID
	state tokenState
}

func newPendingStore() *pendingStore {
	return &pendingStore{
		pending:  map[types.NamespacedName]pendingEntry{},
		last:     map[types.NamespacedName]lastEntry{},
		restarts: map[types.NamespacedName]bool{},
	}
}

// get returns the pending pair of the ManagedToken key with that uid.
func (p *pendingStore) get(key types.NamespacedName, uid types.UID) (pendingEntry, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pending[key]
	return e, ok && e.uid == uid
}

func (p *pendingStore) put(key types.NamespacedName, e pendingEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending[key] = e
}

// stored records that s is durably stored for the ManagedToken.
func (p *pendingStore) stored(key types.NamespacedName, uid types.UID, s tokenState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, key)
	p.last[key] = lastEntry{uid: uid, state: s}
}

// lastStored returns the state last stored for the ManagedToken.
func (p *pendingStore) lastStored(key types.NamespacedName, uid types.UID) (tokenState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.last[key]
	return e.state, ok && e.uid == uid
}

// restartOwed reports whether a failed rollout restart must be retried, and
// setRestartOwed records it.
func (p *pendingStore) restartOwed(key types.NamespacedName) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restarts[key]
}

func (p *pendingStore) setRestartOwed(key types.NamespacedName, owed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if owed {
		p.restarts[key] = true
	} else {
		delete(p.restarts, key)
	}
}

// forget drops everything kept for a deleted ManagedToken.
func (p *pendingStore) forget(key types.NamespacedName) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, key)
	delete(p.last, key)
	delete(p.restarts, key)
}
