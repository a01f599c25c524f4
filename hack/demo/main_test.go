package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/hack/sandbox/state"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

func TestManifests(t *testing.T) {
	y := manifests("https://example.com/cb", "104169029247128")
	for _, want := range []string{
		"apiVersion: tokens.tokenkeeper.dev/v1alpha1", "name: amocrm\n", "provider: AmoCRM",
		"domain: " + amocrmfake.DefaultDomain, `redirectURI: "https://example.com/cb"`, "refreshBefore: 2m", "checkInterval: 1m",
		"name: facebook-never-expires\n", "secretName: facebook-system-user-token",
		"name: facebook-page\n", "  facebook:\n    pageID: \"104169029247128\"\n",
	} {
		if !strings.Contains(y, want) {
			t.Errorf("manifests lack %q:\n%s", want, y)
		}
	}
	if n := strings.Count(y, "kind: ManagedToken"); n != len(tokens) {
		t.Errorf("%d ManagedTokens rendered, want %d", n, len(tokens))
	}
	if n := strings.Count(y, "pageID:"); n != 1 {
		t.Errorf("%d ManagedTokens name a Page, want 1 (facebook-page)", n)
	}
	for _, tk := range tokens {
		if tk.credentials == tk.output {
			t.Errorf("%s: the output Secret must differ from the credentials Secret", tk.name)
		}
	}
}

func TestNoSecretInMessages(t *testing.T) {
	secret := "def50200" + strings.Repeat("ab12", 40)
	got := describeArgs([]string{"create", "secret", "generic", "x", "--from-literal=refresh_token=" + secret})
	if strings.Contains(got, secret) || !strings.Contains(got, "--from-literal=refresh_token=<elided>") {
		t.Errorf("describeArgs = %q", got)
	}
	if r := redact(`{"msg":"refreshed","token":"` + secret + `"}`); strings.Contains(r, secret) {
		t.Errorf("redact kept the secret: %q", r)
	}
	jwt := "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + strings.Repeat("eyJhdWQiOiI4ZTJmOWMxYS00YjdkLTRlM2Et", 3) + "." + strings.Repeat("Zm9vYmFy", 40)
	if r := redact(`"token":"` + jwt + `"`); strings.Contains(r, "eyJ") || strings.Contains(r, "Zm9v") {
		t.Errorf("redact kept part of a JWT: %q", r)
	}
	for _, ordinary := range []string{
		`reconciling ManagedToken demo/amocrm`,
		`"lock":"default/tokenkeeper.tokens.tokenkeeper.dev","reconcileID":"aed92c25-129d-4aba-8ae8-02769bcd805c"`,
	} {
		if r := redact(ordinary); r != ordinary {
			t.Errorf("redact changed an ordinary line: %q", r)
		}
	}
	fp := fingerprint(secret)
	if !strings.HasPrefix(fp, "sha256:") || len(fp) != len("sha256:")+12 || strings.Contains(secret, fp[7:]) {
		t.Errorf("fingerprint = %q", fp)
	}
}

func TestHumanAndDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		2*time.Minute + 51*time.Second: "2m51s",
		(60*24 - 1) * time.Hour:        "59d23h",
		-5 * time.Second:               "expired 5s ago",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%s) = %q, want %q", d, got, want)
		}
	}
	for in, want := range map[string]time.Duration{"150s": 150 * time.Second, "150": 150 * time.Second, "5m": 5 * time.Minute} {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %s, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0s", "-1m", "soon"} {
		if _, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) accepted", in)
		}
	}
}

func TestOverBudget(t *testing.T) {
	for _, tk := range tokens {
		if tk.provider == "Facebook" {
			if d, err := time.ParseDuration(tk.checkInterval); err != nil || d != fbCheckInterval {
				t.Errorf("%s: checkInterval %q, want %s", tk.name, tk.checkInterval, fbCheckInterval)
			}
		}
	}
	normal := &state.Status{RefreshGrants: 3, AccountProbes: 0, FacebookExchanges: 1, FacebookRefreshes: 1, DebugTokenCalls: 6}
	if p := overBudget(normal, 150*time.Second); len(p) != 0 {
		t.Errorf("a normal run flagged: %v", p)
	}
	// Seen with checkInterval 1m and refreshBefore 168h: a probe a second.
	loop := &state.Status{RefreshGrants: 3, FacebookExchanges: 1, FacebookRefreshes: 1, DebugTokenCalls: 163}
	if p := overBudget(loop, 150*time.Second); len(p) != 1 || !strings.Contains(p[0], "debug_token") {
		t.Errorf("a debug_token loop not flagged: %v", p)
	}
}
