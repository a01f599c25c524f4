package manifests

import (
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// TestKustomizeSecureMetricsComponent: listing the component in
// config/default adds --metrics-secure to the manager once, the two create
// verbs the manager's scrape checks need, bound to the manager's
// ServiceAccount, and metrics-reader for scrapers; nothing else changes.
// (cmd's TestSecureMetricsAuthenticateAndAuthorize runs these roles against
// a real API server.)
func TestKustomizeSecureMetricsComponent(t *testing.T) {
	t.Parallel()
	with := kustomizeEdited(t, func(data []byte) []byte {
		return append(data, []byte("\ncomponents: [../components/secure-metrics]\n")...)
	})
	base := kustomize(t, "config/default")

	dep := deploymentOf(t, with)
	args := managerContainer(t, dep).Args
	if n := len(slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a != "--metrics-secure" })); n != 1 {
		t.Errorf("manager args %q: want --metrics-secure once", args)
	}
	if !slices.Contains(managerContainer(t, deploymentOf(t, base)).Args, "--metrics-bind-address=:8080") || slices.Contains(managerContainer(t, deploymentOf(t, base)).Args, "--metrics-secure") {
		t.Errorf("config/default without the component: want plain metrics on :8080")
	}

	auth := into[rbacv1.ClusterRole](t, with.one(t, "ClusterRole", "metrics-auth-role").Object)
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
	}
	equalYAML(t, "metrics-auth-role rules", auth.Rules, want)
	crb := into[rbacv1.ClusterRoleBinding](t, with.one(t, "ClusterRoleBinding", "metrics-auth-rolebinding").Object)
	checkBinding(t, crb.RoleRef, crb.Subjects, auth.Name, dep.Spec.Template.Spec.ServiceAccountName, managerNamespace)
	reader := into[rbacv1.ClusterRole](t, with.one(t, "ClusterRole", "metrics-reader").Object)
	equalYAML(t, "metrics-reader rules", reader.Rules, []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}})
	if len(with) != len(base)+3 {
		t.Errorf("the component adds %d objects, want 3 (two ClusterRoles, one binding)", len(with)-len(base))
	}
}
