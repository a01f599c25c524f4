package amocrm

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
)

func specFor(domain string) *tokensv1alpha1.ManagedTokenSpec {
	return &tokensv1alpha1.ManagedTokenSpec{Provider: tokensv1alpha1.ProviderAmoCRM,
		AmoCRM: &tokensv1alpha1.AmoCRMSpec{Domain: domain, RedirectURI: testRedirectURI}}
}

func TestConsentURL(t *testing.T) {
	tests := []struct {
		name, base string
		spec       *tokensv1alpha1.ManagedTokenSpec
		clientID   string
		want       string // "": an error
		wantReason string
	}{
		{"amocrm.ru", "", specFor("example.amocrm.ru"), testClientID, "https://www.amocrm.ru/oauth?client_id=" + testClientID + "&mode=post_message", ""},
		{"amocrm.com", "", specFor("example.amocrm.com"), testClientID, "https://www.amocrm.com/oauth?client_id=" + testClientID + "&mode=post_message", ""},
		{"kommo.com", "", specFor("example.kommo.com"), testClientID, "https://www.kommo.com/oauth?client_id=" + testClientID + "&mode=post_message", ""},
		{"client_id trimmed", "", specFor("example.kommo.com"), " " + testClientID + "\n", "https://www.kommo.com/oauth?client_id=" + testClientID + "&mode=post_message", ""},
		{"base as is", "http://127.0.0.1:8080/oauth", specFor("example.amocrm.ru"), testClientID, "http://127.0.0.1:8080/oauth?client_id=" + testClientID + "&mode=post_message", ""},
		{"base with its own query", "https://proxy.example/oauth?tenant=a", specFor("example.amocrm.ru"), "id&x=1", "https://proxy.example/oauth?client_id=id%26x%3D1&mode=post_message&tenant=a", ""},
		{"base with fragment", "https://proxy.example/oauth#x", specFor("example.amocrm.ru"), testClientID, "", "InvalidConsentURL"},
		{"relative base", "/oauth", specFor("example.amocrm.ru"), testClientID, "", "InvalidConsentURL"},
		{"other scheme", "ftp://proxy.example/oauth", specFor("example.amocrm.ru"), testClientID, "", "InvalidConsentURL"},
		{"no client_id", "", specFor("example.amocrm.ru"), " ", "", "CredentialsKeyMissing"},
		{"no spec.amocrm", "", &tokensv1alpha1.ManagedTokenSpec{}, testClientID, "", "AmoCRMSpecMissing"},
		{"nil spec", "", nil, testClientID, "", "AmoCRMSpecMissing"},
		{"foreign domain", "", specFor("example.evil.com"), testClientID, "", "InvalidDomain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConsentURL(tc.base, tc.spec, tc.clientID)
			if tc.want == "" {
				pe := asProviderError(t, err)
				if pe.Kind != provider.KindConfiguration || pe.Reason != tc.wantReason || got != "" {
					t.Fatalf("got %q, %v/%s", got, pe.Kind, pe.Reason)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
			// The caller appends the state: the result must stay a URL
			// whose query holds every parameter.
			u, err := url.Parse(got + "&state=" + "eyJ0IjoxfQ_-x")
			if err != nil {
				t.Fatal(err)
			}
			q := u.Query()
			if q.Get("state") != "eyJ0IjoxfQ_-x" || q.Get("client_id") != strings.TrimSpace(tc.clientID) || q.Get("mode") != "post_message" {
				t.Errorf("query after appending state: %v", q)
			}
		})
	}
}

// TestBootstrapCodeOnAccountHost: the code is exchanged on the host the
// callback's referer named (AccountHost), which the token keeps in
// APIDomain when it is not spec.amocrm.domain; foreign hosts are refused.
func TestBootstrapCodeOnAccountHost(t *testing.T) {
	tests := []struct {
		name, accountHost, moveTo string
		wantHost, wantAPIDomain   string
		wantReason                string // a refusal, no request sent
	}{
		{"no account host", "", "", testDomain, "", ""},
		{"spec domain", testDomain, "", testDomain, "", ""},
		{"spec domain, other case", " EXAMPLE.amocrm.RU ", "", testDomain, "", ""},
		{"moved to kommo.com", "example.kommo.com", "example.kommo.com", "example.kommo.com", "example.kommo.com", ""},
		{"renamed", "renamed.amocrm.ru", "renamed.amocrm.ru", "renamed.amocrm.ru", "renamed.amocrm.ru", ""},
		{"foreign host", "example.evil.com", "", "", "", "AccountHostNotAllowed"},
		{"suffix trick", "example.amocrm.ru.evil.com", "", "", "", "AccountHostNotAllowed"},
		{"host with port", "example.amocrm.ru:8443", "", "", "", "AccountHostNotAllowed"},
		{"URL, not a host", "https://example.amocrm.ru", "", "", "", "AccountHostNotAllowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, nil)
			if tc.moveTo != "" {
				h.fake.MoveAccount(tc.moveTo, false)
			}
			req := request("authorization_code", h.fake.IssueAuthorizationCode())
			req.AccountHost = tc.accountHost
			tok, err := h.client.Bootstrap(context.Background(), req, GrantAuthorizationCode)
			if tc.wantReason != "" {
				pe := asProviderError(t, err)
				if pe.Kind != provider.KindConfiguration || pe.Reason != tc.wantReason || len(h.requests()) != 0 {
					t.Fatalf("got %v/%s after %d requests", pe.Kind, pe.Reason, len(h.requests()))
				}
				if strings.Contains(pe.Error(), "evil") {
					t.Errorf("the error quotes the callback's host: %v", pe)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r := h.lastRequest(); r.host != tc.wantHost || r.params["grant_type"] != "authorization_code" {
				t.Errorf("exchanged on %q (%s), want %q", r.host, r.params["grant_type"], tc.wantHost)
			}
			if tok.APIDomain != tc.wantAPIDomain {
				t.Errorf("APIDomain %q, want %q", tok.APIDomain, tc.wantAPIDomain)
			}
			// The token's later calls go to its host.
			if _, err := h.client.Probe(context.Background(), request(), tok); err != nil {
				t.Fatalf("probe: %v", err)
			}
			next, err := h.client.Refresh(context.Background(), request(), tok)
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			if r := h.lastRequest(); r.host != tc.wantHost || next.APIDomain != tc.wantAPIDomain {
				t.Errorf("refreshed on %q, APIDomain %q", r.host, next.APIDomain)
			}
		})
	}
}

// TestConsentFlowAgainstFake drives the whole flow: the consent URL, the
// fake's OAuth page, its redirect to the redirect URI, and the code
// exchange on the referer's host.
func TestConsentFlowAgainstFake(t *testing.T) {
	for _, moved := range []bool{false, true} {
		h := newHarness(t, nil, nil)
		if moved {
			h.fake.MoveAccount("example.kommo.com", false)
		}
		consent, err := ConsentURL(h.srv.URL+amocrmfake.ConsentPath, spec(), testClientID)
		if err != nil {
			t.Fatal(err)
		}
		noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := noFollow.Get(consent + "&state=s1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || err != nil {
			t.Fatalf("consent: %d %v", resp.StatusCode, err)
		}
		q := loc.Query()
		if q.Get("state") != "s1" || q.Get("client_id") != testClientID {
			t.Fatalf("callback: state %q client_id %q", q.Get("state"), q.Get("client_id"))
		}
		req := request("authorization_code", q.Get("code"))
		req.AccountHost = q.Get("referer")
		tok, err := h.client.Bootstrap(context.Background(), req, GrantAuthorizationCode)
		if err != nil {
			t.Fatalf("moved=%v: %v", moved, err)
		}
		if wantAPI := map[bool]string{false: "", true: "example.kommo.com"}[moved]; tok.APIDomain != wantAPI || !tok.Refreshable {
			t.Errorf("moved=%v: APIDomain %q refreshable %v", moved, tok.APIDomain, tok.Refreshable)
		}
		// The consumed code fails again, classified, and leaks nothing.
		_, err = h.client.Bootstrap(context.Background(), req, GrantAuthorizationCode)
		pe := asProviderError(t, err)
		if pe.Kind != provider.KindReauthorize || pe.Reason != "AuthorizationCodeInvalid" {
			t.Errorf("replayed code: %v/%s", pe.Kind, pe.Reason)
		}
		for _, s := range append(h.fake.Secrets(), testClientSecret) {
			if strings.Contains(pe.Error(), s) {
				t.Error("the error leaks a secret")
			}
		}
	}
}
