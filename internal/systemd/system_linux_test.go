//go:build linux

package systemd

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// Without a reachable system bus nothing is queued and the error says so,
// quickly: luod then keeps running with every session.
func TestStartKexecTargetNoBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Manager{}.StartKexecTarget(ctx)
	var e *Error
	if !errors.As(err, &e) || e.Op != KexecTarget {
		t.Errorf("StartKexecTarget without a bus = %v, want an *Error for %s", err, KexecTarget)
	}
	if _, err := (Manager{}).Version(ctx); err == nil {
		t.Error("Manager.Version without a bus succeeded")
	}
}
