package controllers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/amocrm/amocrmfake"
	"github.com/tokenkeeper/tokenkeeper/internal/provider/facebook/facebookfake"
)

// verbRecorder records every (verb, group/resource) a client sends.
type verbRecorder struct {
	inner http.RoundTripper
	mu    sync.Mutex
	used  map[string]bool
}

func (v *verbRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if gr, name, ok := apiResource(req.URL.Path); ok {
		verb := map[string]string{http.MethodPost: "create", http.MethodPut: "update", http.MethodPatch: "patch", http.MethodDelete: "delete"}[req.Method]
		if req.Method == http.MethodGet {
			switch {
			case req.URL.Query().Get("watch") == "true":
				verb = "watch"
			case name == "":
				verb = "list"
			default:
				verb = "get"
			}
		}
		v.mu.Lock()
		v.used[verb+" "+gr] = true
		if verb == "watch" && req.URL.Query().Get("sendInitialEvents") == "true" {
			// A streaming list (client-go's WatchList): the informer's
			// initial list, sent as a watch. Against an API server without
			// it, the informer falls back to a plain list, so the role
			// needs list either way.
			v.used["list "+gr] = true
		}
		v.mu.Unlock()
	}
	return v.inner.RoundTrip(req)
}

// apiResource turns /api/v1/namespaces/ns/secrets/x or
// /apis/g/v/namespaces/ns/r/x/status into "secrets" or "r/status" with
// its group, and the object name.
func apiResource(path string) (gr, name string, ok bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	var group string
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		group, parts = parts[1], parts[3:]
	default:
		return "", "", false
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	if len(parts) == 0 {
		return "", "", false
	}
	res := parts[0]
	if len(parts) >= 2 {
		name = parts[1]
	}
	if len(parts) >= 3 {
		res += "/" + parts[2]
	}
	return group + "/" + res, name, true
}

// shippedRole reads the ClusterRole that config/rbac ships.
func shippedRole(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(b, role); err != nil {
		t.Fatal(err)
	}
	return role
}

