package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/proto"
)

// luod's metrics are served by a process of their own, luod-exporter
// (cmd/luod-exporter), so that luod does not link client_golang: its
// package init and a binary twice the size would lengthen luod's start,
// which after a live update is part of the workloads' pause (see package
// metrics).
//
// Once READY, luod listens on the metrics address itself and starts the
// exporter at the first connection to it, inetd style: a live update's
// burst of reclaims right after READY does not share the CPU with the
// start of a second process unless someone scrapes just then. luod passes
// the exporter one end of a socketpair as its fd 3, whose other end it
// serves as a connection of its own (on which only "metrics" and "hello"
// are answered: the exporter parses HTTP from the network), the listening
// socket as its fd 4 and the connection it accepted as its fd 5; the
// exporter serves that one, accepts the next scrapes itself, and asks
// "metrics" on fd 3. cmd/luod asks it to lower its own priority (--nice):
// scrapes are not urgent.
//
// The exporter is luod's child: it gets SIGTERM when luod's thread that
// started it dies (Pdeathsig) and exits when its connection ends, and
// luod stops it when it stops. If it exits on its own (a crash) luod logs
// why and starts it again at the next connection, waiting 1 s first, then
// twice as long each time up to a minute; a run of a minute or more
// resets that. The port stays luod's all along.

const (
	exporterBackoffMin = time.Second
	exporterBackoffMax = time.Minute
	// exporterStopTimeout is how long a stopping luod waits for the
	// exporter after SIGTERM before it kills it.
	exporterStopTimeout = 5 * time.Second
)

// runExporter listens on cfg.MetricsAddress and runs cfg.Exporter
// whenever a connection waits and none runs, until ctx is done.
func (d *Daemon) runExporter(ctx context.Context) {
	ln := d.listenMetrics(ctx)
	if ln == nil {
		return // luod stops
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	tl := ln.(*net.TCPListener)
	d.log.Info("metrics endpoint listening; the exporter starts at the first scrape",
		"address", ln.Addr().String(), "exporter", d.cfg.Exporter[0])

	wait := newBackoff(exporterBackoffMin, exporterBackoffMax)
	for {
		conn, err := tl.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return // luod stops
			}
			d.log.Warn("metrics endpoint: accept failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		t0 := time.Now()
		err = d.exporterOnce(ctx, tl, conn)
		if ctx.Err() != nil {
			return
		}
		if time.Since(t0) >= exporterBackoffMax {
			wait.reset()
		}
		d.metrics.Error("exporter")
		d.log.Warn("metrics exporter exited; starting it again at the next scrape", "exporter", d.cfg.Exporter[0],
			"err", err, "after", wait.next)
		if !wait.wait(ctx) {
			return
		}
	}
}

// listenMetrics listens on cfg.MetricsAddress, trying again with backoff
// while it cannot (the port held by an exporter of a luod that just died,
// or by another program): metrics never stop luod, whose exit would drop
// every session, and luod runs until the next live update, so a port busy
// for a moment must not leave it without metrics. nil once ctx is done.
func (d *Daemon) listenMetrics(ctx context.Context) net.Listener {
	wait := newBackoff(exporterBackoffMin, exporterBackoffMax)
	for first := true; ; first = false {
		ln, err := net.Listen("tcp", d.cfg.MetricsAddress)
		if err == nil {
			return ln
		}
		d.metrics.Error("exporter")
		lvl := slog.LevelDebug
		if first {
			lvl = slog.LevelWarn
		}
		d.log.Log(ctx, lvl, "metrics endpoint: cannot listen; trying again", "address", d.cfg.MetricsAddress,
			"err", err, "after", wait.next)
		if !wait.wait(ctx) {
			return nil
		}
	}
}

// exporterOnce runs the exporter once on l, first serving conn, and
// returns why it ended.
func (d *Daemon) exporterOnce(ctx context.Context, l *net.TCPListener, conn *net.TCPConn) error {
	cf, err := conn.File() // a duplicate, for the exporter's fd 5
	conn.Close()
	if err != nil {
		return fmt.Errorf("the scrape's connection: %w", err)
	}
	defer cf.Close()
	lf, err := l.File() // a duplicate, for the exporter's fd 4
	if err != nil {
		return fmt.Errorf("the listening socket: %w", err)
	}
	defer lf.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "exporter"), os.NewFile(uintptr(fds[1]), "luod")
	defer theirs.Close()
	// luod authenticates every request by the credentials it carries.
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		ours.Close()
		return fmt.Errorf("SO_PASSCRED: %w", err)
	}
	pc, err := proto.FileConn(ours)
	ours.Close() // FileConn made its own
	if err != nil {
		return err
	}

	cmd := exec.Command(d.cfg.Exporter[0], d.cfg.Exporter[1:]...)
	cmd.ExtraFiles = []*os.File{theirs, lf, cf} // fd 3, 4, 5
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Env = exporterEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	err = cmd.Start()
	// Handing lf to the child made the listening socket blocking (os.File's
	// Fd), and luod's listener shares that open file description: without
	// O_NONBLOCK again, luod's next accept would block a thread and its
	// Close at stop would wait for a scrape.
	restoreNonblock(l)
	if err != nil {
		pc.Close()
		return err
	}
	theirs.Close()
	lf.Close()
	cf.Close()
	d.log.Info("metrics exporter started", "exporter", d.cfg.Exporter[0], "pid", cmd.Process.Pid)

	served := make(chan struct{})
	go func() {
		defer close(served)
		d.serveConn(ctx, pc, true)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	select {
	case err = <-exited:
		if err == nil {
			err = errors.New("exited with status 0")
		}
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-exited:
		case <-time.After(exporterStopTimeout):
			cmd.Process.Kill()
			err = <-exited
		}
	}
	pc.Close()
	<-served
	return err
}

// restoreNonblock sets O_NONBLOCK on l's socket again.
func restoreNonblock(l *net.TCPListener) {
	rc, err := l.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { unix.SetNonblock(int(fd), true) })
}

// exporterEnv is luod's environment without what belongs to luod alone:
// systemd's notify socket and watchdog (the exporter is not the unit's
// main process) and the socket activation variables.
func exporterEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			continue
		}
		out = append(out, kv)
	}
	return out
}
