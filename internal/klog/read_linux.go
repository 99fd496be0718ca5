//go:build linux

package klog

import "golang.org/x/sys/unix"

// Read returns the kernel log ring (syslog(2) READ_ALL; needs CAP_SYSLOG
// or kernel.dmesg_restrict=0).
func Read() ([]byte, error) {
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	m, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil {
		return nil, err
	}
	return buf[:m], nil
}