// granted lists the role's rules as "verb group/resource".
func granted(role *rbacv1.ClusterRole) []string {
	var out []string
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out = append(out, v+" "+g+"/"+res)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestLeastPrivilege runs the manager as its ServiceAccount bound to exactly
// the shipped ClusterRole, through bootstrap, refresh, publish, rollout
// restart and orphan cleanup. It passes only if the role is enough, and
// every verb the role grants is one the manager used: a verb that is not
// used is one too many, and a verb that is used cannot be removed without
// breaking the run (the run also shows a removed verb failing it).
func TestLeastPrivilege(t *testing.T) {
	ns := newNamespace(t)
	amo := amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI, AccessTokenTTL: 24 * time.Hour})
	srv := httptest.NewServer(amo)
	defer srv.Close()

	role := shippedRole(t)
	role.ObjectMeta = metav1.ObjectMeta{Name: "tokenkeeper-test-" + ns}
	if err := k8sClient.Create(ctx(), role); err != nil {
		t.Fatal(err)
	}
	user := "system:serviceaccount:" + ns + ":tokenkeeper-controller-manager"
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "tokenkeeper-controller-manager", Namespace: ns}},
	}
	if err := k8sClient.Create(ctx(), binding); err != nil {
		t.Fatal(err)
	}
	au, err := testEnv.AddUser(envtest.User{Name: user, Groups: []string{"system:serviceaccounts", "system:authenticated"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	userCfg := rest.CopyConfig(au.Config())
	rec := &verbRecorder{used: map[string]bool{}}
	userCfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { rec.inner = rt; return rec }

	// Without the role's "create secrets" the same identity is refused:
	// the binding is what grants the access (the suite runs with RBAC).
	uc, err := client.New(au.Config(), client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := uc.Create(ctx(), &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "x-" + ns}}); err == nil {
		t.Fatal("the manager's identity can create ClusterRoles: RBAC is not enforced, so this test proves nothing")
	}

	dep := createConsumer(t, ns)
	mkCreds := func(name string) {
		if err := k8sClient.Create(ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: map[string]string{
			"client_id": testClientID, "client_secret": testClientSecret, "refresh_token": amo.IssueRefreshToken()}}); err != nil {
			t.Fatal(err)
		}
	}
	mkCreds("amocrm-oauth")
	mt := validAmoCRM(ns, "crm")
	mt.Spec.AmoCRM.RedirectURI = testRedirectURI
	sts, ds := createStatefulSetAndDaemonSet(t, ns)
	mt.Spec.RolloutRestartTargets = []tokensv1alpha1.RolloutRestartTarget{{Kind: "Deployment", Name: dep.Name}, {Kind: "StatefulSet", Name: sts}, {Kind: "DaemonSet", Name: ds}}
	if err := k8sClient.Create(ctx(), mt); err != nil {
		t.Fatal(err)
	}
	startManagerWith(t, ns, srv.URL, srv.URL, "", managerOptions{restConfig: userCfg,
		tweak: func(r *ManagedTokenReconciler) { r.OrphanRetention = time.Second }})
	key := types.NamespacedName{Namespace: ns, Name: "crm"}
	readyWith := func(what string, cond func(*tokensv1alpha1.ManagedToken) bool) {
		eventually(t, what, 30*time.Second, func() bool {
			got := &tokensv1alpha1.ManagedToken{}
			if k8sClient.Get(ctx(), key, got) != nil {
				return false
			}
			c := condOf(got, tokensv1alpha1.ConditionReady)
			return c.Status == metav1.ConditionTrue && cond(got)
		})
	}
	readyWith("bootstrap", func(*tokensv1alpha1.ManagedToken) bool { return true })
	for i, req := range []string{"lp-1", "lp-2"} {
		patchAnnotation(t, key, req)
		readyWith("forced refresh "+req, func(m *tokensv1alpha1.ManagedToken) bool { return m.Status.LastHandledRefreshRequest == req })
		// The bootstrap used one refresh_token call.
		eventually(t, "a rollout restart", 20*time.Second, func() bool { return restartedAt(t, ns) != "" && amo.Calls("refresh_token") == i+2 })
	}
	// A second token, deleted: its state Secret is cleaned up.
	mkCreds("other-oauth")
	other := validAmoCRM(ns, "other")
	other.Spec.AmoCRM.RedirectURI = testRedirectURI
	other.Spec.CredentialsSecretRef.Name, other.Spec.SecretName = "other-oauth", "other-token"
	if err := k8sClient.Create(ctx(), other); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second token's state", 20*time.Second, func() bool {
		return k8sClient.Get(ctx(), types.NamespacedName{Namespace: ns, Name: stateSecretName("other")}, &corev1.Secret{}) == nil
	})
	if err := k8sClient.Delete(ctx(), other); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the orphaned state Secret deleted", 30*time.Second, func() bool {
		return k8sClient.Get(ctx(), types.NamespacedName{Namespace: ns, Name: stateSecretName("other")}, &corev1.Secret{}) != nil
	})
	// Identical events within minutes become a series, which is a patch.
	eventually(t, "an event series patch", 20*time.Second, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.used["patch events.k8s.io/events"]
	})

	rec.mu.Lock()
	var used []string
	for k := range rec.used {
		used = append(used, k)
	}
	rec.mu.Unlock()
	sort.Strings(used)
	g := granted(shippedRole(t))
	fmt.Printf("measured: least privilege: the role grants %d verbs, the manager used %d: %s\n", len(g), len(used), strings.Join(used, ", "))
	for _, v := range g {
		if !slices.Contains(used, v) {
			t.Errorf("the role grants %q, which the manager never used: remove it", v)
		}
	}
	for _, v := range used {
		if !slices.Contains(g, v) {
			t.Errorf("the manager used %q, which the role does not grant", v)
		}
	}

	// A verb removed from the role breaks the run: without patch on
	// deployments, the next rollout restart is refused.
	cur := &rbacv1.ClusterRole{}
	if err := k8sClient.Get(ctx(), types.NamespacedName{Name: role.Name}, cur); err != nil {
		t.Fatal(err)
	}
	for i, r := range cur.Rules {
		if slices.Contains(r.APIGroups, "apps") {
			cur.Rules = slices.Delete(cur.Rules, i, i+1)
			break
		}
	}
	if err := k8sClient.Update(ctx(), cur); err != nil {
		t.Fatal(err)
	}
	before := restartedAt(t, ns)
	patchAnnotation(t, key, "lp-3")
	readyWith("forced refresh lp-3", func(m *tokensv1alpha1.ManagedToken) bool { return m.Status.LastHandledRefreshRequest == "lp-3" })
	time.Sleep(3 * time.Second)
	if restartedAt(t, ns) != before {
		t.Fatal("the rollout restart succeeded without patch on deployments: the role is not what the manager runs as")
	}
}

