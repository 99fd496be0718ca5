//go:build linux

package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/systemd"
	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// fakeKexec stands in for kexec_file_load and reboot. A successful
// Reboot is the fake kernel's Reboot: the old daemon's fds all die, as
// its process would; Reboot then blocks like a reboot that never returns,
// until the test ends.
type fakeKexec struct {
	fake      *ioctltest.Fake
	mu        sync.Mutex
	loaded    bool
	cmdline   string
	loadErr   error
	rebootErr error
	rebooted  chan struct{}
	end       chan struct{}
	// kill drops every client connection, as the machine going away does.
	kill func()
}

func (k *fakeKexec) Load(kernel, initrd *os.File, cmdline string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.loadErr != nil {
		return k.loadErr
	}
	k.loaded, k.cmdline = true, cmdline
	return nil
}

func (k *fakeKexec) Unload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.loaded = false
	return nil
}

func (k *fakeKexec) Reboot() error {
	if k.rebootErr != nil {
		return k.rebootErr
	}
	if err := k.fake.Reboot(); err != nil {
		return err
	}
	k.kill()
	close(k.rebooted)
	<-k.end
	return errors.New("test over")
}

// host is one boot of a machine: a daemon on the fake kernel, serving.
type host struct {
	t      testing.TB
	dir    string
	fake   *ioctltest.Fake
	kx     *fakeKexec
	d      *Daemon
	cancel context.CancelFunc
	done   chan error
	sock   string
	logs   *bytes.Buffer
	logw   *syncWriter
	once   sync.Once
}

var bootSeq atomic.Int64

// luoV5 encodes a raw luo-v5 struct luo_ser with number n.
func luoV5(n uint64) []byte {
	b := make([]byte, 32)
	copy(b, "luo-v5")
	binary.LittleEndian.PutUint64(b[8:], n)
	return b
}

// boot starts a daemon. After a fake reboot, handover makes the KHO
// directory hold a LUO blob of the fake's number, as the kernel would.
func boot(t testing.TB, dir string, fake *ioctltest.Fake, handover bool, mod func(*Config)) *host {
	t.Helper()
	khoIn := filepath.Join(dir, "kho-in")
	os.RemoveAll(khoIn)
	if handover {
		os.MkdirAll(filepath.Join(khoIn, "sub_fdts"), 0o755)
		os.WriteFile(filepath.Join(khoIn, "sub_fdts", "LUO"), luoV5(fake.LiveUpdateNum()), 0o644)
	}
	outLUO := filepath.Join(dir, "kho-out-LUO")
	os.WriteFile(outLUO, luoV5(fake.LiveUpdateNum()+1), 0o644)
	h := &host{t: t, dir: dir, fake: fake, logs: &bytes.Buffer{}, done: make(chan error, 1)}
	h.logw = &syncWriter{w: h.logs}
	h.kx = &fakeKexec{fake: fake, rebooted: make(chan struct{}), end: make(chan struct{})}
	h.sock = filepath.Join(dir, "luod.sock")
	cfg := Config{
		// The test's own group is luod's admin group, so that the admin
		// operations work without root.
		SocketPath: h.sock, SocketGID: -1, AdminGID: os.Getgid(),
		StateDir: filepath.Join(dir, "state"), DevicePath: fake.Path(),
		KHODir: khoIn, KHOOutLUO: outLUO,
		Backend: fake, Kexec: h.kx, UpgradeTimeout: 2 * time.Second,
		Log:         slog.New(slog.NewTextHandler(h.logw, &slog.HandlerOptions{Level: slog.LevelDebug})),
		DeviceRetry: time.Second,
		BootID:      fmt.Sprintf("boot-%d", bootSeq.Add(1)),
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("New: %v", err)
	}
	h.d, h.cancel = d, cancel
	h.kx.kill = func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for c := range d.conns {
			c.c.Close()
		}
	}
	ready := make(chan struct{})
	d.cfg.Ready = func(string) { close(ready) }
	go func() { h.done <- d.Serve(ctx) }()
	<-ready
	t.Cleanup(h.stop)
	return h
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// logText is what luod logged so far.
func (h *host) logText() string {
	h.logw.mu.Lock()
	defer h.logw.mu.Unlock()
	return h.logs.String()
}

func (h *host) stop() { h.once.Do(h.doStop) }

