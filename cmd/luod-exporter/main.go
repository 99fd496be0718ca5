// Command luod-exporter serves luod's Prometheus metrics. luod starts it
// at the first scrape of its endpoint (--web.listen-address of luod),
// with a connection to luod as its fd 3 (--luod.fd=3), luod's listening
// socket as its fd 4 (--web.listen-fd=4) and the scrape's connection luod
// accepted as its fd 5 (--web.conn-fd=5), and it asks luod for its
// metrics at every scrape; it can also run on its own, listen itself and connect
// to luod's socket (--socket.path), as an admin. luod does not serve the metrics itself so
// that it does not link client_golang, whose init and size would lengthen
// its start in the pause of a live update (docs/metrics.md).
//
// Besides luod's own metrics (package exporter), it exports client_golang's
// process metrics of luod's process (process_*: CPU, memory, open fds),
// not of its own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/luod/luod/internal/nice"
	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/metrics"
	"github.com/luod/luod/pkg/metrics/exporter"
	"github.com/luod/luod/pkg/proto"
)

// askTimeout bounds one request to luod; a scrape waits at most this long
// for luod before it reports luod_up 0.
const askTimeout = 5 * time.Second

func main() {
	var (
		addr     = flag.String("web.listen-address", "127.0.0.1:9478", "address to serve the metrics on, unless --web.listen-fd is given")
		lfd      = flag.Int("web.listen-fd", -1, "fd of a listening TCP socket to serve on (luod passes 4); -1: listen on --web.listen-address")
		cfd      = flag.Int("web.conn-fd", -1, "fd of a connection accepted on --web.listen-fd, served first (luod passes 5)")
		niceness = flag.Int("nice", 0, "nice value to take at start, for every thread (luod passes 10: scrapes are not urgent)")
		path     = flag.String("web.telemetry-path", exporter.DefaultPath, "path of the metrics")
		fd       = flag.Int("luod.fd", -1, "fd of a connection to luod (luod passes 3); -1: connect to --socket.path")
		socket   = flag.String("socket.path", proto.DefaultSocket, "luod's socket, when not given --luod.fd")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("process", "luod-exporter")
	if *niceness != 0 {
		if err := nice.Set(*niceness); err != nil {
			log.Warn("cannot lower the exporter's priority", "nice", *niceness, "err", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	l := &luod{}
	if *fd < 0 {
		l.socket = *socket
	} else {
		c, pid, err := fromFD(*fd)
		if err != nil {
			log.Error("cannot reach luod", "err", err)
			os.Exit(1)
		}
		l.c, l.pid = c, pid
		// Started by luod: its connection ending means luod is gone, and
		// the next luod starts an exporter of its own.
		go func() {
			for range c.Events() {
			}
			log.Info("luod's connection ended; stopping")
			stop()
		}()
	}
	defer l.close()

	reg := prometheus.NewRegistry()
	col, err := exporter.NewCollector(l.ask)
	if err != nil {
		log.Error("metrics", "err", err)
		os.Exit(1)
	}
	reg.MustRegister(col, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{PidFn: l.luodPID}))
	if *lfd >= 0 {
		ln, err := listenerFromFD(*lfd, *cfd)
		if err != nil {
			log.Error("cannot serve the metrics", "err", err)
			os.Exit(1)
		}
		err = exporter.ServeListener(ctx, ln, *path, reg)
		if err != nil {
			log.Error("cannot serve the metrics", "address", ln.Addr().String(), "err", err)
			os.Exit(1)
		}
		return
	}
	if err := exporter.Serve(ctx, *addr, *path, reg); err != nil {
		log.Error("cannot serve the metrics", "address", *addr, "err", err)
		os.Exit(1)
	}
}

// listenerFromFD is the listening socket luod passed as fd, whose Accept
// returns first the connection luod accepted (connFD, if not -1).
func listenerFromFD(fd, connFD int) (net.Listener, error) {
	f := os.NewFile(uintptr(fd), "listener")
	if f == nil {
		return nil, fmt.Errorf("--web.listen-fd=%d is not a valid fd", fd)
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("--web.listen-fd=%d: %w", fd, err)
	}
	if connFD < 0 {
		return ln, nil
	}
	cf := os.NewFile(uintptr(connFD), "scrape")
	if cf == nil {
		ln.Close()
		return nil, fmt.Errorf("--web.conn-fd=%d is not a valid fd", connFD)
	}
	defer cf.Close()
	c, err := net.FileConn(cf)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("--web.conn-fd=%d: %w", connFD, err)
	}
	return &firstConn{Listener: ln, first: c}, nil
}

// firstConn is a listener whose first Accept returns a connection
// accepted before.
type firstConn struct {
	net.Listener
	once  sync.Once
	first net.Conn
}

func (l *firstConn) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.first })
	if c != nil {
		return c, nil
	}
	return l.Listener.Accept()
}

// fromFD returns a client on the connection luod passed as fd, and
// luod's pid.
func fromFD(fd int) (*client.Client, int, error) {
	f := os.NewFile(uintptr(fd), "luod")
	if f == nil {
		return nil, 0, fmt.Errorf("--luod.fd=%d is not a valid fd", fd)
	}
	defer f.Close()
	pc, err := proto.FileConn(f)
	if err != nil {
		return nil, 0, fmt.Errorf("--luod.fd=%d: %w", fd, err)
	}
	return withPID(pc)
}

// withPID makes a client of pc, with the pid of the process at its other
// end (luod) from SO_PEERCRED.
func withPID(pc *proto.Conn) (*client.Client, int, error) {
	cred, err := pc.PeerCred()
	if err != nil {
		pc.Close()
		return nil, 0, err
	}
	return client.New(pc), int(cred.Pid), nil
}

// luod is the exporter's connection to luod: the one luod passed, or one
// to luod's socket, dialled again after luod restarted.
type luod struct {
	socket string // dialled when c is nil (run on its own)

	mu  sync.Mutex
	c   *client.Client
	pid int // luod's, for the process collector
}

// conn returns the connection, dialling the socket if there is none.
func (l *luod) conn() (*client.Client, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		return l.c, nil
	}
	pc, err := proto.Dial(l.socket)
	if err != nil {
		return nil, err
	}
	if l.c, l.pid, err = withPID(pc); err != nil {
		return nil, err
	}
	return l.c, nil
}

// ask is the collector's Source: luod's answer to "metrics". On its own
// (dialling luod's socket), a connection that failed otherwise than by
// luod being slow is dropped and dialled again at once: after luod
// restarted, the first scrape already finds the new one.
func (l *luod) ask() (metrics.Snapshot, error) {
	s, err := l.askOnce()
	if err != nil && l.socket != "" && !errors.Is(err, context.DeadlineExceeded) {
		s, err = l.askOnce()
	}
	return s, err
}

func (l *luod) askOnce() (metrics.Snapshot, error) {
	c, err := l.conn()
	if err != nil {
		return metrics.Snapshot{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
	defer cancel()
	s, err := c.Metrics(ctx)
	if err != nil {
		if l.socket != "" && !errors.Is(err, context.DeadlineExceeded) {
			l.mu.Lock()
			if l.c == c {
				l.c = nil
				c.Close()
			}
			l.mu.Unlock()
		}
		return metrics.Snapshot{}, err
	}
	return *s, nil
}

// luodPID is luod's pid, for the process collector.
func (l *luod) luodPID() (int, error) {
	if _, err := l.conn(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pid, nil
}

func (l *luod) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		l.c.Close()
	}
}
