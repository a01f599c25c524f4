package manifests

import (
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// TestKustomizeBuilds renders every kustomization under config/ and checks
// what config/default deploys.
func TestKustomizeBuilds(t *testing.T) {
	t.Parallel()
	for dir, kinds := range map[string][]string{
		"config/crd":            {"CustomResourceDefinition"},
		"config/rbac":           {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"},
		"config/manager":        {"Namespace", "Deployment"},
		"config/prometheus":     {"ServiceMonitor", "PrometheusRule"},
		"config/network-policy": {"NetworkPolicy"},
		"config/default": {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
			"ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"},
	} {
		t.Run(strings.TrimPrefix(dir, "config/"), func(t *testing.T) {
			t.Parallel()
			objs := kustomize(t, dir)
			for _, k := range kinds {
				if len(objs.all(k)) == 0 {
					t.Errorf("%s renders no %s; it renders %v", dir, k, objs.names())
				}
			}
		})
	}
}

// TestKustomizeDefault checks the names, namespaces and references that
// namePrefix and namespace rewrite in config/default.
func TestKustomizeDefault(t *testing.T) {
	t.Parallel()
	objs := kustomize(t, "config/default")
	for _, u := range objs {
		switch u.GetKind() {
		case "Namespace":
			if u.GetName() != managerNamespace {
				t.Errorf("Namespace %q, want %q", u.GetName(), managerNamespace)
			}
		case "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding":
		default:
			if u.GetNamespace() != managerNamespace {
				t.Errorf("%s/%s is in namespace %q, want %q", u.GetKind(), u.GetName(), u.GetNamespace(), managerNamespace)
			}
		}
		if u.GetKind() != "Namespace" && u.GetKind() != "CustomResourceDefinition" && !strings.HasPrefix(u.GetName(), "tokenkeeper-") {
			t.Errorf("%s/%s lacks the tokenkeeper- name prefix", u.GetKind(), u.GetName())
		}
	}

	// The generated role, through kustomize, is unchanged.
	role := into[rbacv1.ClusterRole](t, objs.one(t, "ClusterRole", "manager-role").Object)
	want := into[rbacv1.ClusterRole](t, readYAML(t, "config/rbac/role.yaml"))
	equalYAML(t, "config/default manager ClusterRole rules and config/rbac/role.yaml rules", role.Rules, want.Rules)

	// Bindings point at the manager's ServiceAccount and the prefixed roles.
	dep := deploymentOf(t, objs)
	sa := dep.Spec.Template.Spec.ServiceAccountName
	objs.one(t, "ServiceAccount", sa)
	crb := into[rbacv1.ClusterRoleBinding](t, objs.one(t, "ClusterRoleBinding", "manager-rolebinding").Object)
	checkBinding(t, crb.RoleRef, crb.Subjects, role.Name, sa, managerNamespace)
	rb := into[rbacv1.RoleBinding](t, objs.one(t, "RoleBinding", "leader-election-rolebinding").Object)
	checkBinding(t, rb.RoleRef, rb.Subjects, objs.one(t, "Role", "leader-election-role").GetName(), sa, managerNamespace)

	// Editors and viewers get ManagedTokens through aggregation.
	for name, label := range map[string]string{
		"managedtoken-editor-role": "rbac.authorization.k8s.io/aggregate-to-edit",
		"managedtoken-viewer-role": "rbac.authorization.k8s.io/aggregate-to-view",
	} {
		if objs.one(t, "ClusterRole", name).GetLabels()[label] != "true" {
			t.Errorf("ClusterRole %s lacks label %s=true", name, label)
		}
	}
}

func checkBinding(t *testing.T, ref rbacv1.RoleRef, subjects []rbacv1.Subject, role, sa, ns string) {
	t.Helper()
	if ref.Name != role {
		t.Errorf("binding refers to role %q, want %q", ref.Name, role)
	}
	if len(subjects) != 1 || subjects[0].Kind != "ServiceAccount" || subjects[0].Name != sa || subjects[0].Namespace != ns {
		t.Errorf("binding subjects %+v, want ServiceAccount %s/%s", subjects, ns, sa)
	}
}
