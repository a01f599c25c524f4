package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

type refreshOptions struct {
	*Options
	all           bool
	allNamespaces bool
	selector      string
}

func newRefreshCommand(o *Options) *cobra.Command {
	r := &refreshOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "refresh (NAME... | --all | -l SELECTOR)",
		Short: "Ask the operator to refresh ManagedTokens now",
		Long: `Ask the operator to refresh ManagedTokens now, by setting the
` + tokensv1alpha1.RefreshRequestedAtAnnotation + ` annotation to the current time.
The operator refreshes each token once per new value of the annotation. This
also resumes a token the operator halted on because a human had to act.

Name the ManagedTokens, or select them with --all or -l; nothing is refreshed
without one of those.`,
		Example: `  kubectl tokenkeeper refresh -n ads facebook-marketing
  kubectl tokenkeeper refresh -n ads -l team=growth
  kubectl tokenkeeper refresh --all -A`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.run(cmd.Context(), args)
		},
	}
	cmd.Flags().BoolVar(&r.all, "all", false, "Refresh every ManagedToken in the namespace (every namespace with -A).")
	cmd.Flags().BoolVarP(&r.allNamespaces, "all-namespaces", "A", false, "With --all or -l, select ManagedTokens in all namespaces.")
	cmd.Flags().StringVarP(&r.selector, "selector", "l", "", "Refresh the ManagedTokens matching this label selector, e.g. -l team=growth.")
	return cmd
}

// validate refuses ambiguous or empty selections before anything is read.
func (r *refreshOptions) validate(names []string) error {
	switch {
	case len(names) == 0 && !r.all && r.selector == "":
		return errors.New("no ManagedToken selected: name one or more ManagedTokens, or pass --all or -l SELECTOR (see kubectl tokenkeeper refresh --help)")
	case len(names) > 0 && (r.all || r.selector != ""):
		return errors.New("name(s) cannot be combined with --all or -l: pass either names or a selection")
	case r.all && r.selector != "":
		return errors.New("--all and -l cannot be combined: use one of them")
	case r.allNamespaces && len(names) > 0:
		return errors.New("-A works only with --all or -l: a ManagedToken cannot be named across all namespaces")
	}
	return nil
}

func (r *refreshOptions) run(ctx context.Context, names []string) error {
	if err := r.validate(names); err != nil {
		return err
	}
	c, ns, err := r.clientAndNamespace()
	if err != nil {
		return err
	}

	var targets []client.ObjectKey
	if len(names) > 0 {
		for _, name := range names {
			targets = append(targets, client.ObjectKey{Namespace: ns, Name: name})
		}
	} else {
		list, errs := fetchTokens(ctx, c, ns, r.allNamespaces, r.selector, nil)
		if list == nil {
			return errors.Join(errs...)
		}
		for i := range list.Items {
			targets = append(targets, client.ObjectKeyFromObject(&list.Items[i]))
		}
		if len(targets) == 0 {
			where := fmt.Sprintf("in namespace %q", ns)
			if r.allNamespaces {
				where = "in any namespace"
			}
			if r.selector != "" {
				return fmt.Errorf("no ManagedTokens match selector %q %s: nothing refreshed", r.selector, where)
			}
			return fmt.Errorf("no ManagedTokens %s: nothing refreshed", where)
		}
	}

	patch, err := refreshPatch(r.Clock.Now())
	if err != nil {
		return err
	}
	var errs []error
	for _, key := range targets {
		if err := requestRefresh(ctx, c, key, patch); err != nil {
			errs = append(errs, describeErr(err, key.Name, key.Namespace))
			continue
		}
		fmt.Fprintf(r.Out, "%s refresh requested\n", objectRef(key.Name))
	}
	return errors.Join(errs...)
}

// refreshPatch is a JSON merge patch that sets only the refresh annotation,
// to now in RFC 3339 with nanoseconds (so two requests never share a value).
func refreshPatch(now time.Time) ([]byte, error) {
	return json.Marshal(map[string]any{
		"metadata": map[string]any{
			"annotations": map[string]string{
				tokensv1alpha1.RefreshRequestedAtAnnotation: now.UTC().Format(time.RFC3339Nano),
			},
		},
	})
}

// requestRefresh applies the merge patch to one existing ManagedToken. A
// merge patch never creates an object: a missing one is a NotFound error.
func requestRefresh(ctx context.Context, c client.Client, key client.ObjectKey, patch []byte) error {
	mt := &tokensv1alpha1.ManagedToken{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	return c.Patch(ctx, mt, client.RawPatch(types.MergePatchType, patch))
}
