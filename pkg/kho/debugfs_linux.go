//go:build linux

package kho

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

func mountDebugFS(dir string) error {
	mounted, err := isDebugFS(dir)
	if err != nil || mounted {
		return err
	}
	err = unix.Mount("debugfs", dir, "debugfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	if errors.Is(err, unix.EBUSY) {
		// Someone else mounted it since we looked.
		if mounted, _ := isDebugFS(dir); mounted {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("kho: mount debugfs at %s: %w", dir, err)
	}
	return nil
}

// isDebugFS reports whether debugfs is mounted at dir.
func isDebugFS(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("kho: statfs %s: %w", dir, err)
	}
	return uint32(st.Type) == unix.DEBUGFS_MAGIC, nil
}
