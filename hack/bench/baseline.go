package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	eventsclient "k8s.io/client-go/kubernetes/typed/events/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
	"github.com/tokenkeeper/tokenkeeper/hack/internal/devenv"
)

// replayOrder is the order in which one token's writes are replayed: the
// manager's order (state and output Secrets, status, events).
var replayOrder = []string{
	"create secrets", "update secrets", "patch secrets",
	"update managedtokens/status", "patch managedtokens/status",
	"create events", "patch events",
}

// planReplay spreads the writes counted in w over n tokens: token i makes
// w[k]/n writes of kind k, plus one more for the first w[k]%n tokens. Kinds
// the replay cannot make are returned apart.
func planReplay(w counts, n int) (plan func(i int) counts, unknown counts) {
	unknown = counts{}
	known := map[string]bool{}
	for _, k := range replayOrder {
		known[k] = true
	}
	for k, v := range w {
		if !known[k] {
			unknown[k] = v
		}
	}
	return func(i int) counts {
		c := counts{}
		for _, k := range replayOrder {
			if v := w[k]; v > 0 {
				c[k] = v / n
				if i < v%n {
					c[k]++
				}
			}
		}
		return c
	}, unknown
}

// baseline stops the manager and makes the writes it made during sync with
// a plain client, at the same client limits and with as many workers as the
// manager had, and times them. Like the manager's clients (controller-runtime
// gives each resource kind a client of its own, and events a client of
// their own), each resource kind here has its own client, with the same
// QPS and burst. The objects are copies of the manager's own (same Secret
// data, status and event text), in namespace bench-raw.
func (b *bench) baseline(ctx context.Context) error {
	b.stopManager()
	reqs, err := readAuditFile(b.auditLog)
	if err != nil {
		return err
	}
	writes := count(window(reqs, b.res.applyStart, b.res.syncEnd, nil), isWrite)
	plan, unknown := planReplay(writes, b.cfg.n)
	b.res.unreplayed = unknown
	devenv.Say("==> raw-write baseline: %d writes with a plain client at QPS %g, burst %d, %d worker(s), manager stopped",
		writes.total()-unknown.total(), b.cfg.qps, b.cfg.burst, b.cfg.workers)

	src, err := b.sources(ctx)
	if err != nil {
		return err
	}
	if err := b.createNamespace(ctx, rawNS); err != nil {
		return err
	}
	// Set-up, not timed: a ManagedToken to write the status of, and a
	// Secret for Secret updates to change.
	mts := make([]*tokensv1alpha1.ManagedToken, b.cfg.n)
	if err := parallel(ctx, b.cfg.n, 16, func(i int) error {
		mts[i] = b.managedToken(b.tokens[i], rawNS)
		if err := b.cl.Create(ctx, mts[i]); err != nil {
			return err
		}
		p := plan(i)
		if p["update secrets"]+p["patch secrets"] > 0 {
			return b.cl.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: rawNS, Name: b.tokens[i].name + "-raw-x"}})
		}
		return nil
	}); err != nil {
		return fmt.Errorf("baseline set-up: %w", err)
	}

	cfg := rest.CopyConfig(b.driverCfg)
	cfg.QPS, cfg.Burst = float32(b.cfg.qps), b.cfg.burst
	raw, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ev, err := eventsclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var done atomic.Int64
	start := time.Now()
	if err := parallel(ctx, b.cfg.n, b.cfg.workers, func(i int) error {
		return replayToken(ctx, raw, ev, b.tokens[i], mts[i], plan(i), src, &done)
	}); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	b.res.baseline = time.Since(start)
	b.res.baselineWrites = int(done.Load())
	b.res.syncWrites = writes.total()
	return nil
}

// sources are the manager's objects, by ManagedToken (namespace/name).
type sources struct {
	secrets map[string][]corev1.Secret
	events  map[string][]eventsv1.Event
	status  map[string]tokensv1alpha1.ManagedTokenStatus
}

