package devenv

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Child is a process a driver started: the sandbox or the manager. It runs
// in its own process group, so a Ctrl-C reaches only the driver, which then
// stops the children in order; and it gets SIGTERM if the driver dies.
type Child struct {
	Name, LogPath string
	cmd           *exec.Cmd
	done          chan struct{}
	err           error // set before done is closed
}

var (
	childrenMu sync.Mutex
	children   []*Child
)

// StartChild starts path with args in dir, its output going to logPath.
func StartChild(name, path string, args []string, logPath, dir string) (*Child, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &Child{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	childrenMu.Lock()
	children = append(children, c)
	childrenMu.Unlock()
	return c, nil
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Done is closed when the child has exited.
func (c *Child) Done() <-chan struct{} { return c.done }

// Exited reports whether the child has exited.
func (c *Child) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// ExitErr describes how the child ended; only valid once it exited.
func (c *Child) ExitErr() string {
	if c.err == nil {
		return "exit status 0"
	}
	return c.err.Error()
}

// Stop sends SIGTERM to the child's process group, waits up to grace, then
// kills the group.
func (c *Child) Stop(grace time.Duration) {
	if c.Exited() {
		Say("    %s had already exited (%s)", c.Name, c.ExitErr())
		return
	}
	Say("    stopping the %s (SIGTERM, pid %d)", c.Name, c.cmd.Process.Pid)
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
		if c.err != nil {
			Say("    %s exited: %s", c.Name, c.ExitErr())
		}
		return
	case <-time.After(grace):
	}
	Say("    %s did not stop within %s: killing it", c.Name, grace)
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		Say("    %s (pid %d) did not die after SIGKILL", c.Name, c.cmd.Process.Pid)
	}
}

// KillAll kills every child's process group at once (second Ctrl-C).
func KillAll() {
	childrenMu.Lock()
	defer childrenMu.Unlock()
	for _, c := range children {
		if !c.Exited() {
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		}
	}
}
