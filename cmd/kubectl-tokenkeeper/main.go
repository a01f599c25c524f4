// Command kubectl-tokenkeeper is a kubectl plugin for tokenkeeper's
// ManagedTokens. Put it on PATH and run `kubectl tokenkeeper --help`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/utils/clock"
)

// exitInterrupted is the exit status after Ctrl-C (SIGINT).
const exitInterrupted = 130

func main() {
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := NewRootCommand(streams, clock.RealClock{}).ExecuteContext(ctx); err != nil {
		interrupted := ctx.Err() != nil
		stop()
		fmt.Fprintf(streams.ErrOut, "error: %v\n", err)
		if interrupted {
			// 128 + SIGINT, what a shell reports for a command Ctrl-C ended.
			os.Exit(exitInterrupted)
		}
		os.Exit(1)
	}
}
