//go:build !linux

package kho

import (
	"errors"
	"fmt"
)

func mountDebugFS(dir string) error {
	return fmt.Errorf("kho: mount debugfs at %s: %w", dir, errors.ErrUnsupported)
}
