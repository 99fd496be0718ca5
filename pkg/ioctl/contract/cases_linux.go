//go:build linux

package contract

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/luod/luod/pkg/ioctl"
	"golang.org/x/sys/unix"
)

// Cases is the contract, in the order Run runs it: first the TEST_F cases
// of tools/testing/selftests/liveupdate/liveupdate.c, then the rest.
var Cases = []Case{
	// The kernel selftest, case for case.
	{"basic_open_close", basicOpenClose},
	{"exclusive_open", exclusiveOpen},
	{"create_duplicate_session", createDuplicateSession},
	{"create_distinct_sessions", createDistinctSessions},
	{"preserve_memfd", preserveMemfd},
	{"preserve_multiple_memfds", preserveMultipleMemfds},
	{"preserve_complex_scenario", preserveComplexScenario},
	{"preserve_unsupported_fd", preserveUnsupportedFD},
	{"prevent_double_preservation", preventDoublePreservation},
	{"create_session_no_null_termination", createSessionNoNullTermination},
	{"create_session_empty_name", createSessionEmptyName},
	{"get_session_name", getSessionName},
	{"get_session_name_max_length", getSessionNameMaxLength},
	{"preserve_many_sessions", preserveManySessions},
	{"preserve_many_files", preserveManyFiles},

	// The device.
	{"open_busy_names_holder", openBusyNamesHolder},
	{"reopen_after_close", reopenAfterClose},
	{"device_held_by_dup", deviceHeldByDup},

	// Session lifetime.
	{"session_outlives_device", sessionOutlivesDevice},
	{"session_dropped_on_last_close", sessionDroppedOnLastClose},
	{"session_alive_while_dup_open", sessionAliveWhileDupOpen},
	{"session_alive_while_in_flight", sessionAliveWhileInFlight},
	{"preserved_file_released_with_session", preservedFileReleasedWithSession},
	{"create_session_name_stops_at_nul", createSessionNameStopsAtNUL},
	{"get_name_via_dup", getNameViaDup},
	{"session_fd_close_on_exec", sessionFDCloseOnExec},

	// PRESERVE_FD.
	{"preserve_token_reuse", preserveTokenReuse},
	{"preserve_same_fd_same_token", preserveSameFDSameToken},
	{"preserve_check_order", preserveCheckOrder},
	{"preserve_bad_fd", preserveBadFD},
	{"preserve_o_path", preserveOPath},
	{"preserve_unsupported_files", preserveUnsupportedFiles},
	{"preserve_hugetlb_memfd", preserveHugetlbMemfd},
	{"preserve_sealed_memfd", preserveSealedMemfd},
	{"preserve_token_extremes", preserveTokenExtremes},
	{"prevent_double_preservation_dup", preventDoublePreservationDup},
	{"prevent_double_preservation_reopen", preventDoublePreservationReopen},

	// Incoming-only ioctls and RETRIEVE_SESSION in a kernel with nothing
	// handed over to this test.
	{"retrieve_fd_on_outgoing", retrieveFDOnOutgoing},
	{"finish_on_outgoing", finishOnOutgoing},
	{"retrieve_session_unknown", retrieveSessionUnknown},
	{"retrieve_session_outgoing_name", retrieveSessionOutgoingName},
	{"retrieve_session_raw_names", retrieveSessionRawNames},

	// Request numbers and struct sizes.
	{"get_name_reserved_nonzero", getNameReservedNonzero},
	{"ioctl_nr_out_of_range", ioctlNrOutOfRange},
	{"ioctl_cmd_mismatch", ioctlCmdMismatch},
	{"struct_size_too_small", structSizeTooSmall},
	{"struct_trailing_nonzero", structTrailingNonzero},
	{"struct_larger_zero_tail", structLargerZeroTail},
	{"session_type_checked_before_size", sessionTypeCheckedBeforeSize},
	{"failed_ioctl_writes_nothing", failedIoctlWritesNothing},
	{"ioctl_on_foreign_fd", ioctlOnForeignFD},
}

// --- tools/testing/selftests/liveupdate/liveupdate.c ---

