package manifests

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// The NetworkPolicies of config/network-policy and of the chart's
// networkPolicy.* values.
const (
	// The line of config/default/kustomization.yaml that turns them on.
	netpolHint = "#- ../network-policy"
	// The namespace labels they admit traffic from by default.
	metricsFromLabel = "metrics"
	authzFromLabel   = "authorization-callbacks"
	chartNetpolValue = "networkPolicy.enabled=true"
)

// checkNetworkPolicies checks a rendering with the policies on: each one
// selects the manager's pods, governs ingress only, and admits one named
// port of the manager from the namespaces with one label. Every port a
// Service of the rendering sends traffic to is admitted, so turning the
// policies on cuts no served port. It returns the policies by the port
// they admit.
func checkNetworkPolicies(t *testing.T, name string, objs objects) map[string]*networkingv1.NetworkPolicy {
	t.Helper()
	dep := deploymentOf(t, objs)
	ports := map[string]bool{}
	for _, p := range managerContainer(t, dep).Ports {
		ports[p.Name] = true
	}
	byPort := map[string]*networkingv1.NetworkPolicy{}
	for _, u := range objs.all("NetworkPolicy") {
		np := into[networkingv1.NetworkPolicy](t, u.Object)
		if np.Namespace != dep.Namespace {
			t.Errorf("%s: NetworkPolicy %s in namespace %q, the manager in %q", name, np.Name, np.Namespace, dep.Namespace)
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
			t.Errorf("%s: NetworkPolicy %s podSelector %v does not select the manager's pods %v", name, np.Name, np.Spec.PodSelector, dep.Spec.Template.Labels)
		}
		if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) || len(np.Spec.Egress) != 0 {
			t.Errorf("%s: NetworkPolicy %s policyTypes %v egress %v: want Ingress only", name, np.Name, np.Spec.PolicyTypes, np.Spec.Egress)
		}
		if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 || len(np.Spec.Ingress[0].Ports) != 1 {
			t.Errorf("%s: NetworkPolicy %s ingress %+v: want one rule, from one peer, to one port", name, np.Name, np.Spec.Ingress)
			continue
		}
		rule := np.Spec.Ingress[0]
		if peer := rule.From[0]; peer.NamespaceSelector == nil || len(peer.NamespaceSelector.MatchLabels) == 0 || peer.PodSelector != nil || peer.IPBlock != nil {
			t.Errorf("%s: NetworkPolicy %s admits from %+v: want namespaces by label only", name, np.Name, peer)
		}
		p := rule.Ports[0]
		if p.Port == nil || p.Port.String() == "" || p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
			t.Errorf("%s: NetworkPolicy %s port %+v: want a named TCP port", name, np.Name, p)
			continue
		}
		byPort[p.Port.String()] = np
	}
	for _, u := range objs.all("Service") {
		svc := into[corev1.Service](t, u.Object)
		for _, sp := range svc.Spec.Ports {
			target := sp.TargetPort.String()
			if !ports[target] {
				t.Errorf("%s: Service %s targets %q, which is no named port of the manager", name, svc.Name, target)
			}
			if byPort[target] == nil {
				t.Errorf("%s: Service %s targets port %q, which no NetworkPolicy admits: the policies would cut it", name, svc.Name, target)
			}
		}
	}
	if np := byPort["http-metrics"]; np == nil {
		t.Errorf("%s: no NetworkPolicy admits the metrics port; policies by port: %v", name, keys(byPort))
	} else if v := np.Spec.Ingress[0].From[0].NamespaceSelector.MatchLabels[metricsFromLabel]; v != "enabled" {
		t.Errorf("%s: metrics admitted from %v, want namespaces labelled %s=enabled", name, np.Spec.Ingress[0].From[0].NamespaceSelector, metricsFromLabel)
	}
	if np := byPort[authzPortName]; np != nil {
		if v := np.Spec.Ingress[0].From[0].NamespaceSelector.MatchLabels[authzFromLabel]; v != "enabled" {
			t.Errorf("%s: callbacks admitted from %v, want namespaces labelled %s=enabled", name, np.Spec.Ingress[0].From[0].NamespaceSelector, authzFromLabel)
		}
	}
	return byPort
}

