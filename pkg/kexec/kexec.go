// Package kexec loads the next kernel with kexec_file_load(2) and triggers
// the switch with reboot(LINUX_REBOOT_CMD_KEXEC).
//
// Loading goes through u-root's pkg/boot/kexec (FileLoad). This package adds
// what u-root lacks: unloading (KEXEC_FILE_UNLOAD), the loaded state from
// /sys/kernel/kexec_loaded, and errors that name the files and the meaning
// of the kernel's errno.
//
// The kernel and initrd are opened once and passed to the kernel by fd, so
// what is checked is what is loaded.
//
// The reboot itself is where the Live Update Orchestrator serializes every
// open session: with CONFIG_LIVEUPDATE, reboot(LINUX_REBOOT_CMD_KEXEC) fails
// and returns if that serialization fails, and the sessions stay as they were.
package kexec

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/klog"
)

// LoadedPath reports whether a kexec image is loaded ("1") or not ("0").
const LoadedPath = "/sys/kernel/kexec_loaded"

// Error is a failed kexec operation.
type Error struct {
	Op     string // "load", "unload", "reboot"
	Kernel string // kernel image path, for load
	Initrd string // initrd path, for load, may be empty
	Err    error  // usually a unix.Errno
	// KernelLog is what the kernel logged (warning or worse) during the
	// call, when it could be read: often the only account of why.
	KernelLog []string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kexec %s", e.Op)
	if e.Kernel != "" {
		fmt.Fprintf(&b, " kernel %s", e.Kernel)
	}
	if e.Initrd != "" {
		fmt.Fprintf(&b, " initrd %s", e.Initrd)
	}
	var errno unix.Errno
	if errors.As(e.Err, &errno) {
		fmt.Fprintf(&b, ": %s: %s", unix.ErrnoName(errno), explain(e.Op, errno))
	} else {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if len(e.KernelLog) > 0 {
		fmt.Fprintf(&b, "; the kernel logged: %s", strings.Join(e.KernelLog, "; "))
	}
	return b.String()
}

// Unwrap gives the underlying error (an errno from the kernel).
func (e *Error) Unwrap() error { return e.Err }

func explain(op string, errno unix.Errno) string {
	switch errno {
	case unix.ENOEXEC:
		return "the kernel refused the image: not a kernel this architecture's kexec loader accepts"
	case unix.EPERM:
		return "not permitted: CAP_SYS_BOOT missing, kexec disabled (kernel.kexec_load_disabled) or lockdown"
	case unix.EBUSY:
		return "another kexec load is in progress, or the image cannot be replaced now"
	case unix.EFBIG:
		return "the image or initrd is too large"
	case unix.ENOMEM:
		return "not enough memory to stage the image"
	case errKeyRejected, unix.EBADMSG:
		return "the image's signature was rejected"
	case unix.EINVAL:
		if op == "reboot" {
			return "no kexec image is loaded"
		}
		return "invalid argument (a truncated or corrupt image or initrd, or a bad command line)"
	case unix.ENOSYS:
		return "this kernel has no kexec_file_load (CONFIG_KEXEC_FILE off)"
	}
	return errno.Error()
}

// Load opens kernel and initrd (initrd may be empty) and loads them for
// the next kexec with cmdline.
func Load(kernel, initrd, cmdline string) error {
	k, err := os.Open(kernel)
	if err != nil {
		return &Error{Op: "load", Kernel: kernel, Initrd: initrd, Err: err}
	}
	defer k.Close()
	var r *os.File
	if initrd != "" {
		if r, err = os.Open(initrd); err != nil {
			return &Error{Op: "load", Kernel: kernel, Initrd: initrd, Err: err}
		}
		defer r.Close()
	}
	return LoadFiles(k, r, cmdline)
}

// LoadFiles loads already-open kernel and initrd files (initrd may be nil).
// If the kernel refuses them, the error carries what it logged meanwhile.
func LoadFiles(kernel, initrd *os.File, cmdline string) error {
	kmsg, kerr := klog.Follow()
	if kerr == nil {
		defer kmsg.Close()
	}
	if err := fileLoad(kernel, initrd, cmdline); err != nil {
		e := &Error{Op: "load", Kernel: kernel.Name(), Err: err}
		if initrd != nil {
			e.Initrd = initrd.Name()
		}
		if kerr == nil {
			e.KernelLog = kmsg.Lines()
		}
		return e
	}
	return nil
}

// Unload drops a loaded kexec image.
func Unload() error {
	if err := fileUnload(); err != nil {
		return &Error{Op: "unload", Err: err}
	}
	return nil
}

// Loaded reports whether a kexec image is loaded.
func Loaded() (bool, error) {
	b, err := os.ReadFile(LoadedPath)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// Reboot switches to the loaded kernel. It only returns on failure, with
// the kernel's error; the running system is then unchanged. It does not
// sync file systems: callers that wrote something to keep sync first
// (luod does so in its manifest phase, timed apart from the reboot).
func Reboot() error {
	if err := reboot(); err != nil {
		return &Error{Op: "reboot", Err: err}
	}
	return nil
}
