package callback

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/authz"
)

func TestParse(t *testing.T) {
	amo, fb := tokensv1alpha1.ProviderAmoCRM, tokensv1alpha1.ProviderFacebook
	long := strings.Repeat("a", maxCode+1)
	for _, tc := range []struct {
		name    string
		p       tokensv1alpha1.Provider
		query   string
		refused string
		want    Params
	}{
		{"amocrm code", amo, "code=def502&state=s1&referer=Sub.AmoCRM.ru&platform=1&client_id=c1", "",
			Params{Provider: amo, Code: "def502", State: "s1", Referer: "sub.amocrm.ru", ClientID: "c1"}},
		{"amocrm referer with scheme and port", amo, "code=x&state=s&referer=https://sub.kommo.com:443/", "",
			Params{Provider: amo, Code: "x", State: "s", Referer: "sub.kommo.com"}},
		{"amocrm unsolicited", amo, "code=x&referer=sub.amocrm.ru&client_id=c", "",
			Params{Provider: amo, Code: "x", Referer: "sub.amocrm.ru", ClientID: "c"}},
		{"facebook code", fb, "code=AQB&state=s2", "", Params{Provider: fb, Code: "AQB", State: "s2"}},
		{"facebook ignores referer", fb, "code=AQB&state=s2&referer=evil", "", Params{Provider: fb, Code: "AQB", State: "s2"}},
		{"facebook denied", fb, "error=access_denied&error_code=200&error_description=Permissions+error&error_reason=user_denied&state=s", "",
			Params{Provider: fb, Denied: "access_denied", Description: "Permissions error", State: "s"}},
		{"nothing", fb, "state=s", Malformed, Params{}},
		{"code and error", fb, "state=s&code=c&error=access_denied", Malformed, Params{}},
		{"repeated state", amo, "code=c&state=a&state=b", Malformed, Params{}},
		{"repeated code", fb, "code=c&code=d&state=a", Malformed, Params{}},
		{"long state", fb, "code=c&state=" + strings.Repeat("s", authz.MaxStateLength+1), Malformed, Params{}},
		{"long code", fb, "code=" + long + "&state=s", Malformed, Params{}},
		{"long query", fb, "code=c&state=s&x=" + strings.Repeat("x", maxQuery), Malformed, Params{}},
		{"control character", fb, "code=c%00d&state=s", Malformed, Params{}},
		{"bad escape", fb, "code=%zz&state=s", Malformed, Params{}},
		{"referer not a host", amo, "code=c&state=s&referer=a%20b.amocrm.ru", Malformed, Params{}},
		{"referer empty label", amo, "code=c&state=s&referer=a..amocrm.ru", Malformed, Params{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, refusal := Parse(tc.p, tc.query)
			if tc.refused != "" {
				if refusal == nil || refusal.Outcome != tc.refused {
					t.Fatalf("Parse = %+v, %+v; want refusal %s", got, refusal, tc.refused)
				}
				return
			}
			if refusal != nil {
				t.Fatalf("refused: %+v", refusal)
			}
			if got != tc.want {
				t.Fatalf("Parse = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// FuzzParse: Parse never panics, never accepts what it promises to refuse,
// and its refusal messages never repeat the query's values.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"code=def502&state=s1&referer=sub.amocrm.ru&platform=1&client_id=c1",
		"code=AQB&state=s2", "error=access_denied&state=s", "code=%zz", "state=a&state=b&code=c",
		"code=x&referer=https://SUB.kommo.com:443/path?x#y", "code=" + strings.Repeat("z", 3000),
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, q string, amo bool) {
		p := tokensv1alpha1.ProviderFacebook
		if amo {
			p = tokensv1alpha1.ProviderAmoCRM
		}
		got, refusal := Parse(p, q)
		if refusal != nil {
			if refusal.Outcome != Malformed {
				t.Fatalf("refusal %q", refusal.Outcome)
			}
			if v, err := url.ParseQuery(q); err == nil {
				for _, vs := range v {
					for _, s := range vs {
						if len(s) >= 8 && strings.Contains(refusal.Message, s) {
							t.Fatalf("refusal message repeats a value of the query")
						}
					}
				}
			}
			return
		}
		if len(q) > maxQuery {
			t.Fatal("accepted an over-long query")
		}
		if (got.Code == "") == (got.Denied == "") {
			t.Fatal("accepted a callback with neither or both of code and error")
		}
		if len(got.State) > authz.MaxStateLength || len(got.Code) > maxCode {
			t.Fatal("accepted an over-long field")
		}
		for _, s := range []string{got.State, got.Code, got.Referer, got.ClientID, got.Denied, got.Description} {
			if !printable(s) || !utf8.ValidString(s) && strings.ContainsRune(s, 0) {
				t.Fatalf("accepted a non-printable field %q", s)
			}
		}
		if got.Referer != "" {
			if h, ok := NormalizeHost(got.Referer); !ok || h != got.Referer {
				t.Fatalf("referer %q is not normalized", got.Referer)
			}
		}
		if !amo && (got.Referer != "" || got.ClientID != "") {
			t.Fatal("a Facebook callback took AmoCRM fields")
		}
	})
}

func TestServerPageLimitsAndCounts(t *testing.T) {
	const secretCode = "code-that-must-not-be-echoed-7f3a"
	var mu sync.Mutex
	counted := map[string]int{}
	var handled []Params
	h := NewServer(Options{
		RatePerSecond: 0.001, Burst: 3,
		Record: func(p, result string) { mu.Lock(); counted[p+"/"+result]++; mu.Unlock() },
		Handler: func(_ context.Context, p Params) Result {
			handled = append(handled, p)
			return Result{Outcome: Accepted, ManagedToken: "ns/<crm>", Message: "authorized <b>"}
		},
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path string) (*http.Response, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, body := get(tokensv1alpha1.AmoCRMCallbackPath + "?code=" + secretCode + "&state=s&referer=a.amocrm.ru")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Authorized") || !strings.Contains(body, "ns/&lt;crm&gt;") || !strings.Contains(body, "authorized &lt;b&gt;") {
		t.Fatalf("page %d:\n%s", resp.StatusCode, body)
	}
	if strings.Contains(body, secretCode) {
		t.Fatal("the page repeats the code")
	}
	for k, v := range map[string]string{"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"} {
		if resp.Header.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, resp.Header.Get(k), v)
		}
	}
	resp, body = get(tokensv1alpha1.FacebookCallbackPath + "?state=s")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "refused") {
		t.Fatalf("malformed: %d %s", resp.StatusCode, body)
	}
	if resp, _ := http.Post(srv.URL+tokensv1alpha1.FacebookCallbackPath, "text/plain", strings.NewReader("x")); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST answered %d", resp.StatusCode)
	}
	get(tokensv1alpha1.FacebookCallbackPath + "?code=c&state=s")
	resp, _ = get(tokensv1alpha1.FacebookCallbackPath + "?code=c&state=s")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth callback within the burst of 3: %d", resp.StatusCode)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]int{"AmoCRM/accepted": 1, "Facebook/Malformed": 1, "Facebook/accepted": 1, "Facebook/RateLimited": 1}
	for k, v := range want {
		if counted[k] != v {
			t.Errorf("counted %v, want %v", counted, want)
			break
		}
	}
	if len(handled) != 2 {
		t.Errorf("handler ran %d times, want 2 (refusals never reach it)", len(handled))
	}
}
