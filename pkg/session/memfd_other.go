//go:build !linux

package session

import (
	"os"

	"github.com/luod/luod/pkg/ioctl"
)

// sealedMemfd needs memfd_create, which only Linux has.
func sealedMemfd([]byte) (*os.File, error) { return nil, ioctl.ErrNotSupported }

// newMemfd needs memfd_create, which only Linux has.
func newMemfd(string, []byte) (*os.File, error) { return nil, ioctl.ErrNotSupported }

// NewRecordFile needs memfd_create, which only Linux has.
func NewRecordFile(m *Manifest) (*RecordFile, error) {
	if _, err := m.Encode(); err != nil {
		return nil, err
	}
	return nil, ioctl.ErrNotSupported
}
