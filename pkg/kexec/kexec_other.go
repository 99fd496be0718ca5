//go:build !linux || !(amd64 || arm64 || riscv64)

package kexec

import (
	"os"

	"golang.org/x/sys/unix"
)

func fileLoad(*os.File, *os.File, string) error { return unix.ENOSYS }
func fileUnload() error                         { return unix.ENOSYS }
func reboot() error                             { return unix.ENOSYS }

var errKeyRejected = unix.Errno(0x7fff)
