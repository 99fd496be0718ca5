// Package mmsg sends many messages on a unix socket with one system call,
// sendmmsg(2): luod's batches of datagrams to systemd's notify socket
// (its fd store) and of packets to a client (the events of an upgrade's
// pause). Under QEMU's TCG every system call costs tens of µs, and each
// message sent alone may wake its reader once more.
//
// The kernel sends the messages in order and stops at the first it cannot
// send; Send reports how many went, so the caller can go on from there
// (a full socket buffer gives EAGAIN on a non-blocking socket, or a send
// timeout's EAGAIN on a blocking one).
package mmsg

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxBatch is the most messages one sendmmsg(2) takes (UIO_MAXIOV).
const MaxBatch = 1024

// mmsghdr is struct mmsghdr: a msghdr and the bytes sent of it, padded as
// C pads it (Go aligns the struct to its pointer fields, as C does).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// Send sends msgs[i], with oobs[i] as its ancillary data when oobs is
// not nil (unix.UnixRights: SCM_RIGHTS), as one message each, in order,
// with one sendmmsg(2) of at most MaxBatch messages and flags (e.g.
// unix.MSG_NOSIGNAL). It returns how many were sent; an error only when
// none was. EINTR is retried.
func Send(fd int, msgs, oobs [][]byte, flags int) (int, error) {
	n := min(len(msgs), MaxBatch)
	if n == 0 {
		return 0, nil
	}
	hdrs := make([]mmsghdr, n)
	iovs := make([]unix.Iovec, n)
	for i := range n {
		// One iovec even for an empty message, as x/sys/unix's Sendmsg
		// gives: under qemu-user a message with none was not delivered
		// (unit-arm64's empty-packet case waited for luod's answer).
		if len(msgs[i]) > 0 {
			iovs[i].Base = &msgs[i][0]
			iovs[i].SetLen(len(msgs[i]))
		}
		hdrs[i].hdr.Iov = &iovs[i]
		hdrs[i].hdr.SetIovlen(1)
		if oobs != nil && len(oobs[i]) > 0 {
			hdrs[i].hdr.Control = &oobs[i][0]
			hdrs[i].hdr.SetControllen(len(oobs[i]))
		}
	}
	for {
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(n), uintptr(flags), 0, 0)
		runtime.KeepAlive(msgs)
		runtime.KeepAlive(oobs)
		runtime.KeepAlive(iovs)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(r), nil
	}
}
