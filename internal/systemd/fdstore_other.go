//go:build !linux

package systemd

import (
	"errors"
	"os"
)

// send is the fd store's sender; the store exists only on Linux. Without
// $NOTIFY_SOCKET it does nothing, like everywhere else.
func send(op, name, state string, f *os.File) error {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	return &Error{Op: op, FDName: name, Err: errors.ErrUnsupported}
}
