// Package daemon is luod: it owns /dev/liveupdate, keeps workloads'
// sessions in custody (pkg/session), serves the socket protocol
// (pkg/proto, docs/protocol.md), loads the next kernel and runs the
// upgrade: barrier, manifest, reboot(LINUX_REBOOT_CMD_KEXEC). After the new
// kernel boots it decodes the handover (pkg/kho), recovers every session
// named in its manifest and holds them until their owners claim them.
//
// cmd/luod only parses flags into a Config and calls Run.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/kexec"
	"github.com/luod/luod/pkg/metrics"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// Version names this build in hello and logs.
var Version = "luod 0.1.0"

// Config is everything luod is told at start.
type Config struct {
	// SocketPath is where to listen (proto.DefaultSocket), unless Listener
	// is set (systemd socket activation).
	SocketPath string
	SocketMode fs.FileMode
	// SocketGID owns the socket file; -1 leaves it root's.
	SocketGID int
	Listener  *proto.Listener
	// AdminGID may run admin operations besides uid 0; -1 for none.
	AdminGID int

	// StateDir holds the readable manifest copy (manifest.json) and,
	// without FDStore, the custody record log (record.log).
	StateDir string
	// DevicePath is /dev/liveupdate; KHODir the incoming handover
	// (kho.DefaultDir); KHOOutLUO the outgoing LUO blob, which holds the
	// number the next kernel will report.
	DevicePath string
	KHODir     string
	KHOOutLUO  string

	// ReclaimGrace is how long incoming sessions may stay unclaimed before
	// luod reports them (it never finishes them on its own).
	ReclaimGrace time.Duration
	// UpgradeTimeout is the default barrier timeout.
	UpgradeTimeout time.Duration
	// PauseNice, if below luod's own nice value, is the one every luod
	// thread takes from an upgrade's barrier to its reboot (taking it
	// needs CAP_SYS_NICE), and gives back when the upgrade ends without
	// a reboot: in the workloads' pause, luod's work is what they wait
	// for, and a process it wakes (a client told committed) must not
	// take luod's CPU before the reboot.
	PauseNice int
	// MaxConnections bounds concurrent client connections.
	MaxConnections int
	// WriteTimeout bounds every write to a client, so a client that does
	// not read cannot stall luod.
	WriteTimeout time.Duration
	// DeviceRetry is how long to retry opening a device another process
	// holds (EBUSY) before giving up.
	DeviceRetry time.Duration
	// Limits of the custody.
	MaxSessionsPerUID, MaxFilesPerSession int

	// BootID identifies this boot (/proc/sys/kernel/random/boot_id when
	// empty); tests that simulate a kexec set a new one per boot.
	BootID string

	// Backend reaches the kernel (ioctl.System); tests use ioctltest.
	Backend ioctl.Backend
	// Kexec loads and reboots (System); tests use a fake.
	Kexec Kexec
	// Log receives one line per state change.
	Log *slog.Logger
	// Ready, if set, is called once recovery has finished and luod serves
	// (systemd's READY=1), with a status line.
	Ready func(status string)
	// Status, if set, receives the status line whenever it may have
	// changed (systemd's STATUS=).
	Status func(status string)
	// BeforeUpgrade, if set, is called when an upgrade is requested,
	// before its barrier (cmd/luod ends a CPU profile there, which the
	// reboot would otherwise cut off).
	BeforeUpgrade func()
	// FDStore keeps session fds across luod's own restarts (systemd's fd
	// store); nil for none. Inherited is what it passed back at start.
	FDStore   FDStore
	Inherited Inherited
	// UpgradePath is PathAuto (also ""), PathDirect or PathOrderly.
	UpgradePath string
	// Manager is the service manager for the orderly path; nil when luod
	// does not run under systemd.
	Manager Manager

	// MetricsAddress is where the metrics endpoint listens (host:port);
	// Exporter is the command line of luod's metrics exporter
	// (cmd/luod-exporter). Once READY, luod listens there and starts the
	// exporter at the first connection, with a connection to luod as its
	// fd 3 and the listening socket as its fd 4; luod answers its
	// "metrics" requests, it serves them to Prometheus. Either empty: no
	// endpoint. See exporter.go.
	MetricsAddress string
	Exporter       []string
	// FaultRebootFails is a test-only switch: the first FaultRebootFails
	// reboot calls fail with EIO instead of reaching the kernel, to prove
	// the recovery path; the next one is real.
	FaultRebootFails int
	// FaultHang is a test-only switch: when it is closed, luod's main
	// loop hangs for good (its lock is taken and never released), so that
	// systemd's watchdog must kill and restart it.
	FaultHang <-chan struct{}
}

// Kexec is the seam to kexec_file_load and reboot.
type Kexec interface {
	Load(kernel, initrd *os.File, cmdline string) error
	Unload() error
	Reboot() error
}

// System is the real kexec.
var System Kexec = systemKexec{}

type systemKexec struct{}

