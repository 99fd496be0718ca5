//go:build linux

package klog

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// KmsgPath is the kernel log as a stream of records (one per read).
const KmsgPath = "/dev/kmsg"

// Follower reads what the kernel logs from the moment it was opened: the
// witness of why a syscall failed when the errno alone does not say (an
// arm64 kexec_file_load answers EBUSY and logs "Can't kexec: CPUs are
// stuck in the kernel"; x86's loader answers ENOEXEC and logs which
// check of the bzImage failed).
type Follower struct {
	f *os.File
}

// Follow opens /dev/kmsg at its end (reading it needs CAP_SYSLOG or
// kernel.dmesg_restrict=0).
func Follow() (*Follower, error) {
	fd, err := unix.Open(KmsgPath, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: KmsgPath, Err: err}
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "seek", Path: KmsgPath, Err: err}
	}
	return &Follower{f: os.NewFile(uintptr(fd), KmsgPath)}, nil
}

// Lines returns the messages of priority warning or more urgent logged
// since Follow or the previous call, without waiting for more.
func (w *Follower) Lines() []string {
	var out []string
	buf := make([]byte, 8192) // a record is at most 8 KiB (printk's limit)
	for {
		n, err := unix.Read(int(w.f.Fd()), buf)
		if errors.Is(err, unix.EPIPE) {
			continue // records overwritten before we read them: go on
		}
		if err != nil || n <= 0 {
			return out
		}
		if msg, ok := parseRecord(buf[:n], 4); ok {
			out = append(out, msg)
		}
	}
}

// Close closes /dev/kmsg.
func (w *Follower) Close() error { return w.f.Close() }