func basicOpenClose(t *testing.T, env Env) {
	d, err := ioctl.OpenWith(env.Backend, env.Path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	mustClose(t, d)
}

func exclusiveOpen(t *testing.T, env Env) {
	env.open(t)
	d2, err := ioctl.OpenWith(env.Backend, env.Path)
	if err == nil {
		d2.Close()
		t.Fatal("second open succeeded, want EBUSY")
	}
	wantOpErr(t, err, unix.EBUSY, "open")
}

func createDuplicateSession(t *testing.T, env Env) {
	d := env.open(t)
	s1 := create(t, d, "duplicate-session-test")
	s2, err := d.CreateSession("duplicate-session-test")
	if err == nil {
		s2.Close()
	}
	wantOpErr(t, err, unix.EEXIST, "CREATE_SESSION", `session "duplicate-session-test"`)
	mustClose(t, s1)
}

func createDistinctSessions(t *testing.T, env Env) {
	d := env.open(t)
	s1 := create(t, d, "distinct-session-1")
	s2 := create(t, d, "distinct-session-2")
	mustClose(t, s1)
	mustClose(t, s2)
}

func preserveMemfd(t *testing.T, env Env) {
	const data = "hello liveupdate"
	d := env.open(t)
	s := create(t, d, "preserve-memfd-test")
	m := memfd(t, "test-memfd", data)
	if err := s.PreserveFD(fd(m), 0x1234); err != nil {
		t.Fatalf("preserve: %v", err)
	}
	mustClose(t, s)
	if got := contents(t, m); got != data {
		t.Errorf("memfd holds %q, want %q", got, data)
	}
	mustClose(t, m)
}

func preserveMultipleMemfds(t *testing.T, env Env) {
	const data1, data2 = "data for memfd one", "data for memfd two"
	d := env.open(t)
	s := create(t, d, "preserve-multi-memfd-test")
	m1 := memfd(t, "test-memfd-1", data1)
	m2 := memfd(t, "test-memfd-2", data2)
	if err := s.PreserveFD(fd(m1), 0xAAAA); err != nil {
		t.Fatalf("preserve 1: %v", err)
	}
	if err := s.PreserveFD(fd(m2), 0xBBBB); err != nil {
		t.Fatalf("preserve 2: %v", err)
	}
	if got := contents(t, m1); got != data1 {
		t.Errorf("memfd 1 holds %q, want %q", got, data1)
	}
	if got := contents(t, m2); got != data2 {
		t.Errorf("memfd 2 holds %q, want %q", got, data2)
	}
	mustClose(t, m1)
	mustClose(t, m2)
	mustClose(t, s)
}

func preserveComplexScenario(t *testing.T, env Env) {
	const data1, data2 = "data for session 1", "data for session 2"
	d := env.open(t)
	s1 := create(t, d, "complex-session-1")
	s2 := create(t, d, "complex-session-2")
	mData1 := memfd(t, "data1", data1)
	mEmpty1 := memfd(t, "empty1", "")
	mData2 := memfd(t, "data2", data2)
	mEmpty2 := memfd(t, "empty2", "")
	for _, p := range []struct {
		s     *ioctl.Session
		f     *os.File
		token uint64
	}{{s1, mData1, 0x1111}, {s1, mEmpty1, 0x2222}, {s2, mData2, 0x3333}, {s2, mEmpty2, 0x4444}} {
		if err := p.s.PreserveFD(fd(p.f), p.token); err != nil {
			t.Fatalf("preserve %#x: %v", p.token, err)
		}
	}
	for f, want := range map[*os.File]string{mData1: data1, mData2: data2, mEmpty1: "", mEmpty2: ""} {
		if got := contents(t, f); got != want {
			t.Errorf("%s holds %q, want %q", f.Name(), got, want)
		}
	}
	for _, c := range []interface{ Close() error }{mData1, mEmpty1, mData2, mEmpty2, s1, s2} {
		mustClose(t, c)
	}
}

func preserveUnsupportedFD(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "unsupported-fd-test")
	null := openFile(t, "/dev/null", unix.O_RDWR)
	err := s.PreserveFD(fd(null), 0xDEAD)
	wantOpErr(t, err, unix.ENOENT, "PRESERVE_FD", `session "unsupported-fd-test"`, "token 0xdead")
	mustClose(t, null)
	mustClose(t, s)
}

func preventDoublePreservation(t *testing.T, env Env) {
	d := env.open(t)
	s1 := create(t, d, "double-preserve-session-1")
	s2 := create(t, d, "double-preserve-session-2")
	m := memfd(t, "test-memfd", "")
	if err := s1.PreserveFD(fd(m), 0x1111); err != nil {
		t.Fatalf("first preserve: %v", err)
	}
	err := s2.PreserveFD(fd(m), 0x2222)
	wantOpErr(t, err, unix.EBUSY, "PRESERVE_FD", `session "double-preserve-session-2"`, "token 0x2222")
	err = s1.PreserveFD(fd(m), 0x3333)
	wantOpErr(t, err, unix.EBUSY, "PRESERVE_FD", `session "double-preserve-session-1"`, "token 0x3333")
	mustClose(t, m)
	mustClose(t, s1)
	mustClose(t, s2)
}

func createSessionNoNullTermination(t *testing.T, env Env) {
	d := env.open(t)
	name := [ioctl.NameLen]byte(bytes.Repeat([]byte{'X'}, ioctl.NameLen))
	s, err := d.CreateSessionRaw(name)
	if err == nil {
		s.Close()
	}
	wantOpErr(t, err, unix.EINVAL, "CREATE_SESSION")
}

func createSessionEmptyName(t *testing.T, env Env) {
	d := env.open(t)
	// CreateSession refuses "" itself; the kernel must refuse it too.
	if _, err := d.CreateSession(""); !errors.Is(err, ioctl.ErrInvalidName) {
		t.Errorf(`CreateSession(""): %v, want ErrInvalidName`, err)
	}
	s, err := d.CreateSessionRaw([ioctl.NameLen]byte{})
	if err == nil {
		s.Close()
	}
	wantOpErr(t, err, unix.EINVAL, "CREATE_SESSION")
}

func getSessionName(t *testing.T, env Env) {
	const name = "get-name-test-session"
	d := env.open(t)
	s := create(t, d, name)
	got, err := s.GetName()
	if err != nil {
		t.Fatalf("get name: %v", err)
	}
	if got != name {
		t.Errorf("name %q, want %q", got, name)
	}
	mustClose(t, s)
}

// sessionFDCloseOnExec: CREATE_SESSION's fd is close-on-exec, so that a
// program luod starts (its metrics exporter) never holds a session, which
// would keep it alive after luod deleted it.
func sessionFDCloseOnExec(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "cloexec-session")
	flags, err := unix.FcntlInt(s.File().Fd(), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("F_GETFD: %v", err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("session fd flags %#x: not close-on-exec", flags)
	}
	mustClose(t, s)
}

