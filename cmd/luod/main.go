// Command luod is the live update daemon: it owns /dev/liveupdate, keeps
// workloads' preserved fds, and runs kernel live updates on an admin's
// command. See docs/operations.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/luod/luod/internal/daemon"
	"github.com/luod/luod/internal/systemd"
	"github.com/luod/luod/pkg/proto"
)

func main() {
	var (
		cfg        daemon.Config
		sockGroup  = flag.String("socket.group", "", "group owning the socket (workloads in it may connect); empty: root's")
		sockMode   = flag.String("socket.mode", "0660", "permissions of the socket file")
		adminGroup = flag.String("admin.group", "", "group whose members may run admin operations besides root")
		logFormat  = flag.String("log.format", "text", "log format when not under systemd: text or json")
		logLevel   = flag.String("log.level", "info", "log level: debug, info, warn, error")
		webAddr    = flag.String("web.listen-address", "127.0.0.1:9478", "address of the Prometheus metrics endpoint; empty turns it off")
		webPath    = flag.String("web.telemetry-path", "/metrics", "path of the metrics endpoint")
		exporter   = flag.String("web.exporter", "", "the metrics exporter luod starts at the first scrape to serve the endpoint; empty: luod-exporter beside luod's executable")
		faultHang  = flag.Bool("test.fault-hang-on-sigusr2", false, "TEST ONLY: hang the main loop on SIGUSR2, to exercise systemd's watchdog")
		faultBoot  = flag.Int("test.fault-reboot", 0, "TEST ONLY: make the first N reboot calls fail, to exercise the recovery path")
		cpuProfile = flag.String("debug.cpuprofile", "", "write a CPU profile (pprof) of luod to this file, from start until exit or the first upgrade request")
		version    = flag.Bool("version", false, "print the version and exit")
	)
	flag.StringVar(&cfg.SocketPath, "socket.path", proto.DefaultSocket, "unix socket to listen on (ignored under socket activation)")
	flag.StringVar(&cfg.StateDir, "state.dir", "/var/lib/luod", "directory for the readable manifest copy")
	flag.StringVar(&cfg.DevicePath, "device.path", "/dev/liveupdate", "the Live Update Orchestrator device")
	flag.StringVar(&cfg.KHODir, "kho.dir", "/sys/kernel/debug/kho/in", "the incoming KHO handover directory")
	flag.DurationVar(&cfg.ReclaimGrace, "reclaim.grace", 10*time.Minute, "report sessions still unclaimed this long after boot (they are never finished by luod)")
	flag.DurationVar(&cfg.UpgradeTimeout, "upgrade.timeout", 30*time.Second, "default time subscribers have to answer ready")
	flag.IntVar(&cfg.PauseNice, "upgrade.pause-nice", -20, "nice value of luod's threads from an upgrade's barrier to its reboot, if below luod's own")
	flag.IntVar(&cfg.MaxConnections, "limits.connections", 4096, "concurrent client connections")
	flag.IntVar(&cfg.MaxSessionsPerUID, "limits.sessions-per-uid", 1024, "sessions one uid may hold")
	flag.IntVar(&cfg.MaxFilesPerSession, "limits.files-per-session", 4096, "files one session may hold (its file list must also fit one answer: about 1300 files of short labels)")
	flag.StringVar(&cfg.UpgradePath, "upgrade.path", daemon.PathAuto, "how an upgrade reaches the new kernel: auto (orderly under systemd >= 261, else direct), direct (luod calls reboot(2)) or orderly (systemd's kexec.target)")
	flag.DurationVar(&cfg.DeviceRetry, "device.retry", 30*time.Second, "how long to retry opening a device another process holds")
	flag.Parse()
	if *version {
		fmt.Println(daemon.Version)
		return
	}

	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			fatal("--debug.cpuprofile: %v", err)
		}
		defer stop()
		cfg.BeforeUpgrade = stop
	}

	// What systemd hands over (the activated socket, stored fds) is taken
	// first, before anything else opens files.
	inherited, inheritErr := systemd.TakeInherited()

	lvl := new(slog.LevelVar)
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fatal("--log.level: %v", err)
	}
	if l, ok := systemd.NewLogger(lvl); ok {
		cfg.Log = l // under systemd: journald, with SESSION=, UID=, TOKEN=, PHASE= fields
	} else {
		var h slog.Handler
		switch *logFormat {
		case "text":
			h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})
		case "json":
			h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})
		default:
			fatal("--log.format %q: want text or json", *logFormat)
		}
		cfg.Log = slog.New(h)
	}
	if inheritErr != nil {
		cfg.Log.Warn("some fds systemd passed could not be taken", "err", inheritErr)
	}
	if len(inherited.Listeners) > 0 {
		l, err := proto.FileListener(inherited.Listeners[0])
		if err != nil {
			fatal("the socket systemd passed: %v", err)
		}
		inherited.Listeners[0].Close()
		cfg.Listener = l
		cfg.Log.Info("using the socket passed by systemd socket activation")
	}
	var notifier systemd.Notifier
	if notifier.Enabled() {
		// Every session fd and luod's custody record go into systemd's fd
		// store, so that a luod that dies loses nothing; what it stored
		// comes back here.
		cfg.FDStore = notifier
		cfg.Manager = systemd.Manager{}
		cfg.Inherited = daemon.Inherited{Sessions: inherited.Sessions, Record: inherited.Manifest}
	}
	for _, f := range inherited.Other {
		cfg.Log.Warn("fd passed by systemd that luod does not know; removing it from the store", "fdname", f.Name())
		notifier.RemoveFD(f.Name())
		f.Close()
	}
	cfg.Status = func(status string) { notifier.Status(status) }
	cfg.Ready = func(status string) { notifier.Ready(status) }

	m, err := strconv.ParseUint(*sockMode, 8, 32)
	if err != nil {
		fatal("--socket.mode %q: %v", *sockMode, err)
	}
	cfg.SocketMode = os.FileMode(m)
	if cfg.SocketGID, err = lookupGroup(*sockGroup); err != nil {
		fatal("--socket.group: %v", err)
	}
	if cfg.AdminGID, err = lookupGroup(*adminGroup); err != nil {
		fatal("--admin.group: %v", err)
	}
	cfg.FaultRebootFails = *faultBoot
	if *faultHang {
		hang := make(chan struct{})
		usr2 := make(chan os.Signal, 1)
		signal.Notify(usr2, syscall.SIGUSR2)
		go func() { <-usr2; close(hang) }()
		cfg.FaultHang = hang
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if *webAddr != "" {
		// The endpoint is served by luod-exporter, which luod starts at the
		// first scrape once READY (docs/metrics.md): luod itself does not
		// link client_golang.
		// Metrics missing is reported, never fatal: luod exiting would drop
		// every session it holds.
		path, err := exporterPath(*exporter)
		switch {
		case err != nil:
			cfg.Log.Warn("metrics endpoint off: no exporter", "err", err)
		case *webPath != "" && !strings.HasPrefix(*webPath, "/"):
			cfg.Log.Warn("metrics endpoint off: --web.telemetry-path does not start with /", "path", *webPath)
		default:
			cfg.MetricsAddress = *webAddr
			cfg.Exporter = []string{path, "--luod.fd=3", "--web.listen-fd=4", "--web.conn-fd=5", "--nice=10", "--web.telemetry-path=" + *webPath}
		}
	}
	d, err := daemon.New(ctx, cfg)
	if err != nil {
		cfg.Log.Error("luod failed to start", "err", err)
		os.Exit(1)
	}
	go notifier.WatchdogLoop(ctx, d.Healthy)
	err = d.Serve(ctx)
	notifier.Stopping()
	d.Close()
	if err != nil {
		cfg.Log.Error("luod failed", "err", err)
		os.Exit(1)
	}
}

// exporterPath is the exporter to run: flag if set, else luod-exporter in
// the directory of luod's own executable. It must be an executable
// regular file.
func exporterPath(flag string) (string, error) {
	path := flag
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		path = filepath.Join(filepath.Dir(exe), "luod-exporter")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file (%s)", path, fi.Mode())
	}
	return path, nil
}

func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(name); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(g.Gid)
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "luod: "+format+"\n", args...)
	os.Exit(2)
}

// startCPUProfile profiles luod into path until the returned function is
// first called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}, nil
}
