//go:build linux

package session

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// manifestSeals are the seals of the manifest memfd: its contents can
// never change again, and neither can its seals. memfd_luo preserves them
// (MEMFD_LUO_ALL_SEALS), so the retrieved memfd is sealed the same way.
const manifestSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL

// sealedMemfd puts an encoded manifest b into a new memfd, close-on-exec,
// sealed against any change (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE,
// F_SEAL_SEAL). The caller preserves it and closes it.
func sealedMemfd(b []byte) (*os.File, error) {
	f, err := newMemfd("luod-manifest", b)
	if err != nil {
		return nil, err
	}
	var serr error
	if err := withFD(f, func(fd int) { _, serr = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, manifestSeals) }); err != nil {
		serr = err
	}
	if serr != nil {
		f.Close()
		return nil, fmt.Errorf("sealing manifest memfd: %w", serr)
	}
	return f, nil
}

// NewRecordFile writes m, a Record, as the first line of a new record log
// in a memfd (close-on-exec, not sealed: changes are appended).
func NewRecordFile(m *Manifest) (*RecordFile, error) {
	b, err := m.Encode()
	if err != nil {
		return nil, err
	}
	f, err := newMemfd("luod-record", b)
	if err != nil {
		return nil, err
	}
	return &RecordFile{f: f, size: int64(len(b)), whole: int64(len(b))}, nil
}

// newMemfd is a new memfd called name holding b, close-on-exec, sealable.
func newMemfd(name string, b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s memfd: %w", name, err)
	}
	return f, nil
}