// createStatefulSetAndDaemonSet creates the other two kinds of rollout
// restart target.
func createStatefulSetAndDaemonSet(t *testing.T, ns string) (string, string) {
	t.Helper()
	labels := map[string]string{"app": "consumer"}
	tpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	sel := &metav1.LabelSelector{MatchLabels: labels}
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "consumer-sts"}, Spec: appsv1.StatefulSetSpec{Selector: sel, Template: tpl}}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "consumer-ds"}, Spec: appsv1.DaemonSetSpec{Selector: sel, Template: tpl}}
	for _, o := range []client.Object{sts, ds} {
		if err := k8sClient.Create(ctx(), o); err != nil {
			t.Fatal(err)
		}
	}
	return sts.Name, ds.Name
}

func patchAnnotation(t *testing.T, key types.NamespacedName, value string) {
	t.Helper()
	mt := &tokensv1alpha1.ManagedToken{}
	if err := k8sClient.Get(ctx(), key, mt); err != nil {
		t.Fatal(err)
	}
	p := client.MergeFrom(mt.DeepCopy())
	if mt.Annotations == nil {
		mt.Annotations = map[string]string{}
	}
	mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation] = value
	if err := k8sClient.Patch(ctx(), mt, p); err != nil {
		t.Fatal(err)
	}
}

// TestRaceTwoManagers runs two managers with leader election off against
// 90-second AmoCRM tokens for 3 minutes: no halted token, no reused refresh
// token, and status, state and output agree.
func TestRaceTwoManagers(t *testing.T) {
	// The two race tests run in real time and mostly wait: they run
	// together, after the package's other tests.
	t.Parallel()
	ns := newNamespace(t)
	amo := amocrmfake.New(amocrmfake.Options{ClientID: testClientID, ClientSecret: testClientSecret, RedirectURI: testRedirectURI, AccessTokenTTL: 90 * time.Second})
	srv := httptest.NewServer(amo)
	defer srv.Close()
	names := []string{"a", "b", "c"}
	for _, n := range names {
		mt := validAmoCRM(ns, n)
		mt.Spec.AmoCRM.RedirectURI = testRedirectURI
		createRaceToken(t, mt, map[string]string{"client_id": testClientID, "client_secret": testClientSecret, "refresh_token": amo.IssueRefreshToken()})
	}
	halts := raceTwoManagers(t, ns, srv.URL, srv.URL, 3*time.Minute)
	refreshes := amo.Calls("refresh_token")
	fmt.Printf("measured: two managers, 3 tokens of 90s, 3 minutes: %d refreshes, %d reused refresh tokens, %d halted observations\n", refreshes, amo.ReusedRefreshTokens(), halts)
	if amo.ReusedRefreshTokens() != 0 {
		t.Fatalf("%d refresh tokens were sent again", amo.ReusedRefreshTokens())
	}
	if refreshes < 3*3 {
		t.Fatalf("only %d refreshes in 3 minutes of 90s tokens", refreshes)
	}
	for _, n := range names {
		st := checkRaceToken(t, ns, n)
		if !amo.RefreshTokenLive(st.Token.RefreshToken) {
			t.Fatalf("%s: the stored refresh token is dead", n)
		}
	}
}

