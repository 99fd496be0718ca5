//go:build linux

package contract

import (
	"errors"
	"os"
	"testing"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"golang.org/x/sys/unix"
)

// TestFake runs the contract on one fake kernel, as TestKernel does on one
// boot, and checks after every case that it left no session behind.
func TestFake(t *testing.T) {
	f := ioctltest.New()
	defer f.Close()
	Run(t, Env{
		Backend: f,
		Path:    f.Path(),
		Check: func(t *testing.T) {
			t.Helper()
			if ss := f.Sessions(); len(ss) != 0 {
				t.Fatalf("sessions left behind: %+v", ss)
			}
		},
	})
}

// TestKernel runs the contract on the running kernel's device: LUOD_DEVICE,
// or /dev/liveupdate. Without the device it skips, unless LUOD_VM=1 says
// this is the VM built to have one. It needs root (the device is 0600).
//
// In the VM: go test -c ./pkg/ioctl/contract, then, as root,
// LUOD_VM=1 ./contract.test -test.run TestKernel -test.v
func TestKernel(t *testing.T) {
	path := os.Getenv("LUOD_DEVICE")
	if path == "" {
		path = ioctl.DevicePath
	}
	inVM := os.Getenv("LUOD_VM") == "1"
	d, err := ioctl.Open(path)
	if err != nil {
		var e *ioctl.Error
		unusable := errors.Is(err, ioctl.ErrNotSupported) ||
			errors.As(err, &e) && (e.Errno == unix.EACCES || e.Errno == unix.EPERM)
		switch {
		case inVM:
			t.Fatalf("LUOD_VM=1 but %s is not usable: %v", path, err)
		case unusable:
			t.Skipf("%s not usable here (%v); LUOD_VM=1 makes this a failure", path, err)
		default:
			t.Fatalf("%s: %v", path, err)
		}
	}
	d.Close()
	Run(t, Env{Backend: ioctl.System, Path: path})
}
