//go:build linux

package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"os"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/luod/luod/internal/nice"
	"github.com/luod/luod/internal/systemd"
	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
)

// fakeManager is systemd over D-Bus: its version, and kexec.target, whose
// start it only records, with whether /dev/liveupdate was free then
// (systemd-shutdown must be able to open it).
type fakeManager struct {
	fake     *ioctltest.Fake
	version  int
	startErr error
	mu       sync.Mutex
	starts   int
	devFree  bool
	started  chan struct{}
}

func (m *fakeManager) Version(context.Context) (int, error) { return m.version, nil }

// seen is how often kexec.target was started, and whether the device was
// free at the last start.
func (m *fakeManager) seen() (starts int, devFree bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.starts, m.devFree
}

func (m *fakeManager) StartKexecTarget(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.starts++
	if dev, err := ioctl.OpenWith(m.fake, m.fake.Path()); err == nil {
		m.devFree = true
		dev.Close()
	}
	if m.startErr != nil {
		return m.startErr
	}
	close(m.started)
	return nil
}

// systemdCarries is what systemd 262 does with luod's fd store across
// kexec.target: systemd-shutdown keeps every stored fd open through
// reboot(KEXEC), so the kernel carries the stored sessions; in the next
// boot PID 1 retrieves each by the name GET_NAME gave it, closes the
// device and passes the sessions back under their FDNAMEs. It returns the
// new boot's store and what luod inherits from it.
func systemdCarries(t *testing.T, fake *ioctltest.Fake, old *fakeStore) (*fakeStore, Inherited) {
	t.Helper()
	if err := fake.Reboot(); err != nil {
		t.Fatalf("kexec: %v", err)
	}
	for _, f := range old.fds {
		f.Close() // the old kernel is gone, and systemd-shutdown with it
	}
	dev, err := ioctl.OpenWith(fake, fake.Path())
	if err != nil {
		t.Fatalf("PID 1 opening the device: %v", err)
	}
	defer dev.Close()
	store := &fakeStore{fds: map[string]*os.File{}}
	for name := range old.fds {
		kind, sname, err := systemd.ParseFDName(name)
		if err != nil || kind != systemd.KindSession {
			continue // memfds go through systemd's own session; luod needs none
		}
		s, err := dev.RetrieveSession(sname)
		if err != nil {
			t.Fatalf("PID 1 retrieving %s: %v", sname, err)
		}
		if err := store.StoreFD(name, s.File()); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	return store, store.passBack(t)
}

// TestOrderlyUpgradeThroughSystemd: under systemd >= 261 an upgrade stores
// every session and the reserved session, frees the device, starts
// kexec.target and waits to be stopped; after the kexec luod takes the
// sessions systemd handed back, already retrieved, and the workload gets
// its data back byte-exact.
func TestOrderlyUpgradeThroughSystemd(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	store := &fakeStore{fds: map[string]*os.File{}}
	mgr := &fakeManager{fake: fake, version: 262, started: make(chan struct{})}
	h := boot(t, dir, fake, false, func(c *Config) { c.FDStore = store; c.Manager = mgr })
	c := h.dial()
	data := bytes.Repeat([]byte("carried by systemd "), 4000)
	if _, err := c.CreateSession(ctx(t), "vm-o", map[string]string{"vm": "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Preserve(ctx(t), "vm-o", []client.FileToPreserve{{File: memfd(t, data), Token: 3, Label: "ram"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, c, fakeKernel(t, dir)); err != nil {
		t.Fatal(err)
	}
	upgraded := make(chan error, 1)
	go func() {
		_, err := c.Upgrade(ctx(t), proto.UpgradeArgs{}, nil)
		upgraded <- err
	}()
	select {
	case <-mgr.started:
	case err := <-upgraded:
		t.Fatalf("upgrade ended before kexec.target was started: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("kexec.target never started")
	}
	if _, free := mgr.seen(); !free {
		t.Fatal("luod still held /dev/liveupdate when it started kexec.target")
	}
	for _, name := range []string{"session-vm-o", "session-luod", "manifest"} {
		if !store.has(name) {
			t.Fatalf("fd store lacks %s before the kexec: %v", name, storeNames(store))
		}
	}
	select {
	case err := <-upgraded:
		t.Fatalf("upgrade answered before luod was stopped: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	h.stop() // systemd stops luod
	if err := <-upgraded; !errors.Is(err, client.ErrRebooting) {
		t.Fatalf("upgrade = %v, want the connection to end as for a reboot", err)
	}
	if !strings.Contains(h.logText(), "path=orderly") {
		t.Fatalf("luod did not log the orderly path:\n%s", h.logText())
	}

	store2, in := systemdCarries(t, fake, store)
	h2 := boot(t, dir, fake, true, func(c *Config) { c.FDStore = store2; c.Inherited = in; c.Manager = mgr })
	c2 := h2.dial()
	st, err := c2.Status(ctx(t))
	if err != nil || st.Continuity != "ok" || st.LiveUpdateNumber != 1 || st.Sessions.Incoming != 1 || len(st.LostSessions) != 0 {
		t.Fatalf("status after the orderly kexec = %+v, %v", st, err)
	}
	logs := h2.logText()
	for _, want := range []string{"handed back by systemd's fd store after the kexec, already retrieved\" session=vm-o",
		"handed back by systemd's fd store after the kexec, already retrieved\" session=luod"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
	if store2.has("session-luod") {
		t.Fatal("the read reserved session stays in the fd store")
	}
	files, err := c2.Reclaim(ctx(t), "vm-o", true)
	if err != nil || len(files) != 1 {
		t.Fatalf("reclaim = %v, %v", files, err)
	}
	if store2.has("session-vm-o") {
		t.Fatal("vm-o, reclaimed and finished, stays in the fd store")
	}
	got, _ := io.ReadAll(io.NewSectionReader(files[0].File, 0, 1<<30))
	files[0].File.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("%d bytes back, not byte-exact with the %d preserved", len(got), len(data))
	}
}

// TestOrderlyUpgradeRefusedBySystemd: systemd refuses kexec.target; the
// upgrade fails with kexec_failed, luod has the device again and every
// session is intact and usable.
func TestOrderlyUpgradeRefusedBySystemd(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	store := &fakeStore{fds: map[string]*os.File{}}
	mgr := &fakeManager{fake: fake, version: 262, started: make(chan struct{}),
		startErr: errors.New("Access denied")}
	h := boot(t, dir, fake, false, func(c *Config) { c.FDStore = store; c.Manager = mgr })
	c := h.dial()
	sessionAndKernel(t, c, dir, "vm-r")
	_, err := c.Upgrade(ctx(t), proto.UpgradeArgs{}, nil)
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeKexecFailed || !strings.Contains(err.Error(), "Access denied") {
		t.Fatalf("upgrade = %v, want kexec_failed naming systemd's refusal", err)
	}
	if starts, free := mgr.seen(); starts != 1 || !free {
		t.Fatalf("kexec.target started %d times, device free %v", starts, free)
	}
	if store.has("session-luod") {
		t.Fatal("the reserved session stays in the fd store after the refusal")
	}
	// The device is luod's again: a new session can be made.
	if _, err := c.CreateSession(ctx(t), "vm-r2", nil); err != nil {
		t.Fatalf("create after the refused kexec: %v", err)
	}
	if _, ok := findSession(fake, "vm-r"); !ok {
		t.Fatal("vm-r was dropped")
	}
}

// TestUpgradePathChoice: auto follows the manager's version; a forced
// orderly path without systemd is refused before anything changes.
func TestUpgradePathChoice(t *testing.T) {
	for _, tc := range []struct {
		path    string
		version int
		systemd bool
		want    string
		wantErr bool
	}{
		{PathAuto, 252, true, PathDirect, false},
		{PathAuto, 260, true, PathDirect, false},
		{PathAuto, 261, true, PathOrderly, false},
		{PathAuto, 262, true, PathOrderly, false},
		{PathAuto, 0, false, PathDirect, false},
		{PathDirect, 262, true, PathDirect, false},
		{PathOrderly, 252, true, PathOrderly, false},
		{PathOrderly, 0, false, "", true},
	} {
		d := &Daemon{cfg: Config{UpgradePath: tc.path}}
		if tc.systemd {
			d.cfg.Manager = &fakeManager{version: tc.version}
			d.cfg.FDStore = &fakeStore{fds: map[string]*os.File{}}
		}
		got, why, err := d.choosePath()
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%s under systemd %d (%v) = %q (%s), %v; want %q", tc.path, tc.version, tc.systemd, got, why, err, tc.want)
		}
	}
}

func storeNames(s *fakeStore) []string {
	var out []string
	for n := range s.fds {
		out = append(out, n)
	}
	return out
}

// TestPausePriority: from the barrier to the reboot every luod thread
// runs at Config.PauseNice, and an upgrade that ends without a reboot
// gives the old nice value back. (luod runs in the test process here.)
func TestPausePriority(t *testing.T) {
	base, err := nice.Get()
	if err != nil {
		t.Fatal(err)
	}
	if err := nice.Set(base - 1); err != nil {
		t.Skipf("cannot raise the priority here (no CAP_SYS_NICE): %v", err)
	}
	nice.Set(base)
	dir := t.TempDir()
	fake := ioctltest.New()
	defer fake.Close()
	h := boot(t, dir, fake, false, func(c *Config) { c.PauseNice = base - 5 })
	c := h.dial()
	if _, err := load(t, c, fakeKernel(t, dir)); err != nil {
		t.Fatal(err)
	}
	during := make(chan map[int]int, 1)
	h.subscriber(t, func() bool {
		during <- threadNices(t)
		return true
	})
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{DryRun: true}, nil); err != nil {
		t.Fatal(err)
	}
	for tid, n := range <-during {
		if n != base-5 {
			t.Errorf("during the barrier thread %d has nice %d, want %d", tid, n, base-5)
		}
	}
	for tid, n := range threadNices(t) {
		if n != base {
			t.Errorf("after the dry run thread %d has nice %d, want %d back", tid, n, base)
		}
	}
}

// TestPauseHoldsGC: from before an upgrade's barrier to its end no
// garbage collection runs (GOGC off, a soft memory limit in its place),
// and both settings are given back when the upgrade ends without a
// reboot, after a dry run as after an abort.
func TestPauseHoldsGC(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	defer fake.Close()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	if _, err := load(t, c, fakeKernel(t, dir)); err != nil {
		t.Fatal(err)
	}
	answer := make(chan bool, 1) // ready, or stay mute
	during := make(chan [2]int64, 2)
	h.subscriber(t, func() bool {
		during <- gcSettings()
		return <-answer
	})
	before := gcSettings()
	if before[0] < 0 {
		t.Skip("GOGC is off for this test binary")
	}
	answer <- true
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{DryRun: true}, nil); err != nil {
		t.Fatal(err)
	}
	answer <- false
	if _, err := c.Upgrade(ctx(t), proto.UpgradeArgs{TimeoutMS: 100}, nil); !isCode(err, proto.CodeAborted) {
		t.Fatalf("upgrade with a mute subscriber = %v, want aborted", err)
	}
	for _, end := range []string{"dry run", "abort"} {
		got := <-during
		if got[0] != -1 || got[1] <= 0 || got[1] >= before[1] && before[1] != math.MaxInt64 {
			t.Errorf("during the barrier before the %s: GOGC %d, memory limit %d; want off, and a limit below %d", end, got[0], got[1], before[1])
		}
	}
	if after := gcSettings(); after != before {
		t.Errorf("after the upgrades GOGC and the memory limit are %v, want %v back", after, before)
	}
}

// gcSettings is the collector's GOGC (-1: off) and soft memory limit.
func gcSettings() [2]int64 {
	s := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	rtmetrics.Read(s)
	return [2]int64{int64(s[0].Value.Uint64()), int64(s[1].Value.Uint64())}
}

// threadNices is every thread's nice value.
func threadNices(t *testing.T) map[int]int {
	n, err := nice.Threads()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
