package main

import (
	"errors"
	"math"
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr/testr"
)

// TestSetMemoryLimit: the Go runtime's soft limit becomes 90% of the
// container's limit, and stays as it was when GOMEMLIMIT is set, when there
// is no limit, or when the limit cannot be read. The cases change the
// process's own memory limit, so they run one after another and the old
// limit is put back.
func TestSetMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })

	const mib = 1 << 20
	unreadable := errors.New("cannot read memory.max")
	for _, tc := range []struct {
		name      string
		env       map[string]string
		limit     memlimit.Provider
		start     int64 // the runtime's limit before the call
		want      int64 // the runtime's limit after it
		wantError bool
	}{
		{name: "container limit 512Mi", limit: memlimit.Limit(512 * mib), start: math.MaxInt64, want: 512 * mib * 9 / 10},
		{name: "container limit 256Mi", limit: memlimit.Limit(256 * mib), start: math.MaxInt64, want: 256 * mib * 9 / 10},
		{name: "no limit", limit: func() (uint64, error) { return 0, memlimit.ErrNoLimit }, start: math.MaxInt64, want: math.MaxInt64},
		{name: "GOMEMLIMIT set", env: map[string]string{"GOMEMLIMIT": "300MiB"}, limit: memlimit.Limit(512 * mib), start: 300 * mib, want: 300 * mib},
		{name: "AUTOMEMLIMIT=off", env: map[string]string{"AUTOMEMLIMIT": "off"}, limit: memlimit.Limit(512 * mib), start: math.MaxInt64, want: math.MaxInt64},
		{name: "AUTOMEMLIMIT=0.5", env: map[string]string{"AUTOMEMLIMIT": "0.5"}, limit: memlimit.Limit(512 * mib), start: math.MaxInt64, want: 256 * mib},
		{name: "unreadable limit", limit: func() (uint64, error) { return 0, unreadable }, start: math.MaxInt64, want: math.MaxInt64, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", "")
			t.Setenv("AUTOMEMLIMIT", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if tc.env["AUTOMEMLIMIT"] == "" {
				// memlimit tells an empty AUTOMEMLIMIT from an unset one;
				// t.Setenv above puts back the test process's own value.
				os.Unsetenv("AUTOMEMLIMIT")
			}
			debug.SetMemoryLimit(tc.start)

			got, err := setMemoryLimit(testr.New(t), tc.limit)
			if (err != nil) != tc.wantError {
				t.Fatalf("error %v, want one: %v", err, tc.wantError)
			}
			if tc.wantError && !errors.Is(err, unreadable) {
				t.Errorf("error %v does not wrap the provider's", err)
			}
			if now := debug.SetMemoryLimit(-1); now != tc.want {
				t.Errorf("runtime memory limit %d, want %d", now, tc.want)
			}
			if !tc.wantError && got != tc.want {
				t.Errorf("returned %d, want %d", got, tc.want)
			}
		})
	}
}
