package main

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// child is a process the demo started: the sandbox or the manager. It runs
// in its own process group, so a Ctrl-C reaches only the demo, which then
// stops the children in order; and it gets SIGTERM if the demo dies.
type child struct {
	name, logPath string
	cmd           *exec.Cmd
	done          chan struct{}
	err           error // set before done is closed
}

var (
	childrenMu sync.Mutex
	children   []*child
)

func startChild(name, path string, args []string, logPath, dir string) (*child, error) {
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
	c := &child{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
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

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// exitErr describes how the child ended; only valid once it exited.
func (c *child) exitErr() string {
	if c.err == nil {
		return "exit status 0"
	}
	return c.err.Error()
}

// stop sends SIGTERM to the child's process group, waits up to grace, then
// kills the group.
func (c *child) stop(grace time.Duration) {
	if c.exited() {
		say("    %s had already exited (%s)", c.name, c.exitErr())
		return
	}
	say("    stopping the %s (SIGTERM, pid %d)", c.name, c.cmd.Process.Pid)
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
		if c.err != nil {
			say("    %s exited: %s", c.name, c.exitErr())
		}
		return
	case <-time.After(grace):
	}
	say("    %s did not stop within %s: killing it", c.name, grace)
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		say("    %s (pid %d) did not die after SIGKILL", c.name, c.cmd.Process.Pid)
	}
}

// killAll kills every child's process group at once (second Ctrl-C).
func killAll() {
	childrenMu.Lock()
	defer childrenMu.Unlock()
	for _, c := range children {
		if !c.exited() {
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		}
	}
}
