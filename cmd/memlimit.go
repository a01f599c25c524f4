package main

import (
	"log/slog"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"
)

// memoryLimitRatio is the share of the container's memory limit that the Go
// runtime keeps its own memory under. The rest is room for what the runtime
// does not count (the binary's pages, thread stacks) and for the garbage
// collector to catch up.
const memoryLimitRatio = 0.9

// setMemoryLimit sets the Go runtime's soft memory limit (GOMEMLIMIT) to 90%
// of the memory limit that provider reports: in main, the limit of the
// manager's cgroup, which is the container's resources.limits.memory.
//
// Without it the heap grows to about twice its live size between two
// collections (GOGC=100), so a manager whose live data fits its limit with
// room to spare is still killed by the kernel at a peak, perhaps between a
// refresh and the write that stores the new pair. With it, the collector
// runs more often as memory nears the limit instead.
//
// A GOMEMLIMIT environment variable wins (AUTOMEMLIMIT=off turns this off;
// AUTOMEMLIMIT=0.8 changes the ratio). No limit (a manager outside any
// container): nothing changes. It returns the limit in force afterwards,
// math.MaxInt64 for none. The memlimit package logs what it set, and any
// error, through log; an error leaves the limit as it was.
func setMemoryLimit(log logr.Logger, provider memlimit.Provider) (int64, error) {
	return memlimit.Set(
		memlimit.WithProvider(provider),
		memlimit.WithRatio(memoryLimitRatio),
		memlimit.WithLogger(slog.New(logr.ToSlogHandler(log))),
	)
}
