package exporter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultPath is where Serve exposes the metrics when given no path.
const DefaultPath = "/metrics"

// maxScrapes bounds concurrent scrapes: each one walks luod's sessions.
const maxScrapes = 10

// shutdownTimeout bounds how long Serve waits for scrapes in flight once
// its context is done.
const shutdownTimeout = 5 * time.Second

// Handler serves the metrics of g (the exporter's registry) in the
// Prometheus text format, or protobuf if the scraper asks for it. A
// collector that fails does not blank the page: the others are served
// and the error is reported in the response only if nothing could be.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxScrapes,
	})
}

// Serve listens on addr (host:port, e.g. "127.0.0.1:9478") and serves the
// metrics of g at path (DefaultPath if ""), until ctx is done; then it
// shuts down, letting scrapes in flight finish for a few seconds, and
// returns nil. addr "" disables metrics: Serve returns nil at once.
//
// The metrics tell who holds sessions and when upgrades run; expose them
// beyond loopback only on a trusted network. A failure (the port is in
// use) is returned at once: luod-exporter then exits, and luod, which
// never exits over metrics, logs it and starts it again later.
func Serve(ctx context.Context, addr, path string, g prometheus.Gatherer) error {
	if addr == "" {
		return nil
	}
	if _, err := checkPath(path); err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	return ServeListener(ctx, l, path, g)
}

// checkPath returns path, DefaultPath if "", or why it cannot be served.
func checkPath(path string) (string, error) {
	if path == "" {
		return DefaultPath, nil
	}
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("metrics: path %q does not start with /", path)
	}
	return path, nil
}

// ServeListener is Serve on a listener made elsewhere (luod passes the
// exporter its own); it closes l.
func ServeListener(ctx context.Context, l net.Listener, path string, g prometheus.Gatherer) error {
	path, err := checkPath(path)
	if err != nil {
		l.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(path, Handler(g))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // also when Serve fails, to end the goroutine below
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, stop := context.WithTimeout(context.Background(), shutdownTimeout)
		defer stop()
		if srv.Shutdown(sctx) != nil {
			srv.Close() // scrapes still running after the timeout
		}
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	<-done
	return nil
}
