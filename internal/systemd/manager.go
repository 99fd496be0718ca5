package systemd

import (
	"context"
	"fmt"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// Manager is the running service manager as luod's orderly upgrade path
// uses it, over the system bus: each call on a connection of its own (the
// bus is not up yet when luod starts in early boot).
type Manager struct{}

// Version returns the major version of the running service manager, its
// org.freedesktop.systemd1.Manager Version property.
func (Manager) Version(ctx context.Context) (int, error) {
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return 0, &Error{Op: "D-Bus", Err: err}
	}
	defer conn.Close()
	s, err := conn.GetManagerProperty("Version")
	if err != nil {
		return 0, &Error{Op: "D-Bus Version", Err: err}
	}
	v, err := parseVersion(s)
	if err != nil {
		return 0, &Error{Op: "D-Bus Version", Err: err}
	}
	return v, nil
}

// KexecTarget is the unit StartKexecTarget starts.
const KexecTarget = "kexec.target"

// StartKexecTarget asks systemd, over the system bus, to start kexec.target
// in mode "replace-irreversibly": stop every service — luod included —
// unmount, and reboot into the kexec-loaded kernel; no later job can cancel
// it. It is luod's orderly upgrade path on systemd FDStoreKexecVersion (261)
// or later, whose shutdown carries fd stores and LUO sessions across the
// kexec. Before calling it luod must have stored every session fd and its
// reserved session (StoreFD), since the stop closes its own fds, and it
// must have checked that a kernel is loaded: systemd falls back to a plain
// reboot without one, and a cold reboot loses every session.
//
// It returns once systemd has queued the job. It does not wait for the
// job's result: the job ends only after luod has been stopped, so luod
// learns of its progress as SIGTERM. An error means nothing was queued and
// luod keeps running with every session intact.
func (Manager) StartKexecTarget(ctx context.Context) error {
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return &Error{Op: KexecTarget, Err: fmt.Errorf("connecting to the system bus: %w", err)}
	}
	defer conn.Close()
	if _, err := conn.StartUnitContext(ctx, KexecTarget, "replace-irreversibly", nil); err != nil {
		return &Error{Op: KexecTarget, Err: err}
	}
	return nil
}
