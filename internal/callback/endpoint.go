package callback

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Endpoint serves the authorization endpoint until its context ends. It is
// a controller-runtime manager Runnable that runs on every replica, not only
// the leader: a Service routes a callback to any pod, and the exchange is
// serialized by the conditional writes of the state Secret, not by the
// lease.
type Endpoint struct {
	// Addr is the listen address (host:port); Listener, when set, is used
	// instead (tests).
	Addr     string
	Listener net.Listener
	Handler  http.Handler
}

// Start implements manager.Runnable.
func (e *Endpoint) Start(ctx context.Context) error {
	l := e.Listener
	if l == nil {
		var err error
		if l, err = net.Listen("tcp", e.Addr); err != nil {
			return err
		}
	}
	srv := &http.Server{
		Handler: http.MaxBytesHandler(e.Handler, 1<<10),
		// A callback is a GET with a query: small headers, no body.
		MaxHeaderBytes:    16 << 10,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       15 * time.Second,
		// The exchange runs before the page is written.
		WriteTimeout: 90 * time.Second,
		IdleTimeout:  60 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (e *Endpoint) NeedLeaderElection() bool { return false }
