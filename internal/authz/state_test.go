package authz

import (
	"strings"
	"testing"
)

func TestNewStateHashesAndMatches(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s, h, err := NewState()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != 43 || strings.ContainsAny(s, "+/=") {
			t.Fatalf("state %d characters or not URL-safe", len(s))
		}
		if seen[s] {
			t.Fatal("a state was minted twice")
		}
		seen[s] = true
		if !ValidHash(h) || h != Hash(s) || !Matches(s, h) {
			t.Fatal("hash of a minted state does not match it")
		}
		if Matches(s+"x", h) || Matches("", h) {
			t.Fatal("a different state matches the hash")
		}
		if id := RequestID(h); len(id) != 12 || !strings.HasPrefix(h, HashPrefix+id) {
			t.Fatalf("request ID %q", id)
		}
	}
	for _, bad := range []string{"", "sha256:", "sha256:" + strings.Repeat("A", 64), "md5:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("a", 63)} {
		if ValidHash(bad) || RequestID(bad) != "" {
			t.Errorf("ValidHash(%q) = true", bad)
		}
	}
}