func (systemKexec) Load(k, i *os.File, c string) error { return kexec.LoadFiles(k, i, c) }
func (systemKexec) Unload() error                      { return kexec.Unload() }
func (systemKexec) Reboot() error                      { return kexec.Reboot() }

// defaults fills zero fields of cfg.
func (cfg *Config) defaults() {
	if cfg.SocketPath == "" {
		cfg.SocketPath = proto.DefaultSocket
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o660
	}
	if cfg.DevicePath == "" {
		cfg.DevicePath = ioctl.DevicePath
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/luod"
	}
	if cfg.KHODir == "" {
		cfg.KHODir = "/sys/kernel/debug/kho/in"
	}
	if cfg.KHOOutLUO == "" {
		cfg.KHOOutLUO = "/sys/kernel/debug/kho/out/sub_fdts/LUO"
	}
	if cfg.ReclaimGrace == 0 {
		cfg.ReclaimGrace = 10 * time.Minute
	}
	if cfg.UpgradeTimeout == 0 {
		cfg.UpgradeTimeout = 30 * time.Second
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = 4096
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 5 * time.Second
	}
	if cfg.DeviceRetry == 0 {
		cfg.DeviceRetry = 30 * time.Second
	}
	if cfg.Backend == nil {
		cfg.Backend = ioctl.System
	}
	if cfg.Kexec == nil {
		cfg.Kexec = System
	}
	if cfg.UpgradePath == "" {
		cfg.UpgradePath = PathAuto
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
}

// Daemon is a running luod.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	slot    *devSlot
	custody *session.Custody
	boot    bootInfo

	mu       sync.Mutex
	loaded   *proto.LoadedKernel
	phase    string
	subs     map[*conn]bool
	conns    map[*conn]bool
	barrier  *barrier
	overdue  map[string]bool
	upgrades int

	rec  recovery
	next uint64 // liveupdate number the next kernel will report; see setRecovery

	metrics *metrics.Metrics // luod's event counts, for the "metrics" operation

	beat atomic.Int64 // unix nanos of the last heartbeat, see Healthy

	// record is the custody record (storeRecord), in systemd's fd store or
	// the state directory, which changes are appended to; recordMu orders
	// them. Without the store, no record after recovery means its last
	// write failed, and the disk writer tries again (syncRecord).
	recordMu sync.Mutex
	record   *session.RecordFile

	upgradeMu     sync.Mutex // one upgrade at a time (TryLock)
	rebootsFailed int        // by the fault switch; guarded by upgradeMu
	// diskMu keeps the disk writer's work (the disk copy's write, its
	// fsync, the collection that gives memory back) out of an upgrade:
	// an upgrade holds it from before its barrier to its end, waiting for
	// a write under way, so none runs into the workloads' pause.
	diskMu sync.Mutex
	// stopping is closed when Serve's context ends: an orderly upgrade
	// waits for it after queueing kexec.target.
	stopping chan struct{}
	// diskDirty wakes the disk writer at the first change since its last
	// write (dirty false → true); later changes only move lastChange, so
	// a request costs no goroutine wake-up (markDirty).
	diskDirty  chan struct{}
	dirty      atomic.Bool
	lastChange atomic.Int64 // the last change, as time.Since(epoch): monotonic
	epoch      time.Time
}

// New opens the device, recovers what the previous kernel handed over and
// returns a daemon ready to Serve.
func New(ctx context.Context, cfg Config) (*Daemon, error) {
	cfg.defaults()
	switch cfg.UpgradePath {
	case PathAuto, PathDirect, PathOrderly:
	default:
		return nil, fmt.Errorf("upgrade path %q: want %s, %s or %s", cfg.UpgradePath, PathAuto, PathDirect, PathOrderly)
	}
	d := &Daemon{
		cfg:       cfg,
		log:       cfg.Log,
		subs:      map[*conn]bool{},
		conns:     map[*conn]bool{},
		overdue:   map[string]bool{},
		diskDirty: make(chan struct{}, 1),
		epoch:     time.Now(),
		stopping:  make(chan struct{}),
		metrics:   metrics.New(),
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		d.log.Warn("state directory unusable; the manifest copy will not be written", "dir", cfg.StateDir, "err", err)
	}
	dev, err := d.openDevice(ctx)
	if err != nil {
		return nil, err
	}
	d.slot = &devSlot{dev: dev}
	d.boot = readBootInfo()
	if cfg.BootID != "" {
		d.boot.bootID = cfg.BootID
	}
	d.custody = session.New(d.slot, session.Config{
		MaxSessionsPerUID:  cfg.MaxSessionsPerUID,
		MaxFilesPerSession: cfg.MaxFilesPerSession,
		Release:            d.boot.release,
		BootID:             d.boot.bootID,
	})
	t0 := time.Now()
	if err := d.recover(); err != nil {
		d.custody.Close()
		dev.Close()
		return nil, err
	}
	d.metrics.ObserveRecovery(time.Since(t0))
	return d, nil
}