func getSessionNameMaxLength(t *testing.T, env Env) {
	name := strings.Repeat("A", ioctl.MaxNameLen)
	d := env.open(t)
	s := create(t, d, name)
	got, err := s.GetName()
	if err != nil {
		t.Fatalf("get name: %v", err)
	}
	if got != name {
		t.Errorf("name %q, want %q", got, name)
	}
	mustClose(t, s)
}

func preserveManySessions(t *testing.T, env Env) {
	const n = 2000
	// The fake spends two fds per session; the kernel one.
	ensureNofile(t, 2*n+64)
	d := env.open(t)
	ss := make([]*ioctl.Session, 0, n)
	defer func() {
		for _, s := range ss {
			s.Close()
		}
	}()
	for i := range n {
		s, err := d.CreateSession(fmt.Sprintf("many-session-%d", i))
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		ss = append(ss, s)
	}
	for i, s := range ss {
		if err := s.Close(); err != nil {
			t.Fatalf("close session %d: %v", i, err)
		}
	}
	ss = nil
}

func preserveManyFiles(t *testing.T, env Env) {
	const n = 500
	// The fake keeps one more fd per preserved file.
	ensureNofile(t, 2*n+64)
	d := env.open(t)
	s := create(t, d, "many-files-test")
	ms := make([]*os.File, 0, n)
	for i := range n {
		m := memfd(t, "test-memfd", "")
		ms = append(ms, m)
		if err := s.PreserveFD(fd(m), uint64(i)); err != nil {
			t.Fatalf("preserve %d: %v", i, err)
		}
	}
	for _, m := range ms {
		mustClose(t, m)
	}
	mustClose(t, s)
}

// --- the device ---

