//go:build linux

package ioctltest_test

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"golang.org/x/sys/unix"
)

func newFake(t *testing.T) *ioctltest.Fake {
	t.Helper()
	f := ioctltest.New()
	t.Cleanup(func() { f.Close() })
	return f
}

func open(t *testing.T, f *ioctltest.Fake) *ioctl.Device {
	t.Helper()
	d, err := ioctl.OpenWith(f, f.Path())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func create(t *testing.T, d *ioctl.Device, name string) *ioctl.Session {
	t.Helper()
	s, err := d.CreateSession(name)
	if err != nil {
		t.Fatalf("create %q: %v", name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func retrieve(t *testing.T, d *ioctl.Device, name string) *ioctl.Session {
	t.Helper()
	s, err := d.RetrieveSession(name)
	if err != nil {
		t.Fatalf("retrieve %q: %v", name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func retrieveFD(t *testing.T, s *ioctl.Session, token uint64) *os.File {
	t.Helper()
	f, err := s.RetrieveFD(token)
	if err != nil {
		t.Fatalf("retrieve fd %#x: %v", token, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func memfd(t *testing.T, data string, flags int) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|flags)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	return f
}

func preserve(t *testing.T, s *ioctl.Session, f *os.File, token uint64) {
	t.Helper()
	if err := s.PreserveFD(int(f.Fd()), token); err != nil {
		t.Fatalf("preserve %#x: %v", token, err)
	}
}

func wantErrno(t *testing.T, what string, err error, want unix.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: %v, want %s", what, err, unix.ErrnoName(want))
	}
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func pos(t *testing.T, f *os.File) int64 {
	t.Helper()
	p, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_CUR)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func readAll(t *testing.T, f *os.File) string {
	t.Helper()
	b := make([]byte, 4096)
	n, _ := f.ReadAt(b, 0)
	return string(b[:n])
}

func TestRebootHandsOverLiveSessions(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	a := create(t, d, "a")
	m := memfd(t, "hello world", unix.MFD_ALLOW_SEALING)
	if _, err := unix.Seek(int(m.Fd()), 3, unix.SEEK_SET); err != nil {
		t.Fatal(err)
	}
	seals := unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(m.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		t.Fatal(err)
	}
	preserve(t, a, m, 1)
	preserve(t, a, memfd(t, "", 0), 2)
	b := create(t, d, "b")
	preserve(t, b, memfd(t, "dropped", 0), 1)
	b.Close()
	create(t, d, "c")

	// The data and position at reboot time are what crosses over.
	if _, err := m.WriteAt([]byte("HELLO"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Seek(int(m.Fd()), 4, unix.SEEK_SET); err != nil {
		t.Fatal(err)
	}

	if err := f.Reboot(); err != nil {
		t.Fatalf("reboot: %v", err)
	}
	if n := f.LiveUpdateNum(); n != 1 {
		t.Errorf("live update number %d, want 1", n)
	}
	want := []ioctltest.SessionState{
		{Name: "a", Incoming: true, Tokens: []uint64{1, 2}},
		{Name: "c", Incoming: true},
	}
	if got := f.Sessions(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("sessions after reboot:\n got %+v\nwant %+v", got, want)
	}

	// The old device fd is still open in this process, but dead.
	d2 := open(t, f)
	ra := retrieve(t, d2, "a")
	if !ra.Retrieved() {
		t.Error("session not marked retrieved")
	}
	if name, err := ra.GetName(); err != nil || name != "a" {
		t.Errorf("get name: %q, %v", name, err)
	}
	r := retrieveFD(t, ra, 1)
	if got := readAll(t, r); got != "HELLO world" {
		t.Errorf("contents %q", got)
	}
	if p := pos(t, r); p != 4 {
		t.Errorf("file position %d, want 4", p)
	}
	if got, err := unix.FcntlInt(r.Fd(), unix.F_GET_SEALS, 0); err != nil || got != seals {
		t.Errorf("seals %#x, %v; want %#x", got, err, seals)
	}
	if fl, err := unix.FcntlInt(r.Fd(), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("retrieved fd flags %#x, %v: want FD_CLOEXEC", fl, err)
	}
	if inode(t, r) == inode(t, m) {
		t.Error("retrieved file is the old inode; the next kernel's is new")
	}
	if got := readAll(t, retrieveFD(t, ra, 2)); got != "" {
		t.Errorf("empty memfd holds %q", got)
	}
}

func TestRetrieveFDTwiceIsTheSameFile(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	preserve(t, create(t, d, "s"), memfd(t, "0123456789", 0), 7)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	s := retrieve(t, open(t, f), "s")
	r1, r2 := retrieveFD(t, s, 7), retrieveFD(t, s, 7)
	if r1.Fd() == r2.Fd() || inode(t, r1) != inode(t, r2) {
		t.Errorf("fds %d and %d, inodes %d and %d: want two fds of one file", r1.Fd(), r2.Fd(), inode(t, r1), inode(t, r2))
	}
	if _, err := unix.Seek(int(r1.Fd()), 6, unix.SEEK_SET); err != nil {
		t.Fatal(err)
	}
	if p := pos(t, r2); p != 6 {
		t.Errorf("position through the second fd %d, want 6 (one struct file)", p)
	}
}

func TestIncomingSessionRules(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	preserve(t, create(t, d, "s"), memfd(t, "x", 0), 1)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	d = open(t, f)
	s := retrieve(t, d, "s")

	_, err := s.RetrieveFD(2)
	wantErrno(t, "retrieve unknown token", err, unix.ENOENT)
	wantErrno(t, "preserve into a retrieved session", s.PreserveFD(int(memfd(t, "", 0).Fd()), 9), unix.EINVAL)
	_, err = d.RetrieveSession("s")
	wantErrno(t, "retrieve the session again", err, unix.EINVAL)
	_, err = d.RetrieveSession("t")
	wantErrno(t, "retrieve an unknown session", err, unix.ENOENT)
	a := ioctl.FinishArg{Size: ioctl.FinishArgSize, Reserved: 1}
	wantErrno(t, "finish with reserved set", s.Ioctl(ioctl.ReqFinish, a.Marshal()), unix.EINVAL)

	// An outgoing session may have the name of an incoming one.
	o := create(t, d, "s")
	if err := o.PreserveFD(int(memfd(t, "", 0).Fd()), 1); err != nil {
		t.Errorf("preserve into the outgoing namesake: %v", err)
	}
}

func TestFinish(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	s := create(t, d, "s")
	preserve(t, s, memfd(t, "one", 0), 1)
	preserve(t, s, memfd(t, "two", 0), 2)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	d = open(t, f)
	s = retrieve(t, d, "s")
	r1 := retrieveFD(t, s, 1)
	if err := s.Finish(); err != nil {
		t.Fatalf("finish: %v", err)
	}
	if got := readAll(t, r1); got != "one" {
		t.Errorf("retrieved file after finish holds %q", got)
	}
	for _, token := range []uint64{1, 2} {
		_, err := s.RetrieveFD(token)
		wantErrno(t, fmt.Sprintf("retrieve %d after finish", token), err, unix.ENOENT)
	}
	if err := s.Finish(); err != nil {
		t.Errorf("second finish: %v", err)
	}
	want := []ioctltest.SessionState{{Name: "s", Incoming: true, Retrieved: true}}
	if got := f.Sessions(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("sessions after finish: %+v", got)
	}
	s.Close()
	if got := f.Sessions(); len(got) != 0 {
		t.Errorf("sessions after close: %+v", got)
	}
	_, err := d.RetrieveSession("s")
	wantErrno(t, "retrieve a finished session", err, unix.ENOENT)
}

func TestClosingRetrievedSessionFinishesIt(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	m := memfd(t, "x", 0)
	preserve(t, create(t, d, "s"), m, 1)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	d = open(t, f)
	s := retrieve(t, d, "s")
	dup, err := unix.FcntlInt(s.File().Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = d.RetrieveSession("s")
	wantErrno(t, "retrieve while a dup is open", err, unix.EINVAL)
	unix.Close(dup)
	_, err = d.RetrieveSession("s")
	wantErrno(t, "retrieve after the last fd closed", err, unix.ENOENT)
}

func TestUnretrievedSessionsDiscardedAtNextReboot(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	preserve(t, create(t, d, "old"), memfd(t, "x", 0), 1)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	d = open(t, f)
	r := retrieve(t, d, "old")
	retrieveFD(t, r, 1) // retrieved, not finished: gone as well
	create(t, d, "new")
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	want := []ioctltest.SessionState{{Name: "new", Incoming: true}}
	if got := f.Sessions(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("sessions: %+v, want %+v", got, want)
	}
	if n := f.LiveUpdateNum(); n != 2 {
		t.Errorf("live update number %d, want 2", n)
	}
	_, err := open(t, f).RetrieveSession("old")
	wantErrno(t, "retrieve a session of two kernels ago", err, unix.ENOENT)
}

// A retrieved file stays preserved until FINISH: it cannot go into a new
// outgoing session before.
func TestRetrievedFileBusyUntilFinish(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	preserve(t, create(t, d, "gen1"), memfd(t, "state", 0), 1)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	d = open(t, f)
	in := retrieve(t, d, "gen1")
	r := retrieveFD(t, in, 1)
	out := create(t, d, "gen2")
	wantErrno(t, "preserve before finish", out.PreserveFD(int(r.Fd()), 1), unix.EBUSY)
	if err := in.Finish(); err != nil {
		t.Fatal(err)
	}
	preserve(t, out, r, 1)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, retrieveFD(t, retrieve(t, open(t, f), "gen2"), 1))
	if got != "state" {
		t.Errorf("after two reboots: %q", got)
	}
}

func TestFDsDeadAfterReboot(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	s := create(t, d, "s")
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	_, err := s.GetName()
	wantErrno(t, "old session", err, unix.EBADF)
	_, err = d.CreateSession("x")
	wantErrno(t, "old device", err, unix.EBADF)

	d2 := open(t, f)
	d.Close()
	s.Close()
	_, err = ioctl.OpenWith(f, f.Path())
	wantErrno(t, "open while the new kernel's device is held", err, unix.EBUSY)
	if _, err := d2.RetrieveSession("s"); err != nil {
		t.Errorf("closing the old session fd touched the incoming session: %v", err)
	}
}

func TestHolders(t *testing.T) {
	f := newFake(t)
	if h := f.Holders(f.Path()); h != nil {
		t.Errorf("holders of a free device: %v", h)
	}
	d := open(t, f)
	h := f.Holders(f.Path())
	if len(h) != 1 || h[0].PID != os.Getpid() || h[0].Comm == "" {
		t.Errorf("holders %v, want this process", h)
	}
	if h := f.Holders("/dev/other"); h != nil {
		t.Errorf("holders of another path: %v", h)
	}
	d.Close()
	if h := f.Holders(f.Path()); h != nil {
		t.Errorf("holders after close: %v", h)
	}
}

func TestMissingDevice(t *testing.T) {
	f := newFake(t)
	_, err := ioctl.OpenWith(f, "/dev/no-liveupdate")
	if !errors.Is(err, ioctl.ErrNotSupported) {
		t.Errorf("open of another path: %v, want ErrNotSupported", err)
	}
}

func TestFailNext(t *testing.T) {
	f := newFake(t)
	f.FailNext(ioctltest.ReqOpen, unix.EIO)
	_, err := ioctl.OpenWith(f, f.Path())
	wantErrno(t, "open", err, unix.EIO)
	d := open(t, f)

	f.FailNext(ioctl.ReqCreateSession, unix.ENOMEM)
	_, err = d.CreateSession("s")
	wantErrno(t, "create", err, unix.ENOMEM)
	s := create(t, d, "s")

	m := memfd(t, "x", 0)
	f.FailNext(ioctl.ReqPreserveFD, unix.ENOSPC)
	f.FailNext(ioctl.ReqPreserveFD, unix.ENOMEM)
	wantErrno(t, "preserve 1", s.PreserveFD(int(m.Fd()), 1), unix.ENOSPC)
	wantErrno(t, "preserve 2", s.PreserveFD(int(m.Fd()), 1), unix.ENOMEM)
	if got := f.Sessions(); len(got) != 1 || len(got[0].Tokens) != 0 {
		t.Errorf("failed preserves left state: %+v", got)
	}
	preserve(t, s, m, 1)

	f.FailNext(ioctltest.ReqReboot, unix.EBUSY)
	wantErrno(t, "reboot", f.Reboot(), unix.EBUSY)
	if n := f.LiveUpdateNum(); n != 0 {
		t.Errorf("failed reboot changed the live update number to %d", n)
	}
	if name, err := s.GetName(); err != nil || name != "s" {
		t.Errorf("session after a failed reboot: %q, %v", name, err)
	}
}

func TestFailRetrieveIsSticky(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	s := create(t, d, "s")
	preserve(t, s, memfd(t, "a", 0), 1)
	preserve(t, s, memfd(t, "b", 0), 2)
	if err := f.Reboot(); err != nil {
		t.Fatal(err)
	}
	if err := f.FailRetrieve("s", 1, unix.EIO); err != nil {
		t.Fatal(err)
	}
	if err := f.FailRetrieve("s", 3, unix.EIO); err == nil {
		t.Error("FailRetrieve of an unknown token succeeded")
	}
	if err := f.FailRetrieve("t", 1, unix.EIO); err == nil {
		t.Error("FailRetrieve of an unknown session succeeded")
	}
	r := retrieve(t, open(t, f), "s")
	for range 2 {
		_, err := r.RetrieveFD(1)
		wantErrno(t, "retrieve a broken file", err, unix.EIO)
	}
	retrieveFD(t, r, 2)
	if err := r.Finish(); err != nil {
		t.Errorf("finish: %v", err)
	}
}

func TestEFBIG(t *testing.T) {
	f := newFake(t)
	s := create(t, open(t, f), "s")
	m := memfd(t, "", 0)
	// One page more than memfd_pin_folios can take; sparse, so free.
	if err := m.Truncate((1<<32 + 1) * int64(os.Getpagesize())); err != nil {
		t.Skipf("truncate: %v", err)
	}
	wantErrno(t, "preserve", s.PreserveFD(int(m.Fd()), 1), unix.EFBIG)
}

func TestPreserveTmpfile(t *testing.T) {
	fd, err := unix.Open("/dev/shm", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Skipf("O_TMPFILE in /dev/shm: %v", err)
	}
	tf := os.NewFile(uintptr(fd), "tmpfile")
	defer tf.Close()
	f := newFake(t)
	s := create(t, open(t, f), "s")
	if err := s.PreserveFD(fd, 1); err != nil {
		t.Errorf("preserve an unlinked tmpfs file: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				s, err := d.CreateSession(fmt.Sprintf("g%d-%d", g, i))
				if err != nil {
					errs <- err
					return
				}
				fd, err := unix.MemfdCreate("c", unix.MFD_CLOEXEC)
				if err != nil {
					errs <- err
					return
				}
				if err := s.PreserveFD(fd, uint64(i)); err != nil {
					errs <- err
				}
				unix.Close(fd)
				if i%2 == 0 {
					s.Close()
				} else {
					t.Cleanup(func() { s.Close() })
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := f.Sessions(); len(got) != 8*25 {
		t.Errorf("%d sessions, want %d", len(got), 8*25)
	}
}

func TestClose(t *testing.T) {
	f := ioctltest.New()
	d, err := ioctl.OpenWith(f, f.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := d.CreateSession("s")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = ioctl.OpenWith(f, f.Path())
	wantErrno(t, "open after Close", err, unix.ENODEV)
	_, err = s.GetName()
	wantErrno(t, "ioctl after Close", err, unix.ENODEV)
	if f.Sessions() != nil || f.Holders(f.Path()) != nil {
		t.Error("state after Close")
	}
}

func TestSessionsOrder(t *testing.T) {
	f := newFake(t)
	d := open(t, f)
	for _, n := range []string{"z", "a", "m"} {
		create(t, d, n)
	}
	var names []string
	for _, s := range f.Sessions() {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"z", "a", "m"}) {
		t.Errorf("sessions %v, want creation order", names)
	}
}
