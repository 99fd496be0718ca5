package session

import (
	"errors"
	"fmt"
	"os"

	"github.com/luod/luod/pkg/ioctl"
	"golang.org/x/sys/unix"
)

// Device is what custody needs of /dev/liveupdate: FromIoctl adapts an
// *ioctl.Device. Errors should be *ioctl.Error, whose errno decides the
// protocol code.
type Device interface {
	// CreateSession makes a new outgoing session (CREATE_SESSION).
	CreateSession(name string) (Handle, error)
	// RetrieveSession takes a session the previous kernel handed over
	// (RETRIEVE_SESSION).
	RetrieveSession(name string) (Handle, error)
}

// Handle is one open session fd; *ioctl.Session is one.
type Handle interface {
	Name() string
	// File is the session fd, for duplicating it to a client.
	File() *os.File
	PreserveFD(fd int, token uint64) error
	// RetrieveFDNum returns a new descriptor (close-on-exec) of the file
	// preserved under token, as a plain number the caller owns and
	// closes with close(2).
	RetrieveFDNum(token uint64) (int, error)
	Finish() error
	// Close closes this fd; the last close drops an outgoing session and
	// finishes an incoming one.
	Close() error
}

var _ Handle = (*ioctl.Session)(nil)

// FromIoctl adapts an open *ioctl.Device to Device.
func FromIoctl(d *ioctl.Device) Device { return ioctlDevice{d} }

type ioctlDevice struct{ d *ioctl.Device }

func (x ioctlDevice) CreateSession(name string) (Handle, error) {
	s, err := x.d.CreateSession(name)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (x ioctlDevice) RetrieveSession(name string) (Handle, error) {
	s, err := x.d.RetrieveSession(name)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// dupFile duplicates f's descriptor close-on-exec (F_DUPFD_CLOEXEC), for
// handing a session fd to a client while luod keeps its own.
func dupFile(f *os.File) (*os.File, error) {
	if f == nil {
		return nil, errors.New("no file to duplicate")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicating %s: %w", f.Name(), derr)
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// withFD runs fn with f's descriptor, keeping f open meanwhile.
func withFD(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}
