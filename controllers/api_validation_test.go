package controllers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

func validAmoCRM(ns, name string) *tokensv1alpha1.ManagedToken {
	return &tokensv1alpha1.ManagedToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: tokensv1alpha1.ManagedTokenSpec{
			Provider:             tokensv1alpha1.ProviderAmoCRM,
			CredentialsSecretRef: tokensv1alpha1.SecretReference{Name: "amocrm-oauth"},
			SecretName:           "amocrm-token",
			AmoCRM:               &tokensv1alpha1.AmoCRMSpec{Domain: "example.amocrm.ru", RedirectURI: "https://api.example.com/amocrm/callback"},
		},
	}
}

func validFacebook(ns, name string) *tokensv1alpha1.ManagedToken {
	return &tokensv1alpha1.ManagedToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: tokensv1alpha1.ManagedTokenSpec{
			Provider:             tokensv1alpha1.ProviderFacebook,
			CredentialsSecretRef: tokensv1alpha1.SecretReference{Name: "facebook-app"},
			SecretName:           "facebook-token",
		},
	}
}

// TestSamplesAreAccepted applies every object in config/samples to the real
// API server.
func TestSamplesAreAccepted(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	files, err := filepath.Glob(filepath.Join("..", "config", "samples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var providers []string
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); err != nil {
				break
			}
			if len(u.Object) == 0 {
				continue
			}
			u.SetNamespace(ns)
			if err := k8sClient.Create(ctx, u); err != nil {
				t.Errorf("%s: %s %s rejected: %v", f, u.GetKind(), u.GetName(), err)
				continue
			}
			if u.GetKind() == "ManagedToken" {
				p, _, _ := unstructured.NestedString(u.Object, "spec", "provider")
				providers = append(providers, p)
			}
		}
	}
	joined := strings.Join(providers, ",")
	if !strings.Contains(joined, "Facebook") || !strings.Contains(joined, "AmoCRM") {
		t.Fatalf("config/samples must hold a Facebook and an AmoCRM ManagedToken; found %q", joined)
	}
}

func TestDefaultsAreApplied(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	fb := validFacebook(ns, "fb")
	fb.Spec.Facebook = &tokensv1alpha1.FacebookSpec{}
	if err := k8sClient.Create(ctx, fb); err != nil {
		t.Fatal(err)
	}
	got := &tokensv1alpha1.ManagedToken{}
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(fb), got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.CheckInterval == nil || got.Spec.CheckInterval.Duration != 2*time.Hour {
		t.Errorf("checkInterval default = %v, want 2h", got.Spec.CheckInterval)
	}
	if got.Spec.Facebook.GraphAPIVersion != tokensv1alpha1.DefaultGraphAPIVersion {
		t.Errorf("graphAPIVersion default = %q, want %q", got.Spec.Facebook.GraphAPIVersion, tokensv1alpha1.DefaultGraphAPIVersion)
	}
	// refreshBefore depends on the provider, which an OpenAPI default
	// cannot express: the controller applies it.
	if rb := effectiveRefreshBefore(&got.Spec, nil); rb != 168*time.Hour {
		t.Errorf("Facebook refreshBefore = %v, want 168h", rb)
	}
	amo := validAmoCRM(ns, "amo")
	if err := k8sClient.Create(ctx, amo); err != nil {
		t.Fatal(err)
	}
	if rb := effectiveRefreshBefore(&amo.Spec, nil); rb != 2*time.Hour {
		t.Errorf("AmoCRM refreshBefore = %v, want 2h", rb)
	}
}

