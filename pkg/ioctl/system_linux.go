//go:build linux

package ioctl

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// System is the real kernel.
var System Backend = system{}

type system struct{}

func (system) Open(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

func (system) Ioctl(f *os.File, req uint, arg []byte) error {
	if len(arg) == 0 {
		// The kernel reads the leading u32 size; give it a zero one.
		arg = make([]byte, 4)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	cerr := raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&arg[0])))
	})
	runtime.KeepAlive(arg)
	if cerr != nil {
		return cerr
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// Holders scans /proc for processes with path open.
func (system) Holders(path string) []Holder {
	return holdersIn("/proc", path)
}

func holdersIn(proc, path string) []Holder {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return nil
	}
	var hs []Holder
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join(proc, e.Name(), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if t, err := os.Readlink(filepath.Join(proc, e.Name(), "fd", fd.Name())); err == nil && t == path {
				comm, _ := os.ReadFile(filepath.Join(proc, e.Name(), "comm"))
				hs = append(hs, Holder{PID: pid, Comm: strings.TrimSpace(string(comm))})
				break
			}
		}
	}
	return hs
}
