// Package version holds the release version and source revision of the
// tokenkeeper binaries. Release builds (make image, make release, make build)
// stamp both with the linker:
//
//	go build -ldflags "-X github.com/tokenkeeper/tokenkeeper/internal/version.version=0.1.0 \
//	  -X github.com/tokenkeeper/tokenkeeper/internal/version.revision=<git commit>"
//
// The manager logs them at startup and exports them as tokenkeeper_build_info;
// `kubectl tokenkeeper version` prints them.
package version

import (
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X; see the package comment.
var (
	version  = ""
	revision = ""
)

// Info describes one build.
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	GoVersion string `json:"goVersion"`
}

// Get returns the stamped version and revision. An unstamped build (go run,
// go test) reports version "dev" and the VCS revision Go recorded, if any,
// else "unknown".
func Get() Info {
	return get(version, revision, debug.ReadBuildInfo)
}

func get(v, rev string, read func() (*debug.BuildInfo, bool)) Info {
	if v == "" {
		v = "dev"
	}
	if rev == "" {
		rev = "unknown"
		if bi, ok := read(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && s.Value != "" {
					rev = s.Value
				}
			}
		}
	}
	return Info{Version: v, Revision: rev, GoVersion: runtime.Version()}
}