func openBusyNamesHolder(t *testing.T, env Env) {
	env.open(t)
	d2, err := ioctl.OpenWith(env.Backend, env.Path)
	if err == nil {
		d2.Close()
		t.Fatal("second open succeeded, want EBUSY")
	}
	pid := os.Getpid()
	wantOpErr(t, err, unix.EBUSY, "open", fmt.Sprintf("pid %d", pid))
	var e *ioctl.Error
	if !errors.As(err, &e) {
		return
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	found := false
	for _, h := range e.Holders {
		if h.PID == pid {
			found = true
			if c := strings.TrimSpace(string(comm)); c != "" && h.Comm != c {
				t.Errorf("holder comm %q, want %q", h.Comm, c)
			}
		}
	}
	if !found {
		t.Errorf("holders %v do not include this process (pid %d)", e.Holders, pid)
	}
}

func reopenAfterClose(t *testing.T, env Env) {
	for i := range 3 {
		d, err := ioctl.OpenWith(env.Backend, env.Path)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		mustClose(t, d)
	}
}

func deviceHeldByDup(t *testing.T, env Env) {
	d, err := ioctl.OpenWith(env.Backend, env.Path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	dup := dupFile(t, d.File())
	mustClose(t, d)
	d2, err := ioctl.OpenWith(env.Backend, env.Path)
	if err == nil {
		d2.Close()
		t.Fatal("open succeeded while a dup of the device is open, want EBUSY")
	}
	wantOpErr(t, err, unix.EBUSY, "open")
	mustClose(t, dup)
	d3, err := ioctl.OpenWith(env.Backend, env.Path)
	if err != nil {
		t.Fatalf("open after the last fd closed: %v", err)
	}
	mustClose(t, d3)
}

// --- session lifetime ---

func sessionOutlivesDevice(t *testing.T, env Env) {
	const name = "outlives-device"
	d := env.open(t)
	s := create(t, d, name)
	mustClose(t, d)
	if got, err := s.GetName(); err != nil || got != name {
		t.Errorf("get name with the device closed: %q, %v", got, err)
	}
	m := memfd(t, "m", "x")
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Errorf("preserve with the device closed: %v", err)
	}
	d2 := env.open(t)
	s2, err := d2.CreateSession(name)
	if err == nil {
		s2.Close()
	}
	wantOpErr(t, err, unix.EEXIST, "CREATE_SESSION", `session "outlives-device"`)
	mustClose(t, s)
}

func sessionDroppedOnLastClose(t *testing.T, env Env) {
	const name = "dropped-on-close"
	d := env.open(t)
	s := create(t, d, name)
	mustClose(t, s)
	s2 := create(t, d, name)
	mustClose(t, s2)
}

func sessionAliveWhileDupOpen(t *testing.T, env Env) {
	const name = "alive-while-dup"
	d := env.open(t)
	s := create(t, d, name)
	dup := dupFile(t, s.File())
	mustClose(t, s)
	s2, err := d.CreateSession(name)
	if err == nil {
		s2.Close()
	}
	wantOpErr(t, err, unix.EEXIST, "CREATE_SESSION", `session "alive-while-dup"`)
	if got, err := ioctl.NewSession(env.Backend, dup, name, false).GetName(); err != nil || got != name {
		t.Errorf("get name through the dup: %q, %v", got, err)
	}
	mustClose(t, dup)
	s3 := create(t, d, name)
	mustClose(t, s3)
}

// sessionAliveWhileInFlight passes the only fd of a session over
// SCM_RIGHTS: while in flight it keeps the session alive.
func sessionAliveWhileInFlight(t *testing.T, env Env) {
	const name = "alive-in-flight"
	d := env.open(t)
	s := create(t, d, name)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	a, b := os.NewFile(uintptr(sp[0]), "a"), os.NewFile(uintptr(sp[1]), "b")
	t.Cleanup(func() { a.Close(); b.Close() })
	if err := unix.Sendmsg(sp[0], []byte{0}, unix.UnixRights(fd(s.File())), nil, 0); err != nil {
		t.Fatalf("sendmsg: %v", err)
	}
	mustClose(t, s)
	s2, err := d.CreateSession(name)
	if err == nil {
		s2.Close()
	}
	wantOpErr(t, err, unix.EEXIST, "CREATE_SESSION", `session "alive-in-flight"`)

	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(sp[1], make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("recvmsg: %v", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %v, %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("unix rights: %v, %v", fds, err)
	}
	got := adopt(t, int32(fds[0]), "received")
	if n, err := ioctl.NewSession(env.Backend, got, name, false).GetName(); err != nil || n != name {
		t.Errorf("get name through the received fd: %q, %v", n, err)
	}
	mustClose(t, got)
	s3 := create(t, d, name)
	mustClose(t, s3)
}

func preservedFileReleasedWithSession(t *testing.T, env Env) {
	d := env.open(t)
	m := memfd(t, "m", "data")
	s1 := create(t, d, "release-files-1")
	if err := s1.PreserveFD(fd(m), 7); err != nil {
		t.Fatalf("preserve in 1: %v", err)
	}
	s2 := create(t, d, "release-files-2")
	wantOpErr(t, s2.PreserveFD(fd(m), 7), unix.EBUSY, "PRESERVE_FD")
	mustClose(t, s1)
	if err := s2.PreserveFD(fd(m), 7); err != nil {
		t.Errorf("preserve after the first session closed: %v", err)
	}
	mustClose(t, s2)
}

func createSessionNameStopsAtNUL(t *testing.T, env Env) {
	d := env.open(t)
	s, err := d.CreateSessionRaw(nameField("abc\x00junk"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if got, err := s.GetName(); err != nil || got != "abc" {
		t.Errorf("get name: %q, %v; want \"abc\"", got, err)
	}
	s2, err := d.CreateSession("abc")
	if err == nil {
		s2.Close()
	}
	wantOpErr(t, err, unix.EEXIST, "CREATE_SESSION", `session "abc"`)
	mustClose(t, s)
}

func getNameViaDup(t *testing.T, env Env) {
	const name = "get-name-dup"
	d := env.open(t)
	s := create(t, d, name)
	dup := dupFile(t, s.File())
	if got, err := ioctl.NewSession(env.Backend, dup, "whatever", false).GetName(); err != nil || got != name {
		t.Errorf("get name through a dup: %q, %v", got, err)
	}
	mustClose(t, dup)
	mustClose(t, s)
}

// --- PRESERVE_FD ---

func preserveTokenReuse(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "token-reuse")
	m1, m2 := memfd(t, "m1", "1"), memfd(t, "m2", "2")
	if err := s.PreserveFD(fd(m1), 0x42); err != nil {
		t.Fatalf("preserve: %v", err)
	}
	wantOpErr(t, s.PreserveFD(fd(m2), 0x42), unix.EEXIST, "PRESERVE_FD", `session "token-reuse"`, "token 0x42")
	// The same token in another session is fine.
	s2 := create(t, d, "token-reuse-2")
	if err := s2.PreserveFD(fd(m2), 0x42); err != nil {
		t.Errorf("same token in another session: %v", err)
	}
	mustClose(t, s)
	mustClose(t, s2)
}

// preserveSameFDSameToken: the token check comes before the busy check.
func preserveSameFDSameToken(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "same-fd-same-token")
	m := memfd(t, "m", "")
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Fatalf("preserve: %v", err)
	}
	wantOpErr(t, s.PreserveFD(fd(m), 1), unix.EEXIST, "PRESERVE_FD", "token 0x1")
	mustClose(t, s)
}

// preserveCheckOrder follows luo_preserve_file: token, fget, handler, busy.
func preserveCheckOrder(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "check-order")
	m := memfd(t, "m", "")
	null := openFile(t, "/dev/null", unix.O_RDWR)
	nullPath := openFile(t, "/dev/null", unix.O_PATH)
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Fatalf("preserve: %v", err)
	}
	for _, c := range []struct {
		what  string
		fd    int
		token uint64
		want  unix.Errno
	}{
		{"bad fd, used token", -1, 1, unix.EEXIST},
		{"/dev/null, used token", fd(null), 1, unix.EEXIST},
		{"O_PATH fd, used token", fd(nullPath), 1, unix.EEXIST},
		{"bad fd", -1, 2, unix.EBADF},
		{"O_PATH /dev/null", fd(nullPath), 2, unix.EBADF},
		{"/dev/null", fd(null), 2, unix.ENOENT},
		{"preserved memfd", fd(m), 2, unix.EBUSY},
	} {
		wantErrno(t, c.what, s.PreserveFD(c.fd, c.token), c.want)
	}
	mustClose(t, s)
}

func preserveBadFD(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "bad-fd")
	for _, n := range []int{-1, -100} {
		wantOpErr(t, s.PreserveFD(n, 5), unix.EBADF, "PRESERVE_FD", `session "bad-fd"`, "token 0x5")
	}
	// Far beyond any fd table.
	wantOpErr(t, s.PreserveFD(0x7ffffff0, 6), unix.EBADF, "PRESERVE_FD", `session "bad-fd"`, "token 0x6", "fd 2147483632")
	mustClose(t, s)
}

