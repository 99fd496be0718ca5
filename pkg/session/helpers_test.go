//go:build linux

package session

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"golang.org/x/sys/unix"
)

var (
	alice = Caller{UID: 1000, GID: 1000}
	bob   = Caller{UID: 2000, GID: 2000}
	admin = Caller{UID: 0, GID: 0, Admin: true}
)

// host is one boot of a fake machine: the fake kernel, luod's open device
// and its custody.
type host struct {
	t    *testing.T
	fake *ioctltest.Fake
	dev  *ioctl.Device
	c    *Custody
	now  time.Time
}

// newHost boots a fake machine cold and starts a custody on it.
func newHost(t *testing.T, cfg Config) *host {
	t.Helper()
	f := ioctltest.New()
	t.Cleanup(func() { f.Close() })
	return boot(t, f, cfg)
}

// boot opens the fake's device and makes a custody over it.
func boot(t *testing.T, f *ioctltest.Fake, cfg Config) *host {
	t.Helper()
	dev, err := ioctl.OpenWith(f, f.Path())
	if err != nil {
		t.Fatalf("open device: %v", err)
	}
	h := &host{t: t, fake: f, dev: dev, now: t0}
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return h.now }
	}
	if cfg.Release == "" {
		cfg.Release = "7.2.0-test"
	}
	h.c = New(FromIoctl(dev), cfg)
	t.Cleanup(func() { h.c.Close(); dev.Close() })
	return h
}

// kexec commits an upgrade as luod does (freeze, manifest into the
// reserved session, disk copy into dir if not empty), reboots the fake
// kernel and boots a new luod on it, which is returned before Recover.
// expected is the number written into the manifest.
func (h *host) kexec(dir string, expected uint64, cfg Config) (*host, *Manifest) {
	h.t.Helper()
	unfreeze := h.c.Freeze()
	_ = unfreeze // a committed upgrade never thaws
	w, err := h.c.WriteManifest(expected)
	m := w.Manifest
	if err != nil {
		h.t.Fatalf("WriteManifest: %v", err)
	}
	if dir != "" {
		if err := saveFile(dir, m); err != nil {
			h.t.Fatalf("saveFile: %v", err)
		}
	}
	return h.reboot(cfg), m
}

// reboot reboots the fake kernel with whatever is preserved, ends this
// luod and boots a new one.
func (h *host) reboot(cfg Config) *host {
	h.t.Helper()
	if err := h.fake.Reboot(); err != nil {
		h.t.Fatalf("Reboot: %v", err)
	}
	h.c.Close() // luod dies with the old kernel; its fds are dead anyway
	h.dev.Close()
	return boot(h.t, h.fake, cfg)
}

// handover is the RecoverInput the KHO decoders would give after a kexec.
func (h *host) handover(disk *Manifest) RecoverInput {
	return RecoverInput{Handover: true, LiveUpdateNumber: h.fake.LiveUpdateNum(), Disk: func() *Manifest { return disk }}
}

// kernelSession returns the fake kernel's view of a session.
func (h *host) kernelSession(name string) (ioctltest.SessionState, bool) {
	for _, s := range h.fake.Sessions() {
		if s.Name == name {
			return s, true
		}
	}
	return ioctltest.SessionState{}, false
}

func memfd(t *testing.T, content []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:guest-ram")
	if _, err := f.Write(content); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// pattern is n deterministic bytes seeded by s.
func pattern(s string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = s[i%len(s)] ^ byte(i>>8)
	}
	return b
}

// asFiles makes files of the descriptors Reclaim hands back, as the
// client holds them: closing a file closes its descriptor.
func asFiles(fds []int) []*os.File {
	fs := make([]*os.File, len(fds))
	for i, fd := range fds {
		fs[i] = os.NewFile(uintptr(fd), fmt.Sprintf("reclaimed[%d]", i))
	}
	return fs
}

// fdCount counts this process's open fds.
func fdCount(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func readAll(t *testing.T, f *os.File) []byte {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := CodeOf(err); got != code {
		t.Fatalf("error %v: code %q, want %q", err, got, code)
	}
}

func names(ss []Session) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

func mustCreate(t *testing.T, c *Custody, who Caller, name string) *os.File {
	t.Helper()
	_, dup, err := c.Create(who, name, nil)
	if err != nil {
		t.Fatalf("Create %q: %v", name, err)
	}
	t.Cleanup(func() { dup.Close() })
	return dup
}

func equalBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d preserved", what, len(got), len(want))
	}
}

func contains(s []string, x string) bool { return slices.Contains(s, x) }

func mentions(t *testing.T, err error, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

// fdOf is f's descriptor for a PreserveFile, -1 for a nil or closed f.
// f stays referenced by the test (memfd's cleanup), so it is not closed
// under the number.
func fdOf(f *os.File) int {
	if f == nil {
		return -1
	}
	return int(f.Fd())
}