func keys[V any](m map[string]V) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	slices.Sort(k)
	return k
}

// TestKustomizeNetworkPolicy: config/default renders no NetworkPolicy;
// uncommenting its hint adds the two policies and nothing else; with the
// authorization component too, the callbacks' port is admitted.
func TestKustomizeNetworkPolicy(t *testing.T) {
	t.Parallel()
	if n := len(kustomize(t, "config/default").all("NetworkPolicy")); n != 0 {
		t.Errorf("config/default renders %d NetworkPolicies; they are opt-in", n)
	}
	base := kustomize(t, "config/default")
	with := kustomizeUncommenting(t, netpolHint)
	byPort := checkNetworkPolicies(t, "config/default with network policies", with)
	if got := keys(byPort); !slices.Equal(got, []string{authzPortName, "http-metrics"}) {
		t.Errorf("policies admit ports %v, want %v", got, []string{authzPortName, "http-metrics"})
	}
	if len(with) != len(base)+2 {
		t.Errorf("the hint adds %d objects, want the 2 NetworkPolicies", len(with)-len(base))
	}
	for name, np := range map[string]*networkingv1.NetworkPolicy{"tokenkeeper-allow-metrics-traffic": byPort["http-metrics"], "tokenkeeper-allow-authorization-traffic": byPort[authzPortName]} {
		if np != nil && np.Name != name {
			t.Errorf("NetworkPolicy %q, want %q", np.Name, name)
		}
	}

	both := kustomizeUncommenting(t, netpolHint, authzHint)
	checkAuthorization(t, "config/default with both", both, authzHost)
	checkNetworkPolicies(t, "config/default with both", both)
}

// TestChartNetworkPolicyMatchesKustomize: networkPolicy.enabled renders the
// kustomize policies (the authorization one only with authorization.enabled),
// and the namespace selectors follow the values.
func TestChartNetworkPolicyMatchesKustomize(t *testing.T) {
	t.Parallel()
	if n := len(helmTemplate(t, "--set", chartAuthzValues).all("NetworkPolicy")); n != 0 {
		t.Errorf("chart defaults render %d NetworkPolicies; they are opt-in", n)
	}
	kust := checkNetworkPolicies(t, "kustomize", kustomizeUncommenting(t, netpolHint, authzHint))

	off := checkNetworkPolicies(t, "chart without authorization", helmTemplate(t, "--set", chartNetpolValue))
	if got := keys(off); !slices.Equal(got, []string{"http-metrics"}) {
		t.Errorf("chart without authorization: policies admit ports %v, want only http-metrics", got)
	}
	chart := checkNetworkPolicies(t, "chart with authorization", helmTemplate(t, "--set", chartNetpolValue+","+chartAuthzValues))
	if !slices.Equal(keys(chart), keys(kust)) {
		t.Fatalf("chart policies admit ports %v, kustomize %v", keys(chart), keys(kust))
	}
	for port, k := range kust {
		c := chart[port]
		equalYAML(t, "chart and kustomize NetworkPolicy ingress for "+port, c.Spec.Ingress, k.Spec.Ingress)
		equalYAML(t, "chart and kustomize NetworkPolicy policyTypes for "+port, c.Spec.PolicyTypes, k.Spec.PolicyTypes)
	}

	custom := helmTemplate(t, "--set", chartNetpolValue+","+chartAuthzValues+
		",networkPolicy.metricsNamespaceSelector.matchLabels.team=observability"+
		",networkPolicy.authorizationNamespaceSelector.matchLabels.ingress=public")
	for _, u := range custom.all("NetworkPolicy") {
		np := into[networkingv1.NetworkPolicy](t, u.Object)
		sel := np.Spec.Ingress[0].From[0].NamespaceSelector.MatchLabels
		want := map[string]string{"team": "observability", metricsFromLabel: "enabled"}
		if np.Spec.Ingress[0].Ports[0].Port.String() == authzPortName {
			want = map[string]string{"ingress": "public", authzFromLabel: "enabled"}
		}
		equalYAML(t, np.Name+" namespace selector from the values", sel, want)
	}
}
