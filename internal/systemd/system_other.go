//go:build !linux

package systemd

import (
	"context"
	"errors"
)

// ManagerVersion fails outside Linux.
func ManagerVersion(ctx context.Context) (int, error) {
	return 0, &Error{Op: "D-Bus Version", Err: errors.ErrUnsupported}
}

// KexecTarget is the unit StartKexecTarget starts.
const KexecTarget = "kexec.target"

// StartKexecTarget fails outside Linux.
func StartKexecTarget(ctx context.Context) error {
	return &Error{Op: KexecTarget, Err: errors.ErrUnsupported}
}
