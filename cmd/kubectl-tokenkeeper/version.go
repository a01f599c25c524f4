package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tokenkeeper/tokenkeeper/internal/version"
)

func newVersionCommand(o *Options) *cobra.Command {
	output := ""
	cmd := &cobra.Command{
		Use:   "version [-o json]",
		Short: "Print the plugin's version and source revision",
		Long: `Print the version and source revision this plugin was built from. A release's
manager reports the same pair in its startup log and in the
tokenkeeper_build_info metric.`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			i := version.Get()
			switch output {
			case "":
				_, err := fmt.Fprintf(o.Out, "kubectl-tokenkeeper version %s, revision %s, %s\n", i.Version, i.Revision, i.GoVersion)
				return err
			case outputJSON:
				b, err := json.MarshalIndent(i, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(o.Out, "%s\n", b)
				return err
			default:
				return fmt.Errorf("unknown output format %q: want json, or no -o", output)
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: json, or empty for one line.")
	return cmd
}
