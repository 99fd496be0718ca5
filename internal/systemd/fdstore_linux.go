//go:build linux

package systemd

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/mmsg"
)

// notifySocket is luod's one socket to $NOTIFY_SOCKET, connected once and
// kept for the life of the process: each message is then one sendmsg(2)
// rather than socket, setsockopt, sendmsg and close (under TCG every
// system call costs tens of µs, and the fd store sends one message per
// session change). It is shared by every Notifier, as the environment
// variable is; mu also orders a re-dial against the sends.
var notifySocket notifyConn

type notifyConn struct {
	mu   sync.Mutex
	addr string // what fd is connected to; "" without a socket
	fd   int
}

// dials counts the sockets made, for the tests.
var dials atomic.Int64

// send writes state as one datagram to $NOTIFY_SOCKET, with f attached as
// SCM_RIGHTS when not nil: a batch of one (sendBatch). It does nothing
// without $NOTIFY_SOCKET.
//
// The socket is an unbound AF_UNIX datagram socket connected to the
// address, made at the first message and again whenever $NOTIFY_SOCKET
// changes; golang.org/x/sys/unix turns a leading '@' into an abstract
// address. The kernel attaches luod's credentials to each datagram
// (systemd's socket has SO_PASSCRED), which is how systemd checks
// NotifyAccess=main, connected or not. When systemd re-executes itself
// (daemon-reexec) it binds a new socket at the same address: the old
// connection then fails with ECONNREFUSED (ENOTCONN after that), and send
// dials again and sends the message once more, to the new socket.
func send(op, name, state string, f *os.File) error {
	_, err := sendBatch(op, []NamedFile{{Name: name, File: f}}, []string{state})
	return err
}

// sendBatch sends states[i] with files[i].File attached (nothing when
// nil), in order, as StoreFDs describes. It does nothing without
// $NOTIFY_SOCKET.
func sendBatch(op string, files []NamedFile, states []string) (int, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" || len(files) == 0 {
		return len(files), nil
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return 0, &Error{Op: op, FDName: files[0].Name,
			Err: errors.New("NOTIFY_SOCKET " + addr + ": only a path or an @abstract name is supported")}
	}
	// Fd keeps each file open until KeepAlive below; it would switch a
	// non-blocking file to blocking mode, which what luod stores (session
	// fds, memfds: not pollable, opened blocking) never is.
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = -1
		if f.File != nil {
			fds[i] = int(f.File.Fd())
		}
	}
	sent, err := notifySocket.sendBatch(addr, states, fds)
	runtime.KeepAlive(files)
	if err != nil {
		return sent, &Error{Op: op, FDName: files[sent].Name, Err: err}
	}
	return sent, nil
}

// sendBatch sends each state with its fd as one datagram to addr, in
// order, dialing first if needed and, once a batch, on a fresh socket when
// the connection is gone (systemd re-executed itself: what was sent before
// went to the old instance, which hands its fd store to the new one). It
// returns how many were sent.
func (s *notifyConn) sendBatch(addr string, states []string, fds []int) (int, error) {
	msgs, oobs := make([][]byte, len(states)), make([][]byte, len(states))
	for i, st := range states {
		msgs[i] = []byte(st)
		if fds[i] >= 0 {
			oobs[i] = unix.UnixRights(fds[i])
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sent, redialed := 0, false
	for sent < len(states) {
		if s.addr != addr {
			if err := s.dial(addr); err != nil {
				return sent, err
			}
		}
		n, err := mmsg.Send(s.fd, msgs[sent:], oobs[sent:], 0)
		sent += n
		switch {
		case err == nil:
		case n == 0 && !redialed && (errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOTCONN) ||
			errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)):
			s.close()
			redialed = true
		case errors.Is(err, unix.EAGAIN):
			return sent, errors.New("sendmmsg: systemd did not take the message within " + sendTimeout.String())
		default:
			return sent, os.NewSyscallError("sendmmsg", err)
		}
	}
	return sent, nil
}

// dial replaces the socket by one connected to addr; mu is held. On
// failure there is no socket, and the next message dials again.
func (s *notifyConn) dial(addr string) error {
	s.close()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	dials.Add(1)
	tv := unix.NsecToTimeval(sendTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("setsockopt SO_SNDTIMEO", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("connect", err)
	}
	s.addr, s.fd = addr, fd
	return nil
}

// close drops the socket; mu is held.
func (s *notifyConn) close() {
	if s.addr != "" {
		unix.Close(s.fd)
		s.addr, s.fd = "", -1
	}
}
