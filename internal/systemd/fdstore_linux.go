//go:build linux

package systemd

import (
	"errors"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// send writes state as one datagram to $NOTIFY_SOCKET, with f attached as
// SCM_RIGHTS when not nil. It does nothing without $NOTIFY_SOCKET.
//
// It uses an unbound, unconnected AF_UNIX datagram socket and sendmsg(2)
// with the address, as sd_pid_notify_with_fds does; golang.org/x/sys/unix
// turns a leading '@' into an abstract address. The kernel attaches luod's
// credentials (systemd's socket has SO_PASSCRED), which is how systemd
// checks NotifyAccess=main.
func send(op, name, state string, f *os.File) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	fail := func(err error) error { return &Error{Op: op, FDName: name, Err: err} }
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return fail(errors.New("NOTIFY_SOCKET " + addr + ": only a path or an @abstract name is supported"))
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(os.NewSyscallError("socket", err))
	}
	defer unix.Close(s)
	tv := unix.NsecToTimeval(sendTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fail(os.NewSyscallError("setsockopt SO_SNDTIMEO", err))
	}
	sa := &unix.SockaddrUnix{Name: addr}
	if f == nil {
		err = unix.Sendmsg(s, []byte(state), nil, sa, 0)
	} else {
		// Control rather than Fd: Fd would switch f to blocking mode and
		// Control keeps f alive across the call.
		rc, cerr := f.SyscallConn()
		if cerr != nil {
			return fail(cerr)
		}
		if cerr = rc.Control(func(fd uintptr) {
			err = unix.Sendmsg(s, []byte(state), unix.UnixRights(int(fd)), sa, 0)
		}); cerr != nil {
			return fail(cerr)
		}
	}
	if err != nil {
		if errors.Is(err, unix.EAGAIN) {
			err = errors.New("sendmsg: systemd did not take the message within " + sendTimeout.String())
		} else {
			err = os.NewSyscallError("sendmsg", err)
		}
		return fail(err)
	}
	return nil
}