func (b *bench) sources(ctx context.Context) (*sources, error) {
	s := &sources{secrets: map[string][]corev1.Secret{}, events: map[string][]eventsv1.Event{}, status: map[string]tokensv1alpha1.ManagedTokenStatus{}}
	var secrets corev1.SecretList
	if err := b.cl.List(ctx, &secrets, client.MatchingLabels{tokensv1alpha1.ManagedByLabel: tokensv1alpha1.ManagedByValue}); err != nil {
		return nil, err
	}
	for _, sec := range secrets.Items {
		k := sec.Namespace + "/" + sec.Labels[tokensv1alpha1.ManagedTokenLabel]
		s.secrets[k] = append(s.secrets[k], sec)
	}
	for k := range s.secrets {
		// The manager writes the state Secret before the output Secret.
		sort.Slice(s.secrets[k], func(i, j int) bool {
			return s.secrets[k][i].Labels[tokensv1alpha1.SecretRoleLabel] > s.secrets[k][j].Labels[tokensv1alpha1.SecretRoleLabel]
		})
	}
	var events eventsv1.EventList
	if err := b.cl.List(ctx, &events); err != nil {
		return nil, err
	}
	for _, e := range events.Items {
		k := e.Regarding.Namespace + "/" + e.Regarding.Name
		s.events[k] = append(s.events[k], e)
	}
	var mts tokensv1alpha1.ManagedTokenList
	if err := b.cl.List(ctx, &mts); err != nil {
		return nil, err
	}
	for _, mt := range mts.Items {
		s.status[mt.Namespace+"/"+mt.Name] = mt.Status
	}
	return s, nil
}

// replayToken makes one token's share of the writes.
func replayToken(ctx context.Context, c client.Client, ev eventsclient.EventsV1Interface, t token, mt *tokensv1alpha1.ManagedToken, p counts, src *sources, done *atomic.Int64) error {
	secrets, events, status := src.secrets[t.key()], src.events[t.key()], src.status[t.key()]
	for k := range p["create secrets"] {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: rawNS, Name: fmt.Sprintf("%s-raw-%d", t.name, k)}}
		if len(secrets) > 0 {
			from := secrets[k%len(secrets)]
			sec.Labels, sec.Data, sec.Type = from.Labels, from.Data, from.Type
		}
		if err := c.Create(ctx, sec); err != nil {
			return err
		}
		done.Add(1)
	}
	touch := func(i int) []byte {
		return fmt.Appendf(nil, `{"metadata":{"annotations":{"bench.tokenkeeper.dev/touch":"%d"}}}`, i)
	}
	for k := range p["update secrets"] + p["patch secrets"] {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: rawNS, Name: t.name + "-raw-x"}}
		if err := c.Patch(ctx, sec, client.RawPatch(types.MergePatchType, touch(k))); err != nil {
			return err
		}
		done.Add(1)
	}
	body, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	for range p["update managedtokens/status"] {
		mt.Status = status
		if err := c.Status().Update(ctx, mt); err != nil {
			return err
		}
		done.Add(1)
	}
	for range p["patch managedtokens/status"] {
		if err := c.Status().Patch(ctx, mt, client.RawPatch(types.MergePatchType, body)); err != nil {
			return err
		}
		done.Add(1)
	}
	for k := range p["create events"] {
		e := &eventsv1.Event{
			ObjectMeta: metav1.ObjectMeta{Namespace: rawNS, Name: fmt.Sprintf("%s.raw%d", t.name, k)},
			EventTime:  metav1.NowMicro(),
			Regarding:  corev1.ObjectReference{APIVersion: tokensv1alpha1.GroupVersion.String(), Kind: "ManagedToken", Namespace: rawNS, Name: t.name, UID: mt.UID},
			Type:       corev1.EventTypeNormal, Reason: "Bench", Action: "Bench", Note: "raw-write baseline",
			ReportingController: "tokenkeeper", ReportingInstance: "bench",
		}
		if len(events) > 0 {
			from := events[k%len(events)]
			e.Type, e.Reason, e.Action, e.Note = from.Type, from.Reason, from.Action, from.Note
			e.ReportingController, e.ReportingInstance = from.ReportingController, from.ReportingInstance
		}
		if _, err := ev.Events(rawNS).Create(ctx, e, metav1.CreateOptions{}); err != nil {
			return err
		}
		done.Add(1)
	}
	for k := range p["patch events"] {
		if p["create events"] == 0 {
			break // nothing to patch: counted as not replayed
		}
		if _, err := ev.Events(rawNS).Patch(ctx, t.name+".raw0", types.MergePatchType, touch(k), metav1.PatchOptions{}); err != nil {
			return err
		}
		done.Add(1)
	}
	return nil
}