// preserveOPath: fget refuses O_PATH files, so even a memfd opened with
// O_PATH is a bad fd.
func preserveOPath(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "o-path")
	m := memfd(t, "m", "")
	p, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd(m)), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("open /proc/self/fd with O_PATH: %v", err)
	}
	pf := os.NewFile(uintptr(p), "o-path memfd")
	t.Cleanup(func() { pf.Close() })
	wantOpErr(t, s.PreserveFD(p, 1), unix.EBADF, "PRESERVE_FD")
	// The memfd itself is not taken by the failure.
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Errorf("preserve the memfd: %v", err)
	}
	mustClose(t, s)
}

// preserveUnsupportedFiles: only the memfd handler exists.
func preserveUnsupportedFiles(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "unsupported-files")
	other := create(t, d, "unsupported-files-other")
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatalf("pipe: %v", err)
	}
	r, w := os.NewFile(uintptr(p[0]), "pipe r"), os.NewFile(uintptr(p[1]), "pipe w")
	t.Cleanup(func() { r.Close(); w.Close() })
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("executable: %v", err)
	}
	// A linked file, on whatever filesystem the test binary is.
	linked := openFile(t, exe, unix.O_RDONLY)
	for _, c := range []struct {
		what string
		f    *os.File
	}{
		{"pipe read end", r},
		{"pipe write end", w},
		{"the device", d.File()},
		{"this session", s.File()},
		{"another session", other.File()},
		{"a linked regular file", linked},
	} {
		wantErrno(t, c.what, s.PreserveFD(fd(c.f), 9), unix.ENOENT)
	}
	mustClose(t, other)
	mustClose(t, s)
}

// preserveHugetlbMemfd: a hugetlb memfd is not shmem.
func preserveHugetlbMemfd(t *testing.T, env Env) {
	hfd, err := unix.MemfdCreate("huge", unix.MFD_CLOEXEC|unix.MFD_HUGETLB)
	if err != nil {
		t.Skipf("memfd_create(MFD_HUGETLB): %v", err)
	}
	h := os.NewFile(uintptr(hfd), "memfd:huge")
	t.Cleanup(func() { h.Close() })
	d := env.open(t)
	s := create(t, d, "hugetlb")
	wantOpErr(t, s.PreserveFD(hfd, 1), unix.ENOENT, "PRESERVE_FD")
	mustClose(t, s)
	mustClose(t, h)
}

// preserveSealedMemfd: every seal the memfd handler knows can be preserved.
func preserveSealedMemfd(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "sealed")
	m := memfdFlags(t, "sealed", "sealed data", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_EXEC | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(m.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		t.Skipf("F_ADD_SEALS %#x: %v", seals, err)
	}
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Errorf("preserve a sealed memfd: %v", err)
	}
	// So can a memfd that does not allow sealing (it has F_SEAL_SEAL).
	m2 := memfd(t, "unsealable", "x")
	if err := s.PreserveFD(fd(m2), 2); err != nil {
		t.Errorf("preserve a memfd without MFD_ALLOW_SEALING: %v", err)
	}
	mustClose(t, s)
}

func preserveTokenExtremes(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "token-extremes")
	m0, mMax, m3 := memfd(t, "0", ""), memfd(t, "max", ""), memfd(t, "3", "")
	if err := s.PreserveFD(fd(m0), 0); err != nil {
		t.Errorf("token 0: %v", err)
	}
	if err := s.PreserveFD(fd(mMax), ^uint64(0)); err != nil {
		t.Errorf("token 2^64-1: %v", err)
	}
	wantOpErr(t, s.PreserveFD(fd(m3), 0), unix.EEXIST, "PRESERVE_FD", "token 0x0")
	wantOpErr(t, s.PreserveFD(fd(m3), ^uint64(0)), unix.EEXIST, "PRESERVE_FD", "token 0xffffffffffffffff")
	mustClose(t, s)
}

// preventDoublePreservationDup: a dup is the same file.
func preventDoublePreservationDup(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "double-dup")
	m := memfd(t, "m", "")
	dup := dupFile(t, m)
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Fatalf("preserve: %v", err)
	}
	wantOpErr(t, s.PreserveFD(fd(dup), 2), unix.EBUSY, "PRESERVE_FD", "token 0x2")
	mustClose(t, s)
}

// preventDoublePreservationReopen: the memfd handler's get_id is the
// inode, so a second open file of the same memfd is busy too.
func preventDoublePreservationReopen(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "double-reopen")
	m := memfd(t, "m", "")
	rfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd(m)), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("reopen through /proc/self/fd: %v", err)
	}
	re := os.NewFile(uintptr(rfd), "reopened memfd")
	t.Cleanup(func() { re.Close() })
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Fatalf("preserve: %v", err)
	}
	wantOpErr(t, s.PreserveFD(rfd, 2), unix.EBUSY, "PRESERVE_FD", "token 0x2")
	mustClose(t, s)
}

// --- incoming-only ioctls, RETRIEVE_SESSION ---

