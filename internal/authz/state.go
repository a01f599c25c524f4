// Package authz holds what kubectl tokenkeeper authorize and the operator's
// authorization endpoint must agree on: how an OAuth state is minted and
// hashed, and how a request is named.
//
// The state is minted by the command (32 bytes from crypto/rand) and only
// its SHA-256 ever reaches the cluster: the command puts the hash in the
// ManagedToken's tokens.tokenkeeper.dev/authorize-request annotation, the
// operator binds it to the ManagedToken's UID and stores it in the state
// Secret, and the callback proves knowledge of the state by hashing what it
// received. Nobody who can read the cluster (the API server, etcd, a
// backup, a user with get on ManagedTokens or Secrets) can forge a callback.
package authz

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"regexp"
	"time"
)

const (
	// HashPrefix starts every request hash.
	HashPrefix = "sha256:"
	// RequestTTL is how long a request is accepted after the operator took it.
	RequestTTL = 15 * time.Minute
	// stateBytes is the entropy of a state: 256 bits.
	stateBytes = 32
	// MaxStateLength bounds the state a callback may carry; a minted one is 43.
	MaxStateLength = 128
)

var hashPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// NewState mints a state and returns it with its hash.
func NewState() (state, hash string, err error) {
	b := make([]byte, stateBytes)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("minting an OAuth state: %w", err)
	}
	state = base64.RawURLEncoding.EncodeToString(b)
	return state, Hash(state), nil
}

// Hash is the form in which a state is stored and compared.
func Hash(state string) string {
	sum := sha256.Sum256([]byte(state))
	return HashPrefix + hex.EncodeToString(sum[:])
}

// ValidHash reports whether h is a well-formed request hash.
func ValidHash(h string) bool { return hashPattern.MatchString(h) }

// Matches reports, in constant time, whether state hashes to h.
func Matches(state, h string) bool {
	return subtle.ConstantTimeCompare([]byte(Hash(state)), []byte(h)) == 1
}

// RequestID is the short name of a request shown in status: the first 12
// hex digits of its hash.
func RequestID(hash string) string {
	if !ValidHash(hash) {
		return ""
	}
	return hash[len(HashPrefix) : len(HashPrefix)+12]
}
