package ioctl

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotSupported means this kernel offers no Live Update Orchestrator:
// /dev/liveupdate does not exist (CONFIG_LIVEUPDATE off, KHO disabled, or
// the kernel booted without liveupdate=on) or the OS is not Linux.
var ErrNotSupported = errors.New("live update orchestrator not supported by this kernel")

// ErrInvalidName is returned, before any syscall, for a session name the
// kernel would refuse or silently truncate: empty, longer than MaxNameLen
// bytes, or holding a NUL byte.
var ErrInvalidName = errors.New("invalid session name")

// Holder is a process that holds /dev/liveupdate open.
type Holder struct {
	PID  int
	Comm string
}

func (h Holder) String() string { return fmt.Sprintf("pid %d (%s)", h.PID, h.Comm) }

// Error is a failed operation on /dev/liveupdate or a session fd.
type Error struct {
	// Op is the operation: "open" or the ioctl's name as in the header
	// (CREATE_SESSION, PRESERVE_FD, …).
	Op string
	// Session names the session involved, if any.
	Session string
	// Token is the preservation token, valid when HasToken is set.
	Token    uint64
	HasToken bool
	// FD is the file descriptor offered for preservation, or -1.
	FD int
	// Errno is what the kernel returned.
	Errno unix.Errno
	// Holders are the processes holding the device open (open with EBUSY).
	Holders []Holder
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("liveupdate ")
	b.WriteString(e.Op)
	if e.Session != "" {
		fmt.Fprintf(&b, " session %q", e.Session)
	}
	if e.HasToken {
		fmt.Fprintf(&b, " token %#x", e.Token)
	}
	if e.FD >= 0 {
		fmt.Fprintf(&b, " fd %d", e.FD)
	}
	fmt.Fprintf(&b, ": %s: %s", errnoName(e.Errno), Explain(e.Op, e.Errno))
	if e.Op == "open" && e.Errno == unix.EBUSY {
		if len(e.Holders) == 0 {
			b.WriteString(" (holder not found in /proc)")
		} else {
			hs := make([]string, len(e.Holders))
			for i, h := range e.Holders {
				hs[i] = h.String()
			}
			fmt.Fprintf(&b, " (held by %s)", strings.Join(hs, ", "))
		}
	}
	return b.String()
}

// Unwrap gives the errno, so errors.Is(err, unix.EEXIST) works.
func (e *Error) Unwrap() error { return e.Errno }

// Is makes a missing device match ErrNotSupported.
func (e *Error) Is(target error) bool {
	return target == ErrNotSupported && e.Op == "open" && e.Errno == unix.ENOENT
}

func errnoName(e unix.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}

// Explain gives the meaning of errno for an operation, as
// include/uapi/linux/liveupdate.h and kernel/liveupdate/ define it.
func Explain(op string, errno unix.Errno) string {
	switch op {
	case "open":
		switch errno {
		case unix.EBUSY:
			return "another process holds /dev/liveupdate open; the kernel allows one"
		case unix.ENOENT:
			return "no /dev/liveupdate: the kernel lacks CONFIG_LIVEUPDATE or was booted without liveupdate=on and KHO"
		case unix.EIO:
			return "the kernel failed to deserialize the sessions handed over by the previous kernel"
		case unix.EACCES, unix.EPERM:
			return "permission denied opening /dev/liveupdate"
		}
	case "CREATE_SESSION":
		switch errno {
		case unix.EEXIST:
			return "a session with this name already exists"
		case unix.EINVAL:
			return "the name is empty or not NUL-terminated within 64 bytes, or the struct is too small"
		}
	case "RETRIEVE_SESSION":
		switch errno {
		case unix.ENOENT:
			return "no session of this name was handed over by the previous kernel"
		case unix.EINVAL:
			return "the session was already retrieved, or the struct is too small"
		}
	case "PRESERVE_FD":
		switch errno {
		case unix.ENOENT:
			return "no live update handler can preserve this kind of file"
		case unix.EBUSY:
			return "the file is already preserved, in this or another session"
		case unix.EEXIST:
			return "the token is already used in this session"
		case unix.EBADF:
			return "not an open file descriptor"
		case unix.EINVAL:
			return "the session was retrieved from the previous kernel: preserve only into new sessions"
		case unix.ENOSPC:
			return "the session's file set is full"
		}
	case "RETRIEVE_FD":
		switch errno {
		case unix.ENOENT:
			return "no file was preserved under this token in this session"
		case unix.EINVAL:
			return "the session is not one retrieved from the previous kernel"
		}
	case "FINISH":
		switch errno {
		case unix.EBUSY:
			return "a preserved file cannot finish yet; the resources stay preserved"
		case unix.EINVAL:
			return "the session is not one retrieved from the previous kernel, or reserved is not zero"
		}
	case "GET_NAME":
		if errno == unix.EINVAL {
			return "reserved is not zero, or the struct is too small"
		}
	}
	switch errno {
	case unix.ENOTTY:
		return "the ioctl number is not supported at all"
	case unix.E2BIG:
		return "the struct has non-zero bytes in a part the kernel does not understand"
	case unix.EOPNOTSUPP:
		return "a known field has a value the kernel does not support"
	case unix.EINVAL:
		return "a field is not correct"
	case unix.ENOENT:
		return "the token does not exist"
	case unix.EBUSY:
		return "the object is in use"
	case unix.EEXIST:
		return "the object already exists"
	case unix.ENOMEM:
		return "the kernel is out of memory"
	case unix.EOVERFLOW:
		return "arithmetic overflowed"
	case unix.EFAULT:
		return "bad address"
	case unix.EMFILE, unix.ENFILE:
		return "out of file descriptors"
	}
	return errno.Error()
}