func (h *host) doStop() {
	select {
	case <-h.kx.end:
	default:
		close(h.kx.end)
	}
	h.cancel()
	<-h.done
	h.d.Close()
}

func (h *host) dial() *client.Client {
	h.t.Helper()
	c, err := client.Dial(h.sock)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func memfd(t testing.TB, data []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// fakeKernel writes a kernel image for the architecture the test runs on
// (the preflight refuses any other): an x86 bzImage header pointing at its
// version string, or an arm64 Image carrying linux_banner; both of release
// 7.3.4-test, with a config beside it.
func fakeKernel(t testing.TB, dir string) string {
	b := make([]byte, 0x1000)
	switch runtime.GOARCH {
	case "amd64":
		copy(b[0x202:], "HdrS")
		binary.LittleEndian.PutUint16(b[0x20e:], 0x600)
		copy(b[0x800:], "7.3.4-test #1\x00")
	case "arm64":
		binary.LittleEndian.PutUint64(b[0x10:], 0x1000) // image_size
		copy(b[0x38:], "ARM\x64")
		copy(b[0x800:], "Linux version 7.3.4-test (test@luod) #1\x00")
	default:
		t.Fatalf("no kernel image fixture for %s", runtime.GOARCH)
	}
	p := filepath.Join(dir, "vmlinuz-7.3.4-test")
	os.WriteFile(p, b, 0o644)
	os.WriteFile(filepath.Join(dir, "config-7.3.4-test"),
		[]byte("CONFIG_KEXEC_HANDOVER=y\nCONFIG_LIVEUPDATE=y\nCONFIG_LIVEUPDATE_MEMFD=y\n"), 0o644)
	return p
}

// sessionAndKernel creates session name through c and loads a fake kernel:
// what every upgrade test starts from.
func sessionAndKernel(t *testing.T, c *client.Client, dir, name string) {
	t.Helper()
	if _, err := c.CreateSession(ctx(t), name, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, c, fakeKernel(t, dir)); err != nil {
		t.Fatal(err)
	}
}

func load(t testing.TB, c *client.Client, kernel string) (*proto.LoadResult, error) {
	k, err := os.Open(kernel)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	var cfg *os.File
	if p := strings.Replace(kernel, "vmlinuz-", "config-", 1); p != kernel {
		if cfg, err = os.Open(p); err == nil {
			defer cfg.Close()
		}
	}
	return c.Load(ctx(t), k, nil, cfg, proto.LoadArgs{Cmdline: "console=ttyS0 liveupdate=on"})
}

func isCode(err error, code proto.Code) bool {
	return errors.Is(err, &proto.Error{Code: code})
}

// TestLiveUpdateCycle is the whole product on the fake kernel: a workload
// preserves memory through luod and exits, an admin loads and upgrades,
// the barrier passes, the new daemon recovers and the workload reclaims
// byte-exact.
func TestLiveUpdateCycle(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()

	st, err := c.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Continuity != proto.ContinuityFresh || st.LiveUpdateNumber != 0 {
		t.Fatalf("cold start status = %+v, want fresh, liveupdate 0", st)
	}

	// A VMM: creates its session, preserves guest RAM through luod, then
	// exits (luod holds the session).
	ram := bytes.Repeat([]byte("guest-ram!"), 100000)
	vmm, err := client.Dial(h.sock)
	if err != nil {
		t.Fatal(err)
	}
	vmm.UseBackend(fake) // its session fd is the fake kernel's, not the host's
	s, err := vmm.CreateSession(ctx(t), "vm-1", map[string]string{"vm": "1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vmm.Preserve(ctx(t), "vm-1", []client.FileToPreserve{{File: memfd(t, ram), Token: 7, Label: "ram"}}); err != nil {
		t.Fatal(err)
	}
	// The client's own dup works too: preserve a second file into it
	// itself and declare it.
	if err := s.PreserveFD(int(memfd(t, []byte("vfio-state")).Fd()), 8); err != nil {
		t.Fatal(err)
	}
	if err := vmm.Declare(ctx(t), "vm-1", []proto.FileSpec{{Token: 8, Label: "dev"}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	vmm.Close()

	// A second workload subscribes and answers the barrier.
	h.subscriber(t, func() bool { return true })

	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{}, nil); !isCode(err, proto.CodeNoKernelLoaded) {
		t.Fatalf("upgrade without a kernel = %v, want no_kernel_loaded", err)
	}
	kernel := fakeKernel(t, dir)
	if res, err := load(t, c, kernel); err != nil || res.Release != "7.3.4-test" {
		t.Fatalf("load = %+v, %v", res, err)
	}
	var dryPhases []string
	dry, err := c.Upgrade(ctx(t), proto.UpgradeArgs{DryRun: true}, func(p proto.ProgressEvent) { dryPhases = append(dryPhases, p.Phase) })
	if err != nil || !dry.DryRun {
		t.Fatalf("dry run = %+v, %v", dry, err)
	}
	// The progress held in the pause comes before the answer, which
	// times both phases.
	if want := []string{"barrier", "manifest"}; strings.Join(dryPhases, ",") != strings.Join(want, ",") {
		t.Errorf("dry run phases %v, want %v", dryPhases, want)
	}
	if _, ok := dry.Phases[proto.PhaseBarrier]; !ok || len(dry.Phases) != 2 {
		t.Errorf("dry run answer times %v, want the barrier and manifest phases", dry.Phases)
	}
	if got := fake.LiveUpdateNum(); got != 0 {
		t.Fatalf("dry run rebooted: liveupdate number %d", got)
	}

	var phases []string
	_, err = c.Upgrade(ctx(t), proto.UpgradeArgs{}, func(p proto.ProgressEvent) { phases = append(phases, p.Phase) })
	if !errors.Is(err, client.ErrRebooting) {
		t.Fatalf("upgrade = %v, want ErrRebooting", err)
	}
	<-h.kx.rebooted
	if want := []string{"barrier", "manifest", "reboot"}; strings.Join(phases, ",") != strings.Join(want, ",") {
		t.Errorf("phases %v, want %v", phases, want)
	}
	h.stop()

	// The new kernel: luod recovers, the VMM reclaims.
	h2 := boot(t, dir, fake, true, nil)
	c2 := h2.dial()
	// It reports the pause that brought it, from the page the previous
	// luod wrote its figures into before reboot(2): the same as its
	// reboot line.
	reboot := regexp.MustCompile(`msg="calling reboot\(LINUX_REBOOT_CMD_KEXEC\)" (upgrade=\S+ .*release=7.3.4-test since_ready=\S+ manifest=\S+ sync=\S+ woke=\S+ events=\S+)\n`).FindStringSubmatch(h.logText())
	if reboot == nil || !strings.Contains(reboot[1], " sessions=1 ") || !strings.Contains(reboot[1], " manifest_prewritten=true ") {
		t.Fatalf("no reboot line with the pause's figures:\n%s", h.logText())
	}
	want := fmt.Sprintf(`msg="the last update's pause, as the previous luod measured it" pause="%s"`, reboot[1])
	if !strings.Contains(h2.logText(), want) {
		t.Errorf("the new luod's log lacks\n%s\n%s", want, h2.logText())
	}
	st, err = c2.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Continuity != proto.ContinuityOK || st.LiveUpdateNumber != 1 || st.Sessions.Incoming != 1 {
		t.Fatalf("status after the update = %+v, want ok, #1, 1 incoming", st)
	}
	files, err := c2.Reclaim(ctx(t), "vm-1", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("reclaimed %d files, want 2", len(files))
	}
	for _, f := range files {
		got, _ := io.ReadAll(io.NewSectionReader(f.File, 0, 1<<30))
		f.File.Close()
		want := ram
		if f.Token == 8 {
			want = []byte("vfio-state")
		}
		if !bytes.Equal(got, want) {
			t.Errorf("token %d: %d bytes back, not byte-exact with the %d preserved", f.Token, len(got), len(want))
		}
	}
}

// TestBarrierAbort: a subscriber that never answers aborts the upgrade,
// nothing is lost, and a later upgrade goes through once it is gone.
func TestBarrierAbort(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	w := h.dial()
	if _, err := w.CreateSession(ctx(t), "vm-2", nil); err != nil {
		t.Fatal(err)
	}
	w.Preserve(ctx(t), "vm-2", []client.FileToPreserve{{File: memfd(t, []byte("x")), Token: 1}})
	mute := h.dial()
	if err := mute.Subscribe(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, c, fakeKernel(t, dir)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Upgrade(ctx(t), proto.UpgradeArgs{TimeoutMS: 200}, nil)
	if !isCode(err, proto.CodeAborted) || !strings.Contains(err.Error(), "did not answer ready") {
		t.Fatalf("upgrade with a mute subscriber = %v, want aborted naming it", err)
	}
	ss, err := c.Sessions(ctx(t))
	if err != nil || len(ss) != 1 || ss[0].State != proto.StateOpen || len(ss[0].Files) != 1 {
		t.Fatalf("sessions after abort = %+v, %v", ss, err)
	}
	// The manifest written before the barrier went with it.
	if _, ok := findSession(fake, session.ReservedName); ok {
		t.Fatal("the prewritten manifest stayed in the kernel after the abort")
	}
	// luod still serves: a new session works while the mute one is around.
	if _, err := w.CreateSession(ctx(t), "vm-3", nil); err != nil {
		t.Fatal(err)
	}
	mute.Close()
	for i := 0; ; i++ { // until luod has seen it go
		h.d.mu.Lock()
		n := len(h.d.subs)
		h.d.mu.Unlock()
		if n == 0 {
			break
		}
		if i > 500 {
			t.Fatal("luod still counts the closed subscriber")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{DryRun: true}, nil); err != nil {
		t.Fatalf("upgrade after the mute client left: %v", err)
	}
}

// TestManifestPrewritten: the manifest is written before the barrier. A
// subscriber that changes nothing while preparing finds it kept (the
// pause writes nothing); one that preserves its device state while
// preparing, as a VMM pausing its guest would, has that file carried all
// the same: the manifest is written anew in the pause.
func TestManifestPrewritten(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	sessionAndKernel(t, c, dir, "vm-1")
	vmm := h.dial()
	if _, err := vmm.CreateSession(ctx(t), "vm-2", nil); err != nil {
		t.Fatal(err)
	}
	if err := vmm.Subscribe(ctx(t)); err != nil {
		t.Fatal(err)
	}
	state := []byte("device state at pause")
	var prepares atomic.Int32
	prepErr := make(chan error, 2)
	go func() {
		for ev := range vmm.Events() {
			if ev.Event != proto.EventPrepare {
				continue
			}
			var p proto.PrepareEvent
			ev.Decode(&p)
			var err error
			if prepares.Add(1) == 2 {
				_, err = vmm.Preserve(context.Background(), "vm-2", []client.FileToPreserve{{File: memfd(t, state), Token: 9, Label: "dev"}})
			}
			prepErr <- err
			vmm.Ready(context.Background(), p.Upgrade)
		}
	}()

	from := len(h.logText())
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{DryRun: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-prepErr; err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`dry run finished.* sessions=2 .*manifest_prewritten=true`).MatchString(h.logText()[from:]) {
		t.Errorf("dry run without a change did not keep the prewritten manifest:\n%s", h.logText()[from:])
	}
	if _, ok := findSession(fake, session.ReservedName); ok {
		t.Fatal("the manifest stayed in the kernel after the dry run")
	}

	from = len(h.logText())
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{}, nil); !errors.Is(err, client.ErrRebooting) {
		t.Fatalf("upgrade = %v, want ErrRebooting", err)
	}
	if err := <-prepErr; err != nil {
		t.Fatalf("preserve while preparing: %v", err)
	}
	<-h.kx.rebooted
	if !regexp.MustCompile(`calling reboot.* sessions=2 .*manifest_prewritten=false`).MatchString(h.logText()[from:]) {
		t.Errorf("a change during the barrier did not rewrite the manifest in the pause:\n%s", h.logText()[from:])
	}
	vmm.Close()
	h.stop()

	c2 := boot(t, dir, fake, true, nil).dial()
	files, err := c2.Reclaim(ctx(t), "vm-2", true)
	if err != nil || len(files) != 1 || files[0].Token != 9 {
		t.Fatalf("reclaim vm-2 after the update = %+v, %v; want the file preserved while preparing", files, err)
	}
	got, _ := io.ReadAll(io.NewSectionReader(files[0].File, 0, 1<<20))
	files[0].File.Close()
	if !bytes.Equal(got, state) {
		t.Fatalf("device state came back as %q", got)
	}
}

// TestRebootFailureKeepsSessions uses the test fault switch for the kernel
// refusing reboot(2).
func TestRebootFailureKeepsSessions_FaultSwitch(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, func(c *Config) { c.FaultRebootFails = 1 })
	c := h.dial()
	sessionAndKernel(t, c, dir, "vm-4")
	_, err := c.Upgrade(ctx(t), proto.UpgradeArgs{}, nil)
	if !isCode(err, proto.CodeKexecFailed) || !strings.Contains(err.Error(), "intact") {
		t.Fatalf("upgrade with a failing reboot = %v, want kexec_failed", err)
	}
	st, err := c.Status(ctx(t))
	if err != nil || st.Sessions.Open != 1 || st.UpgradePhase != "" {
		t.Fatalf("status after failed reboot = %+v, %v", st, err)
	}
	// Everything still works, including a second upgrade attempt: the
	// switch failed one reboot call, the next one is real.
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{DryRun: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{}, nil); !errors.Is(err, client.ErrRebooting) {
		t.Fatalf("upgrade after the failed reboot = %v, want ErrRebooting", err)
	}
	<-h.kx.rebooted
	h.stop()
	c2 := boot(t, dir, fake, true, nil).dial()
	st, err = c2.Status(ctx(t))
	if err != nil || st.Continuity != "ok" || st.Sessions.Incoming != 1 {
		t.Fatalf("status after the real upgrade = %+v, %v", st, err)
	}
}

func TestLoadPreflight(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	notKernel := filepath.Join(dir, "notes.txt")
	os.WriteFile(notKernel, []byte("this is no kernel"), 0o644)
	_, err := load(t, c, notKernel)
	if !isCode(err, proto.CodePreflightFailed) || !strings.Contains(err.Error(), notKernel) {
		t.Errorf("load of a text file = %v, want preflight_failed naming it", err)
	}
	k := fakeKernel(t, dir)
	os.WriteFile(strings.Replace(k, "vmlinuz-", "config-", 1), []byte("# CONFIG_LIVEUPDATE is not set\nCONFIG_KEXEC_HANDOVER=y\n"), 0o644)
	if _, err := load(t, c, k); !isCode(err, proto.CodePreflightFailed) || !strings.Contains(err.Error(), "CONFIG_LIVEUPDATE") {
		t.Errorf("load of a kernel without LIVEUPDATE = %v, want preflight_failed", err)
	}
	h.kx.loadErr = &os.PathError{Op: "kexec", Path: k, Err: unix.ENOEXEC}
	os.WriteFile(strings.Replace(k, "vmlinuz-", "config-", 1), []byte("CONFIG_KEXEC_HANDOVER=y\nCONFIG_LIVEUPDATE=y\nCONFIG_LIVEUPDATE_MEMFD=y\n"), 0o644)
	if _, err := load(t, c, k); !isCode(err, proto.CodeKexecFailed) {
		t.Errorf("load refused by the kernel = %v, want kexec_failed", err)
	}
	st, err := c.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Loaded != nil {
		t.Errorf("a refused load left a kernel loaded: %+v", st.Loaded)
	}
}

func TestColdBootReportsLostSessions(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	if _, err := c.CreateSession(ctx(t), "vm-lost", nil); err != nil {
		t.Fatal(err)
	}
	c.Preserve(ctx(t), "vm-lost", []client.FileToPreserve{{File: memfd(t, []byte("x")), Token: 1}})
	if _, err := load(t, c, fakeKernel(t, dir)); err != nil {
		t.Fatal(err)
	}
	// A dry run writes the disk copy; then the machine is powered off.
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{DryRun: true}, nil); err != nil {
		t.Fatal(err)
	}
	h.stop()
	h2 := boot(t, dir, ioctltest.New(), false, nil)
	st, err := h2.dial().Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Continuity != proto.ContinuityColdBoot || len(st.LostSessions) != 1 || st.LostSessions[0] != "vm-lost" {
		t.Fatalf("status after a cold boot = %+v, want cold_boot losing vm-lost", st)
	}
	if !strings.Contains(h2.logText(), "session LOST") {
		t.Errorf("the loss was not logged loudly:\n%s", h2.logText())
	}
}

// TestRestartWithinBootReportsLoss: luod stopped without an fd store loses
// what it held; the next instance in the same boot says so by name and
// does not take the handover over a second time.
func TestRestartWithinBootReportsLoss(t *testing.T) {
	fake := ioctltest.New()
	same := func(c *Config) { c.BootID = "one-boot" }
	h, c := bootHolding(t, fake, same, "vm-crash")
	c.Close()
	h.stop()
	h2 := boot(t, h.dir, fake, false, same)
	st, _ := lostNames(t, h2)
	if len(st.LostSessions) != 1 || st.LostSessions[0] != "vm-crash" {
		t.Fatalf("status after a restart = %+v, want vm-crash lost", st)
	}
	if !strings.Contains(h2.logText(), "restarted within this boot") {
		t.Errorf("the restart was not logged:\n%s", h2.logText())
	}
}

// TestSocketActivation: a listener handed over (as systemd's luod.socket
// does) is served instead of a socket of luod's own.
func TestSocketActivation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "activated.sock")
	l, err := proto.Listen(path, 0o660, -1)
	if err != nil {
		t.Fatal(err)
	}
	h := boot(t, dir, ioctltest.New(), false, func(c *Config) { c.Listener = l })
	if _, err := os.Stat(h.sock); !os.IsNotExist(err) {
		t.Errorf("luod made its own socket %s beside the activated one: %v", h.sock, err)
	}
	c, err := client.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Hello(ctx(t)); err != nil {
		t.Fatalf("hello over the activated socket: %v", err)
	}
}

// fakeStore is systemd's fd store: it keeps its own duplicates, by name.
type fakeStore struct {
	mu  sync.Mutex
	fds map[string]*os.File
	// batches and removals are the lengths of the StoreFDs and RemoveFDs
	// calls.
	batches, removals []int
}

// RemoveFDs is RemoveFD of each, as systemd.Notifier's batch.
func (s *fakeStore) RemoveFDs(names []string) (int, error) {
	s.mu.Lock()
	s.removals = append(s.removals, len(names))
	s.mu.Unlock()
	for _, n := range names {
		s.RemoveFD(n)
	}
	return len(names), nil
}

// StoreFDs is StoreFD of each, as systemd.Notifier's batch.
func (s *fakeStore) StoreFDs(files []systemd.NamedFile) (int, error) {
	s.mu.Lock()
	s.batches = append(s.batches, len(files))
	s.mu.Unlock()
	for i, f := range files {
		if err := s.StoreFD(f.Name, f.File); err != nil {
			return i, err
		}
	}
	return len(files), nil
}

func (s *fakeStore) StoreFD(name string, f *os.File) error {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.fds[name]; old != nil {
		old.Close() // systemd replaces an fd stored again under its name
	}
	s.fds[name] = os.NewFile(uintptr(fd), name)
	return nil
}

// has reports whether an fd is stored under name.
func (s *fakeStore) has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fds[name] != nil
}

