//go:build !linux

package ioctl

import (
	"os"

	"golang.org/x/sys/unix"
)

// System is the real kernel; on this OS there is none.
var System Backend = system{}

type system struct{}

func (system) Open(string) (*os.File, error)      { return nil, unix.ENOENT }
func (system) Ioctl(*os.File, uint, []byte) error { return ErrNotSupported }
func (system) Holders(string) []Holder            { return nil }