func retrieveFDOnOutgoing(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "retrieve-fd-outgoing")
	m := memfd(t, "m", "")
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Fatalf("preserve: %v", err)
	}
	for _, token := range []uint64{1, 2} {
		f, err := s.RetrieveFD(token)
		if err == nil {
			f.Close()
		}
		wantOpErr(t, err, unix.EINVAL, "RETRIEVE_FD", `session "retrieve-fd-outgoing"`, fmt.Sprintf("token %#x", token))
	}
	mustClose(t, s)
}

func finishOnOutgoing(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "finish-outgoing")
	wantOpErr(t, s.Finish(), unix.EINVAL, "FINISH", `session "finish-outgoing"`)
	// The session is untouched: it still refuses a duplicate name.
	s2, err := d.CreateSession("finish-outgoing")
	if err == nil {
		s2.Close()
	}
	wantOpErr(t, err, unix.EEXIST, "CREATE_SESSION")
	mustClose(t, s)
}

func retrieveSessionUnknown(t *testing.T, env Env) {
	d := env.open(t)
	s, err := d.RetrieveSession("luod-contract-no-such-session")
	if err == nil {
		s.Close()
	}
	wantOpErr(t, err, unix.ENOENT, "RETRIEVE_SESSION", `session "luod-contract-no-such-session"`)
}

// retrieveSessionOutgoingName: outgoing and incoming sessions are separate
// lists; RETRIEVE_SESSION looks only at what the previous kernel handed
// over.
func retrieveSessionOutgoingName(t *testing.T, env Env) {
	const name = "luod-contract-outgoing-only"
	d := env.open(t)
	s := create(t, d, name)
	r, err := d.RetrieveSession(name)
	if err == nil {
		r.Close()
	}
	wantOpErr(t, err, unix.ENOENT, "RETRIEVE_SESSION", `session "luod-contract-outgoing-only"`)
	mustClose(t, s)
}

// retrieveSessionRawNames: RETRIEVE_SESSION does not check the name's
// length; names no session can have just match nothing.
func retrieveSessionRawNames(t *testing.T, env Env) {
	d := env.open(t)
	for what, name := range map[string][ioctl.NameLen]byte{
		"empty name":          {},
		"name without a NUL":  [ioctl.NameLen]byte(bytes.Repeat([]byte{'X'}, ioctl.NameLen)),
		"name after a NUL":    nameField("\x00luod-contract"),
		"63-byte unused name": nameField(strings.Repeat("Z", ioctl.MaxNameLen)),
	} {
		a := ioctl.SessionArg{Size: ioctl.SessionArgSize, FD: -1, Name: name}
		wantErrno(t, what, devIoctl(t, d, ioctl.ReqRetrieveSession, a.Marshal()), unix.ENOENT)
	}
}

// --- request numbers and struct sizes ---

func getNameReservedNonzero(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "reserved")
	for _, r := range []uint32{1, 0x80000000} {
		a := ioctl.GetNameArg{Size: ioctl.GetNameArgSize, Reserved: r}
		wantErrno(t, fmt.Sprintf("reserved %#x", r), s.Ioctl(ioctl.ReqGetName, a.Marshal()), unix.EINVAL)
	}
	mustClose(t, s)
}

// ioctlNrOutOfRange: an nr outside the table gives EINVAL, whatever the
// rest of the request number and the argument say.
func ioctlNrOutOfRange(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "nr-range")
	arg := sessionArg("nr-range-new")
	for _, req := range []uint{
		ioc(iocNone, ioctl.IoctlType, 0x02, 0),
		ioc(iocNone, ioctl.IoctlType, 0x3f, 0),
		ioc(iocNone, ioctl.IoctlType, ioctl.CmdPreserveFD, 0),
		ioc(iocNone, ioctl.IoctlType, ioctl.CmdGetName, 0),
		ioc(iocNone, ioctl.IoctlType, 0xff, 0),
		ioc(iocNone, 0xBB, 0x02, 0),
		ioc(iocRead|iocWrite, ioctl.IoctlType, 0x02, ioctl.SessionArgSize),
	} {
		wantErrno(t, fmt.Sprintf("device request %#x", req), devIoctl(t, d, req, bytes.Clone(arg)), unix.EINVAL)
	}
	garg := getNameArg()
	for _, req := range []uint{
		ioc(iocNone, ioctl.IoctlType, ioctl.CmdCreateSession, 0),
		ioc(iocNone, ioctl.IoctlType, ioctl.CmdRetrieveSession, 0),
		ioc(iocNone, ioctl.IoctlType, 0x3f, 0),
		ioc(iocNone, ioctl.IoctlType, 0x44, 0),
		ioc(iocNone, ioctl.IoctlType, 0xff, 0),
		ioc(iocNone, 0xBB, 0x44, 0),
	} {
		wantErrno(t, fmt.Sprintf("session request %#x", req), s.Ioctl(req, bytes.Clone(garg)), unix.EINVAL)
	}
	mustClose(t, s)
	// Nothing was created.
	mustClose(t, create(t, d, "nr-range-new"))
}

