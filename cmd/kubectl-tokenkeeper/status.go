package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// Output formats of `status -o`.
const (
	outputTable = "table"
	outputWide  = "wide"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

type statusOptions struct {
	*Options
	allNamespaces bool
	selector      string
	output        string
}

func newStatusCommand(o *Options) *cobra.Command {
	s := &statusOptions{Options: o, output: outputTable}
	cmd := &cobra.Command{
		Use:     "status [NAME...] [-A | -l SELECTOR] [-o table|wide|json|yaml]",
		Aliases: []string{"get", "list", "ls"},
		Short:   "Show when each ManagedToken expires and is refreshed next",
		Long: `Show ManagedTokens as a table: provider, token type, readiness, time left
until the token expires, time until the next refresh, and whether a human must
reauthorize.

-o json and -o yaml print a ManagedTokenList (also for a single NAME).`,
		Example: `  kubectl tokenkeeper status
  kubectl tokenkeeper status -A -o wide
  kubectl tokenkeeper status -n ads -l team=growth
  kubectl tokenkeeper status -n ads facebook-marketing -o yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return s.run(cmd.Context(), args)
		},
	}
	cmd.Flags().BoolVarP(&s.allNamespaces, "all-namespaces", "A", false, "List ManagedTokens in all namespaces.")
	cmd.Flags().StringVarP(&s.selector, "selector", "l", "", "Label selector to filter on, e.g. -l team=growth,env!=dev.")
	cmd.Flags().StringVarP(&s.output, "output", "o", outputTable, "Output format: table, wide, json or yaml.")
	return cmd
}

func (s *statusOptions) run(ctx context.Context, names []string) error {
	switch s.output {
	case outputTable, "", outputWide, outputJSON, outputYAML:
	default:
		return fmt.Errorf("unknown output format %q: use one of table, wide, json, yaml", s.output)
	}
	if len(names) > 0 && s.selector != "" {
		return errors.New("name(s) cannot be combined with a label selector (-l)")
	}
	if len(names) > 0 && s.allNamespaces {
		return errors.New("a ManagedToken cannot be retrieved by name across all namespaces: drop -A and use -n NAMESPACE")
	}
	c, ns, err := s.clientAndNamespace()
	if err != nil {
		return err
	}
	list, errs := fetchTokens(ctx, c, ns, s.allNamespaces, s.selector, names)
	if list == nil {
		return errors.Join(errs...)
	}

	switch s.output {
	case outputJSON, outputYAML:
		if err := printList(s.Out, list, s.output); err != nil {
			return err
		}
	default:
		if len(list.Items) == 0 && len(errs) == 0 {
			if s.allNamespaces {
				fmt.Fprintln(s.ErrOut, "No resources found")
			} else {
				fmt.Fprintf(s.ErrOut, "No resources found in %s namespace.\n", ns)
			}
			return nil
		}
		if len(list.Items) > 0 {
			if err := printTable(s.Out, list.Items, s.Clock.Now(), s.allNamespaces, s.output == outputWide); err != nil {
				return err
			}
		}
	}
	return errors.Join(errs...)
}

// fetchTokens gets the named ManagedTokens in ns, or lists them (in ns or,
// with all, everywhere) matching selector. A nil list means nothing could be
// read; errs holds one error per name that failed.
func fetchTokens(ctx context.Context, c client.Client, ns string, all bool, selector string, names []string) (*tokensv1alpha1.ManagedTokenList, []error) {
	list := &tokensv1alpha1.ManagedTokenList{}
	if len(names) > 0 {
		var errs []error
		for _, name := range names {
			mt := tokensv1alpha1.ManagedToken{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &mt); err != nil {
				errs = append(errs, describeErr(err, name, ns))
				continue
			}
			list.Items = append(list.Items, mt)
		}
		return list, errs
	}
	var opts []client.ListOption
	if !all {
		opts = append(opts, client.InNamespace(ns))
	}
	if selector != "" {
		sel, err := labels.Parse(selector)
		if err != nil {
			return nil, []error{fmt.Errorf("invalid label selector %q: %w", selector, err)}
		}
		opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
	}
	if err := c.List(ctx, list, opts...); err != nil {
		return nil, []error{err}
	}
	return list, nil
}

// describeErr phrases an API error about one ManagedToken as kubectl does.
func describeErr(err error, name, ns string) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s %q not found in namespace %q", managedTokenGR.String(), name, ns)
	}
	return err
}

// printList prints the ManagedTokens as a ManagedTokenList in JSON or YAML,
// without managedFields (as kubectl does by default).
func printList(w io.Writer, list *tokensv1alpha1.ManagedTokenList, format string) error {
	out := list.DeepCopy()
	out.SetGroupVersionKind(managedTokenListGVK)
	out.ResourceVersion = ""
	for i := range out.Items {
		out.Items[i].SetGroupVersionKind(managedTokenGVK)
		out.Items[i].ManagedFields = nil
	}
	var p printers.ResourcePrinter = &printers.JSONPrinter{}
	if format == outputYAML {
		p = &printers.YAMLPrinter{}
	}
	return p.PrintObj(out, w)
}

// tableColumns are the headers of `status`; wide adds the rest.
var (
	tableColumns = []string{"NAME", "PROVIDER", "TYPE", "READY", "REASON", "EXPIRES", "NEXT-REFRESH", "REAUTH"}
	wideColumns  = []string{"SECRET", "LAST-REFRESH", "FAILURES", "AGE"}
)

// printTable writes the status table. now is what "time left" is measured
// against.
func printTable(w io.Writer, items []tokensv1alpha1.ManagedToken, now time.Time, withNamespace, wide bool) error {
	tw := printers.GetNewTabWriter(w)
	header := append([]string(nil), tableColumns...)
	if withNamespace {
		header = append([]string{"NAMESPACE"}, header...)
	}
	if wide {
		header = append(header, wideColumns...)
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for i := range items {
		fmt.Fprintln(tw, strings.Join(tableRow(&items[i], now, withNamespace, wide), "\t"))
	}
	return tw.Flush()
}

// tableRow is one ManagedToken's cells, in the order of tableColumns.
func tableRow(mt *tokensv1alpha1.ManagedToken, now time.Time, withNamespace, wide bool) []string {
	st := &mt.Status
	row := []string{
		mt.Name,
		string(mt.Spec.Provider),
		orNone(st.TokenType),
		conditionStatus(st.Conditions, tokensv1alpha1.ConditionReady),
		conditionReason(st.Conditions, tokensv1alpha1.ConditionReady),
		expiresText(st, now),
		nextRefreshText(st, now),
		conditionStatus(st.Conditions, tokensv1alpha1.ConditionReauthorizationRequired),
	}
	if withNamespace {
		row = append([]string{mt.Namespace}, row...)
	}
	if wide {
		age := none
		if !mt.CreationTimestamp.IsZero() {
			age = human(now.Sub(mt.CreationTimestamp.Time))
		}
		row = append(row,
			mt.Spec.SecretName,
			agoText(st.LastRefreshTime, now),
			strconv.Itoa(int(st.ConsecutiveFailures)),
			age,
		)
	}
	return row
}