// TestRaceTwoManagersFacebook is TestRaceTwoManagers for refreshes that
// write no spend intent: Facebook system-user tokens of 90 seconds, two
// managers with leader election off, 2 minutes. Both managers may refresh
// the same token at once; one result is stored, the other dropped, and
// no token halts or ends with a token the provider does not know.
func TestRaceTwoManagersFacebook(t *testing.T) {
	t.Parallel() // see TestRaceTwoManagers
	ns := newNamespace(t)
	fb := facebookfake.New(facebookfake.Options{AppID: testAppID, AppSecret: testAppSecret, LongLivedTTL: 90 * time.Second})
	srv := httptest.NewServer(fb)
	defer srv.Close()
	names := []string{"a", "b", "c"}
	for _, n := range names {
		createRaceToken(t, validFacebook(ns, n), map[string]string{"app_id": testAppID, "app_secret": testAppSecret,
			"access_token": fb.IssueToken(facebookfake.KindSystemUserExpiring, time.Now().Add(90*time.Second))})
	}
	halts := raceTwoManagers(t, ns, srv.URL, srv.URL, 2*time.Minute)
	refreshes := fb.Calls("refresh")
	fmt.Printf("measured: two managers, 3 Facebook tokens of 90s, 2 minutes: %d refreshes, %d halted observations\n", refreshes, halts)
	if refreshes < 3*2 {
		t.Fatalf("only %d refreshes in 2 minutes of 90s tokens", refreshes)
	}
	for _, n := range names {
		st := checkRaceToken(t, ns, n)
		if exp, ok := fb.TokenInfo(st.Token.AccessToken); !ok || !exp.After(time.Now()) {
			t.Fatalf("%s: the stored token is not valid at the provider (known %v, expires %v)", n, ok, exp)
		}
		if st.Intent != nil {
			t.Fatalf("%s: a spend intent was written for a Facebook refresh", n)
		}
	}
}

// createRaceToken creates mt, refreshed often, with its own credentials
// Secret holding creds.
func createRaceToken(t *testing.T, mt *tokensv1alpha1.ManagedToken, creds map[string]string) {
	t.Helper()
	n := mt.Name
	if err := k8sClient.Create(ctx(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: mt.Namespace, Name: "creds-" + n}, StringData: creds}); err != nil {
		t.Fatal(err)
	}
	mt.Spec.CredentialsSecretRef.Name, mt.Spec.SecretName = "creds-"+n, "token-"+n
	mt.Spec.CheckInterval = &metav1.Duration{Duration: time.Minute}
	if err := k8sClient.Create(ctx(), mt); err != nil {
		t.Fatal(err)
	}
}

// raceTwoManagers runs two managers on ns for d, fails the test on every
// halted token it sees meanwhile, and returns how many it saw.
func raceTwoManagers(t *testing.T, ns, amoURL, fbURL string, d time.Duration) int {
	t.Helper()
	stop1 := startManager(t, ns, amoURL, fbURL, "")
	stop2 := startManager(t, ns, amoURL, fbURL, "")
	deadline := time.Now().Add(d)
	halts := 0
	for time.Now().Before(deadline) {
		var list tokensv1alpha1.ManagedTokenList
		if err := k8sClient.List(ctx(), &list, client.InNamespace(ns)); err == nil {
			for _, mt := range list.Items {
				if mt.Status.HaltedInputs != "" {
					halts++
					t.Errorf("%s halted: %+v", mt.Name, mt.Status.Conditions)
				}
			}
		}
		time.Sleep(2 * time.Second)
	}
	stop1()
	stop2()
	return halts
}

// checkRaceToken checks that the ManagedToken ns/n is Ready and that its
// status, state and output agree, and returns its stored state.
func checkRaceToken(t *testing.T, ns, n string) tokenState {
	t.Helper()
	mt := &tokensv1alpha1.ManagedToken{}
	if err := k8sClient.Get(ctx(), types.NamespacedName{Namespace: ns, Name: n}, mt); err != nil {
		t.Fatal(err)
	}
	state, out := &corev1.Secret{}, &corev1.Secret{}
	if err := k8sClient.Get(ctx(), types.NamespacedName{Namespace: ns, Name: stateSecretName(n)}, state); err != nil {
		t.Fatal(err)
	}
	if err := k8sClient.Get(ctx(), types.NamespacedName{Namespace: ns, Name: "token-" + n}, out); err != nil {
		t.Fatal(err)
	}
	st, err := decodeState(state.Data)
	if err != nil {
		t.Fatal(err)
	}
	if string(out.Data["access_token"]) != st.Token.AccessToken {
		t.Fatalf("%s: output and state disagree", n)
	}
	if mt.Status.ExpirationTimestamp == nil || !mt.Status.ExpirationTimestamp.Time.Equal(st.Token.ExpiresAt.Truncate(time.Second)) {
		t.Fatalf("%s: status expiry %v, state %v", n, mt.Status.ExpirationTimestamp, st.Token.ExpiresAt)
	}
	if c := condOf(mt, tokensv1alpha1.ConditionReady); c.Status != metav1.ConditionTrue {
		t.Fatalf("%s: Ready %s/%s: %s", n, c.Status, c.Reason, c.Message)
	}
	return st
}

func ctx() context.Context { return context.Background() }