// TestInvalidInputIsRejected proves each invalid case is refused by the API
// server with a message that names the field and says what to fix.
func TestInvalidInputIsRejected(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	dur := func(s string) *metav1.Duration { d, _ := time.ParseDuration(s); return &metav1.Duration{Duration: d} }
	tests := []struct {
		name   string
		mutate func(mt *tokensv1alpha1.ManagedToken)
		base   func(ns, name string) *tokensv1alpha1.ManagedToken
		want   []string // substrings of the error
	}{
		{"unknown provider", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.Provider = "Google"; mt.Spec.AmoCRM = nil }, validAmoCRM,
			[]string{"spec.provider", `supported values: "Facebook", "AmoCRM"`}},
		{"AmoCRM without amocrm block", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM = nil }, validAmoCRM,
			[]string{"spec.amocrm", "required when provider is AmoCRM"}},
		{"AmoCRM without domain", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM.Domain = "" }, validAmoCRM,
			[]string{"spec.amocrm.domain"}},
		{"AmoCRM without redirectURI", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM.RedirectURI = "" }, validAmoCRM,
			[]string{"spec.amocrm.redirectURI", "https://"}},
		{"domain evil.example.com", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM.Domain = "evil.example.com" }, validAmoCRM,
			[]string{"spec.amocrm.domain", "<subdomain>.amocrm.ru"}},
		{"domain x.amocrm.ru.evil.com", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM.Domain = "x.amocrm.ru.evil.com" }, validAmoCRM,
			[]string{"spec.amocrm.domain", "<subdomain>.amocrm.ru"}},
		{"domain 127.0.0.1", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM.Domain = "127.0.0.1" }, validAmoCRM,
			[]string{"spec.amocrm.domain", "<subdomain>.amocrm.ru"}},
		{"domain a.b.amocrm.ru", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM.Domain = "a.b.amocrm.ru" }, validAmoCRM,
			[]string{"spec.amocrm.domain", "single lowercase subdomain"}},
		{"redirectURI over http", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.AmoCRM.RedirectURI = "http://api.example.com/cb" }, validAmoCRM,
			[]string{"spec.amocrm.redirectURI", "https://"}},
		{"facebook block on AmoCRM", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.Facebook = &tokensv1alpha1.FacebookSpec{} }, validAmoCRM,
			[]string{"spec.facebook", "must not be set when provider is AmoCRM"}},
		{"amocrm block on Facebook", func(mt *tokensv1alpha1.ManagedToken) {
			mt.Spec.AmoCRM = &tokensv1alpha1.AmoCRMSpec{Domain: "x.amocrm.ru", RedirectURI: "https://x.example.com/cb"}
		}, validFacebook, []string{"spec.amocrm", "must not be set when provider is Facebook"}},
		{"zero refreshBefore", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.RefreshBefore = dur("0s") }, validAmoCRM,
			[]string{"spec.refreshBefore", "positive duration"}},
		{"negative refreshBefore", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.RefreshBefore = dur("-1h") }, validAmoCRM,
			[]string{"spec.refreshBefore", "positive duration"}},
		{"negative checkInterval", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.CheckInterval = dur("-5m") }, validAmoCRM,
			[]string{"spec.checkInterval", "at least 1m"}},
		{"checkInterval under a minute", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.CheckInterval = dur("30s") }, validAmoCRM,
			[]string{"spec.checkInterval", "at least 1m"}},
		{"empty secretName", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.SecretName = "" }, validAmoCRM,
			[]string{"spec.secretName"}},
		{"invalid secretName", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.SecretName = "Bad_Name" }, validAmoCRM,
			[]string{"spec.secretName", "valid Secret name"}},
		{"empty credentialsSecretRef.name", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.CredentialsSecretRef.Name = "" }, validAmoCRM,
			[]string{"spec.credentialsSecretRef.name"}},
		{"invalid credentialsSecretRef.name", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.CredentialsSecretRef.Name = "-creds" }, validAmoCRM,
			[]string{"spec.credentialsSecretRef.name", "valid Secret name"}},
		{"secretName equal to credentials", func(mt *tokensv1alpha1.ManagedToken) { mt.Spec.SecretName = mt.Spec.CredentialsSecretRef.Name }, validAmoCRM,
			[]string{"spec.secretName", "must differ from spec.credentialsSecretRef.name"}},
		{"graphAPIVersion malformed", func(mt *tokensv1alpha1.ManagedToken) {
			mt.Spec.Facebook = &tokensv1alpha1.FacebookSpec{GraphAPIVersion: "26"}
		}, validFacebook, []string{"spec.facebook.graphAPIVersion", "v26.0"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mt := tc.base(ns, "bad-"+string(rune('a'+i)))
			tc.mutate(mt)
			err := k8sClient.Create(ctx, mt)
			if err == nil {
				t.Fatalf("accepted; want rejection mentioning %q", tc.want)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err.Error(), w)
				}
			}
		})
	}
}

func TestProviderIsImmutable(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	mt := validFacebook(ns, "fb")
	if err := k8sClient.Create(ctx, mt); err != nil {
		t.Fatal(err)
	}
	mt.Spec.Provider = tokensv1alpha1.ProviderAmoCRM
	mt.Spec.AmoCRM = &tokensv1alpha1.AmoCRMSpec{Domain: "x.amocrm.ru", RedirectURI: "https://x.example.com/cb"}
	err := k8sClient.Update(ctx, mt)
	if err == nil || !strings.Contains(err.Error(), "spec.provider") || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("changing the provider must be refused naming spec.provider: %v", err)
	}
}

func TestLongNameIsRejected(t *testing.T) {
	mt := validFacebook(newNamespace(t), strings.Repeat("a", 64))
	err := k8sClient.Create(context.Background(), mt)
	if err == nil || !strings.Contains(err.Error(), "at most 63 characters") {
		t.Fatalf("a 64-character name must be refused: %v", err)
	}
}