// ioctlCmdMismatch: a known nr in a request number that differs from the
// kernel's (other type, direction or size bits) gives ENOTTY, before the
// size and session type checks.
func ioctlCmdMismatch(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "cmd-mismatch")
	arg := sessionArg("cmd-mismatch-new")
	for _, req := range []uint{
		ioc(iocNone, 0xBB, ioctl.CmdCreateSession, 0),
		ioc(iocNone, 0xBB, ioctl.CmdRetrieveSession, 0),
		ioc(iocRead|iocWrite, ioctl.IoctlType, ioctl.CmdCreateSession, ioctl.SessionArgSize),
		ioc(iocWrite, ioctl.IoctlType, ioctl.CmdRetrieveSession, ioctl.SessionArgSize),
	} {
		wantErrno(t, fmt.Sprintf("device request %#x", req), devIoctl(t, d, req, bytes.Clone(arg)), unix.ENOTTY)
		wantErrno(t, fmt.Sprintf("device request %#x, size 0", req), devIoctl(t, d, req, resize(arg, len(arg), 0)), unix.ENOTTY)
	}
	m := memfd(t, "m", "")
	for _, c := range []struct {
		req uint
		arg []byte
	}{
		{ioc(iocNone, 0xBB, ioctl.CmdGetName, 0), getNameArg()},
		{ioc(iocRead, ioctl.IoctlType, ioctl.CmdGetName, ioctl.GetNameArgSize), getNameArg()},
		{ioc(iocWrite, ioctl.IoctlType, ioctl.CmdPreserveFD, ioctl.FDArgSize), fdArg(fd(m), 1)},
		// FINISH and RETRIEVE_FD are refused on an outgoing session with
		// EINVAL, but only after the request number is checked.
		{ioc(iocRead, ioctl.IoctlType, ioctl.CmdFinish, ioctl.FinishArgSize), finishArg()},
		{ioc(iocNone, 0xBB, ioctl.CmdRetrieveFD, 0), fdArg(-1, 1)},
	} {
		wantErrno(t, fmt.Sprintf("session request %#x", c.req), s.Ioctl(c.req, c.arg), unix.ENOTTY)
	}
	// Nothing happened.
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Errorf("preserve after the refused requests: %v", err)
	}
	mustClose(t, s)
	mustClose(t, create(t, d, "cmd-mismatch-new"))
}

func structSizeTooSmall(t *testing.T, env Env) {
	d := env.open(t)
	arg := sessionArg("too-small")
	for _, size := range []uint32{0, 4, 8, ioctl.SessionArgSize - 1} {
		wantErrno(t, fmt.Sprintf("CREATE_SESSION size %d", size), devIoctl(t, d, ioctl.ReqCreateSession, resize(arg, len(arg), size)), unix.EINVAL)
		wantErrno(t, fmt.Sprintf("RETRIEVE_SESSION size %d", size), devIoctl(t, d, ioctl.ReqRetrieveSession, resize(arg, len(arg), size)), unix.EINVAL)
	}
	wantErrno(t, "CREATE_SESSION without an argument", devIoctl(t, d, ioctl.ReqCreateSession, nil), unix.EINVAL)

	s := create(t, d, "too-small-session")
	m := memfd(t, "m", "")
	parg := fdArg(fd(m), 1)
	for _, size := range []uint32{0, 4, 8, ioctl.FDArgSize - 1} {
		wantErrno(t, fmt.Sprintf("PRESERVE_FD size %d", size), s.Ioctl(ioctl.ReqPreserveFD, resize(parg, len(parg), size)), unix.EINVAL)
	}
	garg := getNameArg()
	for _, size := range []uint32{0, 8, ioctl.GetNameArgSize - 1} {
		wantErrno(t, fmt.Sprintf("GET_NAME size %d", size), s.Ioctl(ioctl.ReqGetName, resize(garg, len(garg), size)), unix.EINVAL)
	}
	wantErrno(t, "GET_NAME without an argument", s.Ioctl(ioctl.ReqGetName, nil), unix.EINVAL)

	// Nothing was created or preserved.
	mustClose(t, create(t, d, "too-small"))
	if err := s.PreserveFD(fd(m), 1); err != nil {
		t.Errorf("preserve after the refused requests: %v", err)
	}
	mustClose(t, s)
}

// structTrailingNonzero: copy_struct_from_user refuses non-zero bytes past
// the struct with E2BIG, before the ioctl looks at any field.
func structTrailingNonzero(t *testing.T, env Env) {
	d := env.open(t)
	arg := sessionArg("trailing")
	for _, total := range []int{ioctl.SessionArgSize + 1, ioctl.SessionArgSize + 8, 4096} {
		b := resize(arg, total, uint32(total))
		b[total-1] = 1
		wantErrno(t, fmt.Sprintf("CREATE_SESSION size %d", total), devIoctl(t, d, ioctl.ReqCreateSession, b), unix.E2BIG)
		b = resize(sessionArg("luod-contract-no-such-session"), total, uint32(total))
		b[total-1] = 1
		wantErrno(t, fmt.Sprintf("RETRIEVE_SESSION size %d", total), devIoctl(t, d, ioctl.ReqRetrieveSession, b), unix.E2BIG)
	}
	// Even an invalid name is not looked at.
	b := resize(sessionArg(""), 80, 80)
	b[ioctl.SessionArgSize] = 0xff
	wantErrno(t, "CREATE_SESSION with an empty name", devIoctl(t, d, ioctl.ReqCreateSession, b), unix.E2BIG)

	s := create(t, d, "trailing-session")
	b = resize(fdArg(-1, 1), 24, 24)
	b[20] = 1
	wantErrno(t, "PRESERVE_FD of a bad fd", s.Ioctl(ioctl.ReqPreserveFD, b), unix.E2BIG)
	b = resize(getNameArg(), 80, 80)
	b[79] = 1
	wantErrno(t, "GET_NAME", s.Ioctl(ioctl.ReqGetName, b), unix.E2BIG)

	mustClose(t, create(t, d, "trailing"))
	mustClose(t, s)
}

