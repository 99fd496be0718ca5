//go:build !linux

package systemd

import (
	"errors"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"
)

// send sends plain notifications with go-systemd's daemon.SdNotify; the
// fd store exists only on Linux. Without $NOTIFY_SOCKET it does nothing,
// like everywhere else.
func send(op, name, state string, f *os.File) error {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	if f != nil {
		return &Error{Op: op, FDName: name, Err: errors.ErrUnsupported}
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		return &Error{Op: op, FDName: name, Err: err}
	}
	return nil
}

// sendBatch is send of each message in turn: the fd store exists only on
// Linux, where send refuses every file anyway.
func sendBatch(op string, files []NamedFile, states []string) (int, error) {
	for i, f := range files {
		if err := send(op, f.Name, states[i], f.File); err != nil {
			return i, err
		}
	}
	return len(files), nil
}