// openDevice opens /dev/liveupdate, retrying with backoff while another
// process holds it (systemd's shutdown or early-boot step, or an old luod
// still exiting).
func (d *Daemon) openDevice(ctx context.Context) (*ioctl.Device, error) {
	deadline := time.Now().Add(d.cfg.DeviceRetry)
	wait := newBackoff(50*time.Millisecond, 2*time.Second)
	for {
		dev, err := ioctl.OpenWith(d.cfg.Backend, d.cfg.DevicePath)
		if err == nil {
			return dev, nil
		}
		var le *ioctl.Error
		if !errors.As(err, &le) || le.Errno != unix.EBUSY || time.Now().After(deadline) {
			return nil, err
		}
		d.log.Warn("device busy, retrying", "device", d.cfg.DevicePath, "err", err, "retry_in", wait.next)
		if !wait.wait(ctx) {
			return nil, ctx.Err()
		}
	}
}

// Close releases the device and every session luod holds. Sessions with no
// other open fd are dropped by the kernel: only call it at shutdown.
func (d *Daemon) Close() error {
	d.recordMu.Lock()
	if d.record != nil {
		d.record.Close()
		d.record = nil
	}
	d.recordMu.Unlock()
	d.custody.Close()
	d.slot.release()
	return nil
}

type bootInfo struct {
	release, bootID string
}

func readBootInfo() bootInfo {
	var b bootInfo
	if r, err := readFile("/proc/sys/kernel/osrelease"); err == nil {
		b.release = strings.TrimSpace(string(r))
	}
	if r, err := readFile("/proc/sys/kernel/random/boot_id"); err == nil {
		b.bootID = strings.TrimSpace(string(r))
	}
	return b
}

// statusLine is the one-line summary for logs and systemd's STATUS=.
func (d *Daemon) statusLine() string {
	st := d.custody.Snapshot()
	n := st.Open + st.Incoming + st.Claimed
	d.mu.Lock()
	defer d.mu.Unlock()
	s := fmt.Sprintf("%d sessions held, liveupdate #%d %s", n, d.rec.got, d.rec.continuity)
	if d.phase != "" {
		s += ", upgrade " + d.phase
	}
	return s
}

// metricsSnapshot answers the "metrics" operation: luod's state and
// event counts, which luod-exporter serves at each scrape.
func (d *Daemon) metricsSnapshot() metrics.Snapshot {
	all := d.custody.List(session.Caller{Admin: true})
	snap := metrics.Snapshot{
		Build:           buildInfo(),
		SessionsByState: map[string]int{},
		FilesByState:    map[string]int{},
		Events:          d.metrics.Events(),
	}
	for _, s := range all {
		snap.SessionsByState[string(s.State)]++
		snap.FilesByState[string(s.State)] += len(s.Files)
		if s.State != session.StateFinished {
			for _, f := range s.Files {
				snap.PreservedBytes += f.Size
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	snap.LiveUpdateNumber = d.rec.got
	snap.Continuity = d.rec.continuity
	for c := range d.conns {
		if !c.internal {
			snap.ConnectedClients++
		}
	}
	snap.SubscribedClients = len(d.subs)
	snap.LostTotal = len(d.rec.lost)
	for _, l := range d.rec.lost[:min(len(d.rec.lost), metrics.MaxLostNamed)] {
		snap.Lost = append(snap.Lost, metrics.LostSession{Name: l.Name, UID: l.UID})
	}
	snap.UnclaimedOverdue = len(d.overdue)
	snap.UpgradePhase = d.phase
	snap.KernelLoaded = d.loaded != nil
	return snap
}

// buildInfo says which luod this is: its version, and the Go toolchain
// and VCS revision it was built from.
func buildInfo() metrics.BuildInfo {
	b := metrics.BuildInfo{Version: strings.TrimPrefix(Version, "luod "), GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				b.Revision = s.Value
			}
		}
	}
	return b
}

// heartbeat proves every few hundred milliseconds that luod's locks are
// free and its custody answers; Healthy reads it for systemd's watchdog.
func (d *Daemon) heartbeat(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-d.cfg.FaultHang:
			d.log.Error("TEST FAULT: hanging luod's main loop; the watchdog must restart luod")
			d.mu.Lock()
			select {} // never unlocks: every request and the heartbeat stop
		default:
		}
		d.mu.Lock()
		d.mu.Unlock()
		d.custody.Snapshot()
		d.beat.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Healthy reports whether luod's main loop beat recently. A luod whose
// locks are stuck stops beating, the watchdog is not fed, and systemd
// restarts it (its sessions wait in the fd store).
func (d *Daemon) Healthy() bool {
	return time.Since(time.Unix(0, d.beat.Load())) < 5*time.Second
}

func (d *Daemon) notifyStatus() {
	if d.cfg.Status != nil {
		d.cfg.Status(d.statusLine())
	}
}
