package ioctl

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Backend is the syscall seam: how the device is opened and how an ioctl
// reaches the kernel. The real one is System; ioctltest provides a fake
// with the kernel's behaviour for unit tests. An ioctl argument is the
// struct's bytes in the CPU's byte order; the backend may write results
// into it, and a new fd it hands out is written into the struct's fd field
// just as the kernel does.
type Backend interface {
	// Open opens the device read-write and close-on-exec.
	Open(path string) (*os.File, error)
	// Ioctl issues req on f with arg and returns the errno, or nil.
	Ioctl(f *os.File, req uint, arg []byte) error
	// Holders lists the processes that hold the device at path open.
	Holders(path string) []Holder
}

// Device is an open /dev/liveupdate.
type Device struct {
	b    Backend
	path string
	f    *os.File
}

// Open opens the Live Update Orchestrator device at path (normally
// DevicePath) through the real kernel.
func Open(path string) (*Device, error) { return OpenWith(System, path) }

// OpenWith opens the device through backend b.
func OpenWith(b Backend, path string) (*Device, error) {
	f, err := b.Open(path)
	if err != nil {
		var errno unix.Errno
		if !errors.As(err, &errno) {
			return nil, fmt.Errorf("liveupdate open %s: %w", path, err)
		}
		e := &Error{Op: "open", Errno: errno, FD: -1}
		if errno == unix.EBUSY {
			e.Holders = b.Holders(path)
		}
		return nil, e
	}
	return &Device{b: b, path: path, f: f}, nil
}

// Path is the device path this Device was opened at.
func (d *Device) Path() string { return d.path }

// File is the device's open file.
func (d *Device) File() *os.File { return d.f }

// Close closes the device. Sessions stay alive as long as their own fds do.
func (d *Device) Close() error { return d.f.Close() }

// ValidateName reports whether name can be a session name as given: 1 to
// MaxNameLen bytes and no NUL (the kernel would cut the name at a NUL).
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidName, len(name), MaxNameLen)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: contains a NUL byte", ErrInvalidName)
	}
	return nil
}

// CreateSession creates a new outgoing session called name.
func (d *Device) CreateSession(name string) (*Session, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	var n [NameLen]byte
	copy(n[:], name)
	return d.sessionIoctl(ReqCreateSession, n)
}

// CreateSessionRaw creates a session from a raw 64-byte name field, as
// passed to the kernel unchecked (for contract tests of the kernel's own
// checks).
func (d *Device) CreateSessionRaw(name [NameLen]byte) (*Session, error) {
	return d.sessionIoctl(ReqCreateSession, name)
}

// RetrieveSession takes the session called name that the previous kernel
// handed over.
func (d *Device) RetrieveSession(name string) (*Session, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	var n [NameLen]byte
	copy(n[:], name)
	return d.sessionIoctl(ReqRetrieveSession, n)
}

func (d *Device) sessionIoctl(req uint, name [NameLen]byte) (*Session, error) {
	arg := SessionArg{Size: SessionArgSize, FD: -1, Name: name}
	buf := arg.Marshal()
	if err := d.b.Ioctl(d.f, req, buf); err != nil {
		return nil, opError(CmdName(req), CString(name[:]), err)
	}
	if err := arg.Unmarshal(buf); err != nil {
		return nil, err
	}
	s := CString(name[:])
	return &Session{b: d.b, f: os.NewFile(uintptr(arg.FD), "[luo_session] "+s), name: s, retrieved: req == ReqRetrieveSession}, nil
}

// Ioctl issues a raw request on the device, for contract tests.
func (d *Device) Ioctl(req uint, arg []byte) error { return d.b.Ioctl(d.f, req, arg) }

func opError(op, session string, err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return &Error{Op: op, Session: session, Errno: errno, FD: -1}
	}
	return fmt.Errorf("liveupdate %s session %q: %w", op, session, err)
}

// Session is an open session file descriptor.
type Session struct {
	b         Backend
	f         *os.File
	name      string
	retrieved bool
}

// NewSession wraps a session fd obtained elsewhere (a duplicate handed out
// by luod, or one taken back from systemd's fd store). name is what the
// caller believes the session is called; GetName asks the kernel.
func NewSession(b Backend, f *os.File, name string, retrieved bool) *Session {
	return &Session{b: b, f: f, name: name, retrieved: retrieved}
}

// Name is the session's name as created or retrieved.
func (s *Session) Name() string { return s.name }

// Retrieved reports whether the session came from the previous kernel.
func (s *Session) Retrieved() bool { return s.retrieved }

// File is the session's open file, e.g. to dup it or send it over a socket.
func (s *Session) File() *os.File { return s.f }

// Close closes this fd. If it was the last fd of the session, the kernel
// drops an outgoing session with all it preserved, or finishes a retrieved
// one.
func (s *Session) Close() error { return s.f.Close() }

func (s *Session) err(op string, err error) error { return opError(op, s.name, err) }

// PreserveFD preserves the open file fd in the session under token.
func (s *Session) PreserveFD(fd int, token uint64) error {
	arg := FDArg{Size: FDArgSize, FD: int32(fd), Token: token}
	if err := s.b.Ioctl(s.f, ReqPreserveFD, arg.Marshal()); err != nil {
		e := s.err("PRESERVE_FD", err)
		if le, ok := e.(*Error); ok {
			le.Token, le.HasToken, le.FD = token, true, fd
		}
		return e
	}
	return nil
}

// RetrieveFD returns a new file for the file preserved under token.
func (s *Session) RetrieveFD(token uint64) (*os.File, error) {
	fd, err := s.RetrieveFDNum(token)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("luo:%s:%#x", s.name, token)), nil
}

// RetrieveFDNum is RetrieveFD with the new descriptor as a plain number,
// close-on-exec (the kernel installs it so), which the caller owns and
// closes with close(2). For a caller that only passes it on, as luod
// sends the files it reclaims to the client over SCM_RIGHTS, it saves the
// fcntl(2) os.NewFile makes.
func (s *Session) RetrieveFDNum(token uint64) (int, error) {
	arg := FDArg{Size: FDArgSize, FD: -1, Token: token}
	buf := arg.Marshal()
	if err := s.b.Ioctl(s.f, ReqRetrieveFD, buf); err != nil {
		e := s.err("RETRIEVE_FD", err)
		if le, ok := e.(*Error); ok {
			le.Token, le.HasToken = token, true
		}
		return -1, e
	}
	if err := arg.Unmarshal(buf); err != nil {
		return -1, err
	}
	return int(arg.FD), nil
}

// Finish tells the kernel the session's files are restored; it releases its
// hold on the preserved state.
func (s *Session) Finish() error {
	arg := FinishArg{Size: FinishArgSize}
	if err := s.b.Ioctl(s.f, ReqFinish, arg.Marshal()); err != nil {
		return s.err("FINISH", err)
	}
	return nil
}

// GetName asks the kernel for the session's full name.
func (s *Session) GetName() (string, error) {
	arg := GetNameArg{Size: GetNameArgSize}
	buf := arg.Marshal()
	if err := s.b.Ioctl(s.f, ReqGetName, buf); err != nil {
		return "", s.err("GET_NAME", err)
	}
	if err := arg.Unmarshal(buf); err != nil {
		return "", err
	}
	return CString(arg.Name[:]), nil
}

// Ioctl issues a raw request on the session fd, for contract tests.
func (s *Session) Ioctl(req uint, arg []byte) error { return s.b.Ioctl(s.f, req, arg) }
