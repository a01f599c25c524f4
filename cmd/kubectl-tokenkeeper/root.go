package main

import (
	"fmt"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	tokensv1alpha1 "github.com/tokenkeeper/tokenkeeper/api/v1alpha1"
)

// kind and resource names as users see them.
const (
	kindManagedToken = "ManagedToken"
	resourceName     = "managedtoken" // prefix of "managedtoken/NAME" in messages
)

var (
	managedTokenGVK     = tokensv1alpha1.GroupVersion.WithKind(kindManagedToken)
	managedTokenListGVK = tokensv1alpha1.GroupVersion.WithKind(kindManagedToken + "List")
	managedTokenGR      = schema.GroupResource{Group: tokensv1alpha1.GroupVersion.Group, Resource: "managedtokens"}
)

// newScheme knows the built-in types (Secrets, Events) and ManagedTokens.
func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(tokensv1alpha1.AddToScheme(s))
	return s
}

// Options is shared by every subcommand: the kubeconfig flags, the streams,
// the clock that "time left" is measured against (and that authorize waits
// on), and how authorize --open starts a browser.
type Options struct {
	ConfigFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams
	Clock clock.Clock
	// OpenBrowser opens a URL in the user's browser. Tests replace it, so
	// no test ever starts a browser.
	OpenBrowser func(url string) error
}

// Client builds an uncached controller-runtime client from the kubeconfig
// flags (--kubeconfig, --context, --server, --token, ...).
func (o *Options) Client() (client.Client, error) {
	cfg, err := o.ConfigFlags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "kubectl-tokenkeeper"
	return client.New(cfg, client.Options{Scheme: newScheme()})
}

// Namespace is -n/--namespace, else the kubeconfig context's namespace, else
// "default".
func (o *Options) Namespace() (string, error) {
	ns, _, err := o.ConfigFlags.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// clientAndNamespace is what every subcommand starts with.
func (o *Options) clientAndNamespace() (client.Client, string, error) {
	c, err := o.Client()
	if err != nil {
		return nil, "", err
	}
	ns, err := o.Namespace()
	return c, ns, err
}

// NewRootCommand returns `kubectl tokenkeeper` with its subcommands.
func NewRootCommand(streams genericiooptions.IOStreams, clk clock.Clock) *cobra.Command {
	return newRootCommand(&Options{
		ConfigFlags: genericclioptions.NewConfigFlags(true),
		IOStreams:   streams,
		Clock:       clk,
		OpenBrowser: openBrowser,
	})
}

// newRootCommand builds the command tree on o (tests inject the browser
// opener through it).
func newRootCommand(o *Options) *cobra.Command {
	// controller-runtime logs through a delegating logger; a CLI has no use
	// for it (and it would complain after 30s that none was set).
	ctrllog.SetLogger(logr.Discard())
	streams := o.IOStreams
	cmd := &cobra.Command{
		Use:   "kubectl-tokenkeeper",
		Short: "Inspect, refresh and authorize tokenkeeper ManagedTokens",
		Long: `Inspect, refresh and authorize tokenkeeper ManagedTokens (tokens.tokenkeeper.dev/v1alpha1).

Examples:
  kubectl tokenkeeper status -A
  kubectl tokenkeeper status -n ads -l team=growth -o wide
  kubectl tokenkeeper describe -n ads facebook-marketing
  kubectl tokenkeeper refresh -n ads facebook-marketing
  kubectl tokenkeeper authorize -n ads facebook-marketing --open

Exit status: 0 on success; 1 on any error, including a usage error and a
failed, expired or timed-out authorization; 130 when interrupted (Ctrl-C).`,
		Annotations: map[string]string{
			cobra.CommandDisplayNameAnnotation: "kubectl tokenkeeper",
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.SetIn(streams.In)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	o.ConfigFlags.AddFlags(cmd.PersistentFlags())

	cmd.AddCommand(newStatusCommand(o), newRefreshCommand(o), newDescribeCommand(o), newAuthorizeCommand(o), newVersionCommand(o))
	cmd.CompletionOptions.DisableDefaultCmd = true
	return cmd
}

// objectRef is "managedtoken/NAME", as kubectl prints objects.
func objectRef(name string) string {
	return fmt.Sprintf("%s/%s", resourceName, name)
}
