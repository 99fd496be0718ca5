//go:build !linux

package klog

import "golang.org/x/sys/unix"

// Read returns the kernel log ring; there is none on this OS.
func Read() ([]byte, error) { return nil, unix.ENOSYS }