func (s *fakeStore) RemoveFD(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.fds[name]; f != nil {
		f.Close()
		delete(s.fds, name)
	}
	return nil
}

// passBack is what systemd hands a restarted service: duplicates of the
// stored fds, sorted into sessions and the record.
func (s *fakeStore) passBack(t *testing.T) Inherited {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := Inherited{Sessions: map[string]*os.File{}}
	for name, f := range s.fds {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		g := os.NewFile(uintptr(fd), name)
		if name == recordFDName {
			in.Record = g
		} else {
			_, sname, err := systemd.ParseFDName(name)
			if err != nil {
				t.Fatal(err)
			}
			in.Sessions[sname] = g
		}
	}
	return in
}

// TestKilledLuodLosesNothingWithFDStore: luod dies (its fds close) right
// after a workload preserved; the fd store kept the session, the restarted
// luod takes it back with owner and tokens, and the data crosses the next
// kexec byte-exact.
func TestKilledLuodLosesNothingWithFDStore(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	store := &fakeStore{fds: map[string]*os.File{}}
	sameBoot := func(c *Config) { c.BootID = "kill-boot"; c.FDStore = store }
	h := boot(t, dir, fake, false, sameBoot)
	c := h.dial()
	data := bytes.Repeat([]byte("survive the crash "), 5000)
	if _, err := c.CreateSession(ctx(t), "vm-k", map[string]string{"vm": "k"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Preserve(ctx(t), "vm-k", []client.FileToPreserve{{File: memfd(t, data), Token: 9, Label: "ram"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSession(ctx(t), "vm-gone", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSession(ctx(t), "vm-gone"); err != nil {
		t.Fatal(err)
	}
	if store.has("session-vm-gone") || !store.has("session-vm-k") {
		t.Fatalf("fd store after deleting vm-gone: %v, want vm-k's session only", storeNames(store))
	}
	c.Close()
	h.stop() // luod's own fds all close, as at a SIGKILL

	if _, ok := findSession(fake, "vm-k"); !ok {
		t.Fatal("the kernel dropped vm-k although the fd store held it")
	}
	h2 := boot(t, dir, fake, false, func(c *Config) { sameBoot(c); c.Inherited = store.passBack(t) })
	c2 := h2.dial()
	st, err := c2.Status(ctx(t))
	if err != nil || st.Sessions.Open != 1 || len(st.LostSessions) != 0 {
		t.Fatalf("status after the restart = %+v, %v: want vm-k open, nothing lost", st, err)
	}
	ss, _ := c2.Sessions(ctx(t))
	if len(ss) != 1 || ss[0].Name != "vm-k" || ss[0].Labels["vm"] != "k" || len(ss[0].Files) != 1 || ss[0].Files[0].Token != 9 {
		t.Fatalf("sessions after the restart = %+v", ss)
	}
	h2.kexec(t, c2, dir)
	h2.stop()
	for _, f := range store.fds { // the machine kexecs: systemd is gone too
		f.Close()
	}
	h3 := boot(t, dir, fake, true, nil)
	files, err := h3.dial().Reclaim(ctx(t), "vm-k", true)
	if err != nil || len(files) != 1 {
		t.Fatalf("reclaim = %v, %v", files, err)
	}
	got, _ := io.ReadAll(io.NewSectionReader(files[0].File, 0, 1<<30))
	files[0].File.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("%d bytes back, not byte-exact with the %d preserved", len(got), len(data))
	}
}

// TestRecoveryStoresInOneBatch: after a live update, the sessions luod
// retrieved go into the fd store before READY, all in one batch
// (sendmmsg(2) with systemd), so that a crash of luod loses none of them;
// a reclaim that finishes them removes them in one batch too.
func TestRecoveryStoresInOneBatch(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	names := []string{"vm-a", "vm-b", "vm-c"}
	for _, n := range names {
		if _, _, err := c.CreateSessionWithFiles(ctx(t), n, nil, []client.FileToPreserve{{File: memfd(t, []byte(n)), Token: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	h.kexec(t, c, dir)
	h.stop()

	store := &fakeStore{fds: map[string]*os.File{}}
	h2 := boot(t, dir, fake, true, func(c *Config) { c.FDStore = store })
	for _, n := range names {
		if !store.has(sessionFDName(n)) {
			t.Errorf("fd store at READY lacks %s: %v", n, storeNames(store))
		}
	}
	store.mu.Lock()
	if len(store.batches) != 1 || store.batches[0] != len(names) {
		t.Errorf("recovery stored in batches %v, want one of %d", store.batches, len(names))
	}
	store.mu.Unlock()

	// One reclaim_sessions with finish: every session leaves the store,
	// in one batch, before the answer.
	got, err := h2.dial().ReclaimSessions(ctx(t), names, true)
	if err != nil || len(got) != len(names) {
		t.Fatalf("reclaim_sessions = %d, %v", len(got), err)
	}
	for _, fs := range got {
		for _, f := range fs {
			f.File.Close()
		}
	}
	for _, n := range names {
		if store.has(sessionFDName(n)) {
			t.Errorf("fd store after the finishing reclaim still holds %s", n)
		}
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.removals) != 1 || store.removals[0] != len(names) {
		t.Errorf("the reclaim removed in batches %v, want one of %d", store.removals, len(names))
	}
}

// kexec loads a kernel through c and runs the upgrade up to the (fake)
// reboot: the next boot(…, true, …) is the new kernel's luod.
func (h *host) kexec(tb testing.TB, c *client.Client, dir string) {
	tb.Helper()
	if _, err := load(tb, c, fakeKernel(tb, dir)); err != nil {
		tb.Fatal(err)
	}
	if _, err := c.Upgrade(ctx(tb), proto.UpgradeArgs{}, nil); !errors.Is(err, client.ErrRebooting) {
		tb.Fatalf("upgrade = %v, want ErrRebooting", err)
	}
	<-h.kx.rebooted
}

func findSession(f *ioctltest.Fake, name string) (ioctltest.SessionState, bool) {
	for _, s := range f.Sessions() {
		if s.Name == name {
			return s, true
		}
	}
	return ioctltest.SessionState{}, false
}

// TestHangStopsTheHeartbeat_FaultSwitch: with luod's main loop hung (the
// test fault switch), Healthy turns false, so the watchdog goes unfed.
func TestHangStopsTheHeartbeat_FaultSwitch(t *testing.T) {
	hang := make(chan struct{})
	h := boot(t, t.TempDir(), ioctltest.New(), false, func(c *Config) { c.FaultHang = hang })
	for i := 0; !h.d.Healthy(); i++ {
		if i > 100 {
			t.Fatal("never healthy")
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(hang)
	h.d.beat.Store(time.Now().Add(-time.Minute).UnixNano()) // no need to wait 5 s
	time.Sleep(700 * time.Millisecond)
	if h.d.Healthy() {
		t.Fatal("a hung luod still reports healthy")
	}
	h.once.Do(func() {}) // it cannot be stopped cleanly: its lock is gone for good
}

// TestDiskWriterReturnsMemory: once changes pause, the disk writer's
// write is followed by a full collection that gives the free heap back
// to the kernel (debug.FreeOSMemory, a forced GC cycle): after READY,
// and after a burst of requests. While an upgrade runs the writer waits,
// write and collection, until the upgrade ends: either there would be
// the workloads' downtime.
func TestDiskWriterReturnsMemory(t *testing.T) {
	fake := ioctltest.New()
	t.Cleanup(func() { fake.Close() })
	before := forcedGCs()
	h := boot(t, t.TempDir(), fake, false, nil)
	waitFor(t, "a forced collection after READY", func() bool { return forcedGCs() > before })

	before = forcedGCs()
	c := h.dial()
	for _, n := range []string{"vm-a", "vm-b"} {
		if _, _, err := c.CreateSessionWithFiles(ctx(t), n, nil, []client.FileToPreserve{{File: memfd(t, []byte(n)), Token: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	copyOnDisk := filepath.Join(h.d.cfg.StateDir, session.ManifestFileName)
	waitFor(t, "the disk copy naming both sessions, then a forced collection", func() bool {
		b, _ := os.ReadFile(copyOnDisk)
		return bytes.Contains(b, []byte(`"vm-b"`)) && forcedGCs() > before
	})

	// A change during an upgrade's barrier (a subscriber that never
	// answers: it ends aborted after its timeout) is written, and memory
	// given back, once the upgrade is over.
	mute := h.dial()
	if err := mute.Subscribe(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, c, fakeKernel(t, h.dir)); err != nil {
		t.Fatal(err)
	}
	upgraded := make(chan error, 1)
	go func() {
		_, err := h.dial().Upgrade(ctx(t), proto.UpgradeArgs{TimeoutMS: 1500}, nil)
		upgraded <- err
	}()
	waitFor(t, "the barrier", func() bool { return h.d.currentPhase() == proto.PhaseBarrier })
	before = forcedGCs()
	if _, _, err := c.CreateSessionWithFiles(ctx(t), "vm-c", nil, []client.FileToPreserve{{File: memfd(t, []byte("c")), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(diskQuiet + 300*time.Millisecond)
	if b, _ := os.ReadFile(copyOnDisk); bytes.Contains(b, []byte(`"vm-c"`)) || forcedGCs() != before {
		t.Errorf("during the barrier the disk writer ran: copy names vm-c %v, %d forced collections",
			bytes.Contains(b, []byte(`"vm-c"`)), forcedGCs()-before)
	}
	if err := <-upgraded; !isCode(err, proto.CodeAborted) {
		t.Fatalf("upgrade with a mute subscriber = %v, want aborted", err)
	}
	waitFor(t, "the disk copy naming vm-c after the upgrade, then a forced collection", func() bool {
		b, _ := os.ReadFile(copyOnDisk)
		return bytes.Contains(b, []byte(`"vm-c"`)) && forcedGCs() > before
	})
}

// forcedGCs is how many collections the process was forced to run
// (runtime.GC, debug.FreeOSMemory).
func forcedGCs() uint64 {
	s := []rtmetrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// subscriber connects a workload that subscribes to upgrade events and,
// told to prepare, calls prepared, then answers ready if it returned true
// (else stays mute).
func (h *host) subscriber(t *testing.T, prepared func() bool) {
	t.Helper()
	sub := h.dial()
	if err := sub.Subscribe(ctx(t)); err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range sub.Events() {
			if ev.Event == proto.EventPrepare {
				var p proto.PrepareEvent
				ev.Decode(&p)
				if prepared() {
					sub.Ready(context.Background(), p.Upgrade)
				}
			}
		}
	}()
}

// waitFor polls cond for up to 10 s and fails the test naming what did
// not happen.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10 s", what)
		}
	}
}
