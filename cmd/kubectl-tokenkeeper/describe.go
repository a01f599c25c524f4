package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

type describeOptions struct {
	*Options
}

func newDescribeCommand(o *Options) *cobra.Command {
	d := &describeOptions{Options: o}
	return &cobra.Command{
		Use:   "describe NAME...",
		Short: "Show a ManagedToken's settings, status, conditions, events and output Secret keys",
		Long: `Show a ManagedToken's settings, status, conditions and recent events, and the
keys of its output Secret with their sizes. Secret values are never printed.`,
		Example: `  kubectl tokenkeeper describe -n ads facebook-marketing`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return d.run(cmd.Context(), args)
		},
	}
}

func (d *describeOptions) run(ctx context.Context, names []string) error {
	c, ns, err := d.clientAndNamespace()
	if err != nil {
		return err
	}
	var errs []error
	first := true
	for _, name := range names {
		mt := &tokensv1alpha1.ManagedToken{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, mt); err != nil {
			errs = append(errs, describeErr(err, name, ns))
			continue
		}
		if !first {
			fmt.Fprintln(d.Out)
		}
		first = false
		in := describeInput{
			Token:  mt,
			Secret: outputSecretKeys(ctx, c, mt),
			Events: tokenEvents(ctx, c, mt),
		}
		if err := writeDescription(d.Out, in, d.Clock.Now()); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// secretKeys is what describe shows of the output Secret: key names and
// value sizes. It deliberately has no field that could hold a value.
type secretKeys struct {
	Name  string
	Sizes map[string]int
	// Problem is set when the keys could not be read (not found, forbidden).
	Problem string
}

// outputSecretKeys reads spec.secretName and keeps only key names and sizes.
func outputSecretKeys(ctx context.Context, c client.Client, mt *tokensv1alpha1.ManagedToken) secretKeys {
	out := secretKeys{Name: mt.Spec.SecretName}
	s := &corev1.Secret{}
	err := c.Get(ctx, client.ObjectKey{Namespace: mt.Namespace, Name: mt.Spec.SecretName}, s)
	switch {
	case apierrors.IsNotFound(err):
		out.Problem = "not found (the operator has not published a token yet)"
		return out
	case apierrors.IsForbidden(err):
		out.Problem = "cannot read it: forbidden"
		return out
	case err != nil:
		out.Problem = "cannot read it: " + err.Error()
		return out
	}
	out.Sizes = make(map[string]int, len(s.Data)+len(s.StringData))
	for k, v := range s.Data {
		out.Sizes[k] = len(v)
	}
	for k, v := range s.StringData {
		out.Sizes[k] = len(v)
	}
	return out
}

// event is what describe shows of an events.k8s.io/v1 or core/v1 Event.
type event struct {
	Type, Reason, From, Message string
	First, Last                 time.Time
	Count                       int32
}

// eventList is the events about one ManagedToken, or why they are missing.
type eventList struct {
	Items   []event
	Problem string
}

// tokenEvents lists the events about mt: events.k8s.io/v1 first (what the
// controller emits), core/v1 when that API cannot be read. Both APIs share
// one storage, so core/v1 shows the same events.
func tokenEvents(ctx context.Context, c client.Client, mt *tokensv1alpha1.ManagedToken) eventList {
	evs, err := eventsV1(ctx, c, mt)
	if err == nil {
		return eventList{Items: evs}
	}
	evs, coreErr := eventsCore(ctx, c, mt)
	if coreErr == nil {
		return eventList{Items: evs}
	}
	return eventList{Problem: fmt.Sprintf("cannot list events: %v; %v", err, coreErr)}
}

func eventsV1(ctx context.Context, c client.Client, mt *tokensv1alpha1.ManagedToken) ([]event, error) {
	list := &eventsv1.EventList{}
	sel := fields.SelectorFromSet(fields.Set{"regarding.name": mt.Name, "regarding.kind": kindManagedToken})
	if err := c.List(ctx, list, client.InNamespace(mt.Namespace), client.MatchingFieldsSelector{Selector: sel}); err != nil {
		return nil, err
	}
	var out []event
	for i := range list.Items {
		e := &list.Items[i]
		if !regards(e.Regarding, mt) {
			continue
		}
		ev := event{Type: e.Type, Reason: e.Reason, Message: e.Note, From: e.ReportingController, Count: 1}
		ev.First = firstTime(e.EventTime.Time, e.DeprecatedFirstTimestamp.Time, e.CreationTimestamp.Time)
		ev.Last = ev.First
		if e.Series != nil {
			ev.Count = e.Series.Count
			ev.Last = e.Series.LastObservedTime.Time
		} else if e.DeprecatedCount > 1 {
			ev.Count = e.DeprecatedCount
			ev.Last = firstTime(e.DeprecatedLastTimestamp.Time, ev.First)
		}
		if ev.From == "" {
			ev.From = e.DeprecatedSource.Component
		}
		out = append(out, ev)
	}
	return sortEvents(out), nil
}

func eventsCore(ctx context.Context, c client.Client, mt *tokensv1alpha1.ManagedToken) ([]event, error) {
	list := &corev1.EventList{}
	sel := fields.SelectorFromSet(fields.Set{"involvedObject.name": mt.Name, "involvedObject.kind": kindManagedToken})
	if err := c.List(ctx, list, client.InNamespace(mt.Namespace), client.MatchingFieldsSelector{Selector: sel}); err != nil {
		return nil, err
	}
	var out []event
	for i := range list.Items {
		e := &list.Items[i]
		if !regards(e.InvolvedObject, mt) {
			continue
		}
		ev := event{Type: e.Type, Reason: e.Reason, Message: e.Message, From: e.ReportingController, Count: 1}
		ev.First = firstTime(e.FirstTimestamp.Time, e.EventTime.Time, e.CreationTimestamp.Time)
		ev.Last = firstTime(e.LastTimestamp.Time, ev.First)
		if e.Series != nil {
			ev.Count = e.Series.Count
			ev.Last = e.Series.LastObservedTime.Time
		} else if e.Count > 1 {
			ev.Count = e.Count
		}
		if ev.From == "" {
			ev.From = e.Source.Component
		}
		out = append(out, ev)
	}
	return sortEvents(out), nil
}

// regards reports whether an event's object is mt: same kind and name, and
// the same UID when the event records one (not a deleted namesake).
func regards(ref corev1.ObjectReference, mt *tokensv1alpha1.ManagedToken) bool {
	return ref.Kind == kindManagedToken && ref.Name == mt.Name &&
		(ref.Namespace == "" || ref.Namespace == mt.Namespace) &&
		(ref.UID == "" || ref.UID == mt.UID)
}

func firstTime(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

func sortEvents(evs []event) []event {
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Last.Before(evs[j].Last) })
	return evs
}

// describeInput is everything describe prints about one ManagedToken.
type describeInput struct {
	Token  *tokensv1alpha1.ManagedToken
	Secret secretKeys
	Events eventList
}

// writeDescription prints in kubectl describe's layout. Times are shown with
// their distance from now.
func writeDescription(w io.Writer, in describeInput, now time.Time) error {
	mt := in.Token
	sp, st := &mt.Spec, &mt.Status
	// Each section aligns its own columns, as kubectl describe does.
	tw := printers.GetNewTabWriter(w)
	p := func(indent int, format string, a ...any) {
		fmt.Fprintf(tw, strings.Repeat("  ", indent)+format+"\n", a...)
	}
	var flushErr error
	nextSection := func() {
		if err := tw.Flush(); err != nil && flushErr == nil {
			flushErr = err
		}
		tw = printers.GetNewTabWriter(w)
	}

	p(0, "Name:\t%s", mt.Name)
	p(0, "Namespace:\t%s", mt.Namespace)
	p(0, "Labels:\t%s", mapText(mt.Labels, nil))
	p(0, "Annotations:\t%s", mapText(mt.Annotations, map[string]bool{"kubectl.kubernetes.io/last-applied-configuration": true}))
	p(0, "Created:\t%s", timestampText(&mt.CreationTimestamp, now))
	if mt.DeletionTimestamp != nil {
		p(0, "Deleting since:\t%s", timestampText(mt.DeletionTimestamp, now))
	}

	p(0, "Spec:")
	p(1, "Provider:\t%s", sp.Provider)
	if sp.AmoCRM != nil {
		p(1, "AmoCRM Domain:\t%s", sp.AmoCRM.Domain)
		p(1, "AmoCRM Redirect URI:\t%s", sp.AmoCRM.RedirectURI)
	}
	if sp.Facebook != nil && sp.Facebook.GraphAPIVersion != "" {
		p(1, "Graph API Version:\t%s", sp.Facebook.GraphAPIVersion)
	}
	if sp.Facebook != nil && sp.Facebook.RedirectURI != "" {
		p(1, "Facebook Redirect URI:\t%s", sp.Facebook.RedirectURI)
	}
	p(1, "Credentials Secret:\t%s", sp.CredentialsSecretRef.Name)
	p(1, "Output Secret:\t%s", sp.SecretName)
	p(1, "Refresh Before:\t%s", refreshBeforeText(mt))
	p(1, "Check Interval:\t%s", durationText(sp.CheckInterval, tokensv1alpha1.DefaultCheckInterval))
	if len(sp.RolloutRestartTargets) > 0 {
		var ts []string
		for _, t := range sp.RolloutRestartTargets {
			ts = append(ts, string(t.Kind)+"/"+t.Name)
		}
		p(1, "Rollout Restart Targets:\t%s", strings.Join(ts, ", "))
	}

	p(0, "Status:")
	p(1, "Token Type:\t%s", orNoneDescribe(st.TokenType))
	p(1, "Scopes:\t%s", orNoneDescribe(strings.Join(st.Scopes, ", ")))
	expires := timestampText(st.ExpirationTimestamp, now)
	if st.ExpirationTimestamp == nil && st.TokenType != "" {
		expires = "never"
	}
	p(1, "Expires:\t%s", expires)
	if st.DataAccessExpirationTimestamp != nil {
		p(1, "Data Access Expires:\t%s", timestampText(st.DataAccessExpirationTimestamp, now))
	}
	if st.RefreshTokenExpirationTimestamp != nil {
		p(1, "Refresh Token Expires:\t%s", timestampText(st.RefreshTokenExpirationTimestamp, now))
	}
	p(1, "Last Refresh:\t%s", timestampText(st.LastRefreshTime, now))
	p(1, "Next Refresh:\t%s", timestampText(st.NextRefreshTime, now))
	p(1, "Last Check:\t%s", timestampText(st.LastCheckTime, now))
	p(1, "Consecutive Failures:\t%d", st.ConsecutiveFailures)
	if st.LastFailureTime != nil {
		p(1, "Last Failure:\t%s", timestampText(st.LastFailureTime, now))
	}
	if st.NextRetryTime != nil {
		p(1, "Next Retry:\t%s", timestampText(st.NextRetryTime, now))
	}
	if st.HaltedInputs != "" {
		p(1, "Halted:\tYes: the operator will not call the provider until spec, the credentials Secret or the refresh annotation changes (fix the cause, then: kubectl tokenkeeper refresh -n %s %s)", mt.Namespace, mt.Name)
	} else {
		p(1, "Halted:\tNo")
	}
	requested := mt.Annotations[tokensv1alpha1.RefreshRequestedAtAnnotation]
	if requested != "" || st.LastHandledRefreshRequest != "" {
		pending := ""
		if requested != "" && requested != st.LastHandledRefreshRequest {
			pending = " (pending)"
		}
		p(1, "Refresh Requested At:\t%s%s", orNoneDescribe(requested), pending)
		p(1, "Last Handled Refresh Request:\t%s", orNoneDescribe(st.LastHandledRefreshRequest))
	}
	if a := st.Authorization; a != nil {
		p(1, "Authorization:\t%s (request %s, expires %s): %s", a.Phase, orNoneDescribe(a.RequestID), timestampText(a.ExpirationTimestamp, now), oneLine(a.Message))
	}
	p(1, "Observed Generation:\t%d (spec generation %d)", st.ObservedGeneration, mt.Generation)
	nextSection()

	if len(st.Conditions) == 0 {
		p(0, "Conditions:\t<none>")
	} else {
		p(0, "Conditions:")
		p(1, "TYPE\tSTATUS\tREASON\tLAST TRANSITION\tMESSAGE")
		conds := append(st.Conditions[:0:0], st.Conditions...)
		sort.SliceStable(conds, func(i, j int) bool { return conditionOrder(conds[i].Type) < conditionOrder(conds[j].Type) })
		for _, c := range conds {
			p(1, "%s\t%s\t%s\t%s\t%s", c.Type, c.Status, orNone(c.Reason), timestampText(&c.LastTransitionTime, now), oneLine(c.Message))
		}
	}

	nextSection()
	p(0, "Output Secret %s:", orNoneDescribe(in.Secret.Name))
	switch {
	case in.Secret.Problem != "":
		p(1, "<%s>", in.Secret.Problem)
	case len(in.Secret.Sizes) == 0:
		p(1, "<no keys>")
	default:
		keys := make([]string, 0, len(in.Secret.Sizes))
		for k := range in.Secret.Sizes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p(1, "%s:\t%d bytes", k, in.Secret.Sizes[k])
		}
	}

	nextSection()
	switch {
	case in.Events.Problem != "":
		p(0, "Events:\t<%s>", in.Events.Problem)
	case len(in.Events.Items) == 0:
		p(0, "Events:\t<none>")
	default:
		p(0, "Events:")
		p(1, "TYPE\tREASON\tAGE\tFROM\tMESSAGE")
		for _, e := range in.Events.Items {
			p(1, "%s\t%s\t%s\t%s\t%s", orNone(e.Type), orNone(e.Reason), eventAge(e, now), orNone(e.From), oneLine(e.Message))
		}
	}
	nextSection()
	return flushErr
}