// structLargerZeroTail: a larger struct is fine when the part the kernel
// does not know is zero.
func structLargerZeroTail(t *testing.T, env Env) {
	const name = "larger-struct"
	d := env.open(t)
	b := resize(sessionArg(name), 128, 128)
	if err := d.Ioctl(ioctl.ReqCreateSession, b); err != nil {
		t.Fatalf("CREATE_SESSION size 128: %v", err)
	}
	f := adopt(t, int32(ne.Uint32(b[4:])), name)
	s := ioctl.NewSession(env.Backend, f, name, false)

	g := resize(getNameArg(), 128, 128)
	if err := s.Ioctl(ioctl.ReqGetName, g); err != nil {
		t.Fatalf("GET_NAME size 128: %v", err)
	}
	if got := ioctl.CString(g[8:72]); got != name {
		t.Errorf("GET_NAME size 128: name %q, want %q", got, name)
	}
	if !bytes.Equal(g[72:], make([]byte, 128-72)) {
		t.Errorf("GET_NAME size 128 wrote past the struct: % x", g[72:])
	}

	m := memfd(t, "m", "")
	if err := s.Ioctl(ioctl.ReqPreserveFD, resize(fdArg(fd(m), 3), 64, 64)); err != nil {
		t.Errorf("PRESERVE_FD size 64: %v", err)
	}
	wantOpErr(t, s.PreserveFD(fd(m), 4), unix.EBUSY, "PRESERVE_FD")

	r := resize(sessionArg("luod-contract-no-such-session"), 128, 128)
	wantErrno(t, "RETRIEVE_SESSION size 128", devIoctl(t, d, ioctl.ReqRetrieveSession, r), unix.ENOENT)
	mustClose(t, f)
}

// sessionTypeCheckedBeforeSize: luo_session_ioctl checks the session type
// before the size and the trailing bytes.
func sessionTypeCheckedBeforeSize(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "type-before-size")
	finishTail := resize(finishArg(), 16, 16)
	finishTail[12] = 1
	retrieveTail := resize(fdArg(-1, 1), 24, 24)
	retrieveTail[20] = 1
	for _, c := range []struct {
		what string
		req  uint
		arg  []byte
	}{
		{"FINISH size 0", ioctl.ReqFinish, resize(finishArg(), ioctl.FinishArgSize, 0)},
		{"FINISH with a non-zero tail", ioctl.ReqFinish, finishTail},
		{"FINISH without an argument", ioctl.ReqFinish, nil},
		{"RETRIEVE_FD size 0", ioctl.ReqRetrieveFD, resize(fdArg(-1, 1), ioctl.FDArgSize, 0)},
		{"RETRIEVE_FD with a non-zero tail", ioctl.ReqRetrieveFD, retrieveTail},
	} {
		wantErrno(t, c.what, s.Ioctl(c.req, c.arg), unix.EINVAL)
	}
	mustClose(t, s)
}

// failedIoctlWritesNothing: the kernel works on a copy and writes it back
// only on success.
func failedIoctlWritesNothing(t *testing.T, env Env) {
	d := env.open(t)
	s := create(t, d, "writes-nothing")
	for what, c := range map[string]struct {
		f   func([]byte) error
		arg []byte
	}{
		"CREATE_SESSION of a taken name": {call(t, d, ioctl.ReqCreateSession), (&ioctl.SessionArg{Size: ioctl.SessionArgSize, FD: 0x5a5a5a5a, Name: nameField("writes-nothing")}).Marshal()},
		"RETRIEVE_SESSION of no session": {call(t, d, ioctl.ReqRetrieveSession), (&ioctl.SessionArg{Size: ioctl.SessionArgSize, FD: 0x5a5a5a5a, Name: nameField("luod-contract-no-such-session")}).Marshal()},
		"GET_NAME with reserved set":     {call(t, s, ioctl.ReqGetName), (&ioctl.GetNameArg{Size: ioctl.GetNameArgSize, Reserved: 1, Name: [ioctl.NameLen]byte(bytes.Repeat([]byte{0xaa}, ioctl.NameLen))}).Marshal()},
		"PRESERVE_FD of a bad fd":        {call(t, s, ioctl.ReqPreserveFD), fdArg(-1, 0x77)},
	} {
		before := bytes.Clone(c.arg)
		if err := c.f(c.arg); err == nil {
			t.Errorf("%s: succeeded", what)
		}
		if !bytes.Equal(before, c.arg) {
			t.Errorf("%s: argument changed from % x to % x", what, before, c.arg)
		}
	}
	mustClose(t, s)
}

type ioctler interface{ Ioctl(uint, []byte) error }

func call(t *testing.T, x ioctler, req uint) func([]byte) error {
	if d, ok := x.(*ioctl.Device); ok {
		return func(b []byte) error { return devIoctl(t, d, req, b) }
	}
	return func(b []byte) error { return x.Ioctl(req, b) }
}

// ioctlOnForeignFD: files that are not LUO's have no such ioctl.
func ioctlOnForeignFD(t *testing.T, env Env) {
	m := memfd(t, "m", "")
	null := openFile(t, "/dev/null", unix.O_RDWR)
	for _, f := range []*os.File{m, null} {
		_, err := ioctl.NewSession(env.Backend, f, "foreign", false).GetName()
		wantOpErr(t, err, unix.ENOTTY, "GET_NAME", `session "foreign"`)
	}
}
