package main

import (
	"fmt"
	"os/exec"
	"runtime"
	"time"
)

// browserCommand is the program and arguments that open url in the
// desktop's default browser on goos.
func browserCommand(goos, url string) (name string, args []string, err error) {
	switch goos {
	case "darwin":
		return "open", []string{url}, nil
	case "windows":
		return "rundll32", []string{"url.dll,FileProtocolHandler", url}, nil
	case "linux", "freebsd", "openbsd", "netbsd", "dragonfly", "illumos", "solaris":
		return "xdg-open", []string{url}, nil
	}
	return "", nil, fmt.Errorf("no known way to open a browser on %s", goos)
}

// browserGrace is how long openBrowser waits for the opener to fail. Openers
// usually hand the URL to a running browser and exit at once; some start the
// browser in the foreground and keep running, which is success.
const browserGrace = 2 * time.Second

// openBrowser opens url in the user's browser. The opener's output is
// discarded: it may echo the URL, whose state parameter must appear nowhere
// but on the command's stdout. Errors name the program, never the URL.
func openBrowser(url string) error {
	name, args, err := browserCommand(runtime.GOOS, url)
	if err != nil {
		return err
	}
	cmd := exec.Command(name, args...) // Stdin, Stdout, Stderr: the null device
	if err := cmd.Start(); err != nil {
		if ee, ok := err.(*exec.Error); ok {
			return fmt.Errorf("%s: %v", name, ee.Err)
		}
		return fmt.Errorf("starting %s failed", name)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		return nil
	case <-time.After(browserGrace):
		return nil
	}
}