// eventAge is "5m", or "5m (x3 over 2h)" for a repeated event.
func eventAge(e event, now time.Time) string {
	if e.Last.IsZero() {
		return "<unknown>"
	}
	age := human(now.Sub(e.Last))
	if e.Count > 1 && !e.First.IsZero() {
		age += fmt.Sprintf(" (x%d over %s)", e.Count, human(now.Sub(e.First)))
	}
	return age
}

func conditionOrder(t string) int {
	switch t {
	case tokensv1alpha1.ConditionReady:
		return 0
	case tokensv1alpha1.ConditionReauthorizationRequired:
		return 1
	}
	return 2
}

func defaultRefreshBefore(p tokensv1alpha1.Provider) string {
	if p == tokensv1alpha1.ProviderAmoCRM {
		return tokensv1alpha1.DefaultRefreshBeforeAmoCRM
	}
	return tokensv1alpha1.DefaultRefreshBeforeFacebook
}

// refreshBeforeText is spec.refreshBefore, or the default the controller
// applies. That default depends on the token: its provider's for a token the
// operator renews (status shows a next refresh), DefaultRefreshBeforeMonitored
// for one only a human can renew (a token is known, with no next refresh).
func refreshBeforeText(mt *tokensv1alpha1.ManagedToken) string {
	def := defaultRefreshBefore(mt.Spec.Provider)
	switch {
	case mt.Spec.RefreshBefore != nil:
		return mt.Spec.RefreshBefore.Duration.String()
	case mt.Status.NextRefreshTime != nil:
		return def + " (default)"
	case mt.Status.TokenType != "":
		return tokensv1alpha1.DefaultRefreshBeforeMonitored + " (default for a token only a human can renew)"
	}
	return def + " (default; " + tokensv1alpha1.DefaultRefreshBeforeMonitored + " if only a human can renew the token)"
}

// durationText is the spec value, or the default the controller applies.
func durationText(d *metav1.Duration, def string) string {
	if d != nil {
		return d.Duration.String()
	}
	return def + " (default)"
}

// mapText renders labels or annotations as kubectl describe does: one
// key=value per line, sorted, "<none>" for none.
func mapText(m map[string]string, skip map[string]bool) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		if !skip[k] {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return "<none>"
	}
	sort.Strings(keys)
	lines := make([]string, len(keys))
	for i, k := range keys {
		lines[i] = k + "=" + oneLine(m[k])
	}
	return strings.Join(lines, "\n\t")
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func orNoneDescribe(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
