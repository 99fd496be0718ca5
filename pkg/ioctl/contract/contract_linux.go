//go:build linux

package contract

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/luod/luod/pkg/ioctl"
	"golang.org/x/sys/unix"
)

// Env is what the cases run against.
type Env struct {
	// Backend reaches the kernel: ioctl.System or a fake.
	Backend ioctl.Backend
	// Path is the device to open, normally ioctl.DevicePath.
	Path string
	// Check, if set, runs after each case has cleaned up, to find what it
	// left behind (the fake can list its sessions; the kernel cannot).
	Check func(t *testing.T)
}

// Case is one contract test.
type Case struct {
	Name string
	Run  func(t *testing.T, env Env)
}

// Run runs every case of Cases as a subtest of t, in order, all on the
// same backend. After each case the device must be free again.
func Run(t *testing.T, env Env) {
	for _, c := range Cases {
		t.Run(c.Name, func(t *testing.T) { c.Run(t, env) })
		d, err := ioctl.OpenWith(env.Backend, env.Path)
		if err != nil {
			t.Fatalf("after %s: device not free: %v", c.Name, err)
		}
		d.Close()
		if env.Check != nil {
			env.Check(t)
		}
	}
}

var ne = binary.NativeEndian

// open opens the device until the case ends.
func (e Env) open(t *testing.T) *ioctl.Device {
	t.Helper()
	d, err := ioctl.OpenWith(e.Backend, e.Path)
	if err != nil {
		t.Fatalf("open %s: %v", e.Path, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// create creates an outgoing session, closed when the case ends.
func create(t *testing.T, d *ioctl.Device, name string) *ioctl.Session {
	t.Helper()
	s, err := d.CreateSession(name)
	if err != nil {
		t.Fatalf("create session %q: %v", name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// mustClose closes c now, as the selftest's ASSERT_EQ(close(fd), 0) does.
func mustClose(t *testing.T, c interface{ Close() error }) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// adopt wraps an fd the kernel returned in a raw ioctl.
func adopt(t *testing.T, fd int32, name string) *os.File {
	t.Helper()
	if fd < 0 {
		t.Fatalf("kernel returned fd %d", fd)
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

// devIoctl issues a raw request on the device. Should it make a session
// where the case expects a failure, the session fd is closed when the case
// ends rather than leaked.
func devIoctl(t *testing.T, d *ioctl.Device, req uint, arg []byte) error {
	t.Helper()
	var before uint32
	if len(arg) >= 8 {
		before = ne.Uint32(arg[4:])
	}
	err := d.Ioctl(req, arg)
	if err == nil && len(arg) >= 8 {
		if fd := int32(ne.Uint32(arg[4:])); fd >= 0 && uint32(fd) != before {
			adopt(t, fd, "unexpected session")
		}
	}
	return err
}

// memfd creates a memfd holding data.
func memfd(t *testing.T, name, data string) *os.File {
	t.Helper()
	return memfdFlags(t, name, data, unix.MFD_CLOEXEC)
}

func memfdFlags(t *testing.T, name, data string, flags int) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(name, flags)
	if err != nil {
		t.Fatalf("memfd_create %q: %v", name, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	t.Cleanup(func() { f.Close() })
	if data != "" {
		if _, err := f.WriteString(data); err != nil {
			t.Fatalf("write memfd: %v", err)
		}
	}
	return f
}

// openFile opens path until the case ends.
func openFile(t *testing.T, path string, flags int) *os.File {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	t.Cleanup(func() { f.Close() })
	return f
}

// dupFile duplicates f (close-on-exec) until the case ends.
func dupFile(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("dup: %v", err)
	}
	d := os.NewFile(uintptr(fd), f.Name())
	t.Cleanup(func() { d.Close() })
	return d
}

func fd(f *os.File) int { return int(f.Fd()) }

// contents reads a whole file from offset 0.
func contents(t *testing.T, f *os.File) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read %s: %v", f.Name(), err)
	}
	return string(buf[:n])
}

// ensureNofile raises RLIMIT_NOFILE to n for the rest of the case, as the
// selftest's luo_ensure_nofile_limit does, and skips when not allowed to.
func ensureNofile(t *testing.T, n uint64) {
	t.Helper()
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if rl.Cur >= n {
		return
	}
	old := rl
	rl.Cur = n
	if rl.Max < n {
		rl.Max = n
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("RLIMIT_NOFILE is %d/%d and cannot be raised to %d: %v", old.Cur, old.Max, n, err)
		}
		t.Fatalf("setrlimit: %v", err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
}

func errnoName(e unix.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return e.Error()
}

// wantErrno checks a raw ioctl's result.
func wantErrno(t *testing.T, what string, err error, want unix.Errno) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: succeeded, want %s", what, errnoName(want))
	case !errors.Is(err, want):
		t.Errorf("%s: %v, want %s", what, err, errnoName(want))
	}
}

// wantOpErr checks that err is an *ioctl.Error for op with errno want, and
// that its message holds every part (session name, token, ...).
func wantOpErr(t *testing.T, err error, want unix.Errno, op string, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %s", op, errnoName(want))
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %s", op, err, errnoName(want))
	}
	var e *ioctl.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: %T %v is not an *ioctl.Error", op, err, err)
	}
	if e.Op != op {
		t.Errorf("Error.Op = %q, want %q", e.Op, op)
	}
	msg := err.Error()
	for _, p := range append([]string{op, errnoName(want)}, parts...) {
		if !strings.Contains(msg, p) {
			t.Errorf("error %q does not mention %q", msg, p)
		}
	}
}

// Request numbers in the generic _IOC layout, used to build requests the
// kernel must refuse.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, typ, nr, size uint) uint { return dir<<30 | size<<16 | typ<<8 | nr }

// resize puts the struct b in a buffer of total bytes, with size in its
// leading size field.
func resize(b []byte, total int, size uint32) []byte {
	out := make([]byte, total)
	copy(out, b)
	ne.PutUint32(out, size)
	return out
}

func nameField(s string) [ioctl.NameLen]byte {
	var n [ioctl.NameLen]byte
	copy(n[:], s)
	return n
}

func sessionArg(name string) []byte {
	a := ioctl.SessionArg{Size: ioctl.SessionArgSize, FD: -1, Name: nameField(name)}
	return a.Marshal()
}

func fdArg(fd int, token uint64) []byte {
	a := ioctl.FDArg{Size: ioctl.FDArgSize, FD: int32(fd), Token: token}
	return a.Marshal()
}

func finishArg() []byte {
	a := ioctl.FinishArg{Size: ioctl.FinishArgSize}
	return a.Marshal()
}

func getNameArg() []byte {
	a := ioctl.GetNameArg{Size: ioctl.GetNameArgSize}
	return a.Marshal()
}
