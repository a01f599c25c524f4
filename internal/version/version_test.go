package version

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestGetDefaults(t *testing.T) {
	withRevision := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}}}, true
	}
	noInfo := func() (*debug.BuildInfo, bool) { return nil, false }
	for _, tc := range []struct {
		name, v, rev string
		read         func() (*debug.BuildInfo, bool)
		want         Info
	}{
		{"stamped", "1.2.3", "deadbeef", withRevision, Info{"1.2.3", "deadbeef", runtime.Version()}},
		{"unstamped, VCS info", "", "", withRevision, Info{"dev", "abc123", runtime.Version()}},
		{"unstamped, no build info", "", "", noInfo, Info{"dev", "unknown", runtime.Version()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(tc.v, tc.rev, tc.read); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
