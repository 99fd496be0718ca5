package daemon

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/systemd"
	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/session"
)

// Upgrade paths (Config.UpgradePath, --upgrade.path).
const (
	// PathAuto takes the orderly path under systemd
	// systemd.FDStoreKexecVersion (261) or later, asked over D-Bus at the
	// upgrade, and the direct path otherwise.
	PathAuto = "auto"
	// PathDirect: luod calls reboot(LINUX_REBOOT_CMD_KEXEC) itself after
	// the barrier and the manifest. Works under any init; services are not
	// stopped first.
	PathDirect = "direct"
	// PathOrderly: after the barrier and the manifest luod puts every
	// session fd and its reserved session into systemd's fd store, closes
	// /dev/liveupdate and starts kexec.target; systemd stops every service
	// (luod too) and its shutdown step keeps the stored sessions open
	// through reboot(LINUX_REBOOT_CMD_KEXEC), so the kernel carries them.
	// In the next boot systemd retrieves them by name and hands them back
	// to luod under the same FDNAMEs. Needs systemd 261 or later.
	PathOrderly = "orderly"
)

// Manager is the running service manager, for the orderly path
// (systemd.Manager over D-Bus).
type Manager interface {
	// Version is the manager's major version.
	Version(ctx context.Context) (int, error)
	// StartKexecTarget queues kexec.target; it returns once queued.
	StartKexecTarget(ctx context.Context) error
}

// choosePath decides how this upgrade reaches the new kernel, and why.
// A forced orderly path that cannot work is an error: nothing has changed
// yet.
func (d *Daemon) choosePath() (path, why string, err error) {
	underSystemd := d.cfg.Manager != nil && d.cfg.FDStore != nil
	switch d.cfg.UpgradePath {
	case PathDirect:
		return PathDirect, "forced by --upgrade.path", nil
	case PathOrderly:
		if !underSystemd {
			return "", "", fmt.Errorf("--upgrade.path=orderly needs luod to run under systemd with an fd store")
		}
		return PathOrderly, "forced by --upgrade.path", nil
	}
	if !underSystemd {
		return PathDirect, "not running under systemd", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, verr := d.cfg.Manager.Version(ctx)
	switch {
	case verr != nil:
		return PathDirect, fmt.Sprintf("cannot ask systemd its version (%v)", verr), nil
	case v < systemd.FDStoreKexecVersion:
		return PathDirect, fmt.Sprintf("systemd %d is older than %d, whose kexec.target carries fd stores", v, systemd.FDStoreKexecVersion), nil
	}
	return PathOrderly, fmt.Sprintf("systemd %d carries fd stores across kexec.target", v), nil
}

// handOverToSystemd is the orderly path's commit: every session fd luod
// holds and its reserved session (with the manifest) go into the fd
// store, luod closes /dev/liveupdate — systemd's shutdown step opens it
// after every service has stopped, and the device has one opener at a
// time — and kexec.target is queued. On an error nothing is queued, the
// device is open again and the caller aborts; every session is intact.
func (d *Daemon) handOverToSystemd() error {
	if err := d.storeAllForKexec(); err != nil {
		return err
	}
	d.slot.release()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := d.cfg.Manager.StartKexecTarget(ctx)
	if err == nil {
		return nil
	}
	if rerr := d.slot.reopen(context.Background(), d.openDevice); rerr != nil {
		// Sessions and files stay preserved in their own fds; only new
		// sessions cannot be created until luod restarts.
		d.log.Error("cannot reopen the device after kexec.target was refused", "err", rerr)
	}
	d.unstoreSession(session.ReservedName)
	return err
}

// storeAllForKexec (re)stores every session luod holds, and its reserved
// session, failing on the first fd systemd cannot take: on the orderly
// path the store is all that keeps them open after luod has stopped.
// systemd keeps one copy of an fd stored twice.
func (d *Daemon) storeAllForKexec() error {
	f, err := d.custody.DupReserved()
	if err != nil {
		return err
	}
	defer f.Close()
	// The reserved session first, then the open ones, in one batch. Open
	// sessions only: one retrieved in this boot cannot be carried again.
	// The record needs no rewrite here: every change was appended to it
	// before its answer, and the next boot's luod reads the manifest.
	err = d.storeSessionFiles(func(fn func(string, *os.File)) {
		fn(session.ReservedName, f)
		d.custody.EachFileIn(session.StateOpen, fn)
	})
	if err != nil {
		err = fmt.Errorf("storing luod's reserved session and the open sessions: %w", err)
		d.unstoreSession(session.ReservedName)
	}
	return err
}

// devSlot is /dev/liveupdate as the custody sees it. The orderly path
// closes the device before systemd's shutdown step needs it and reopens it
// if systemd refuses the kexec. During recovery after an orderly kexec it
// also answers RETRIEVE_SESSION with the sessions systemd already
// retrieved and handed back through the fd store.
type devSlot struct {
	mu      sync.Mutex
	dev     *ioctl.Device
	carried map[string]session.Handle
}

var _ session.Device = (*devSlot)(nil)

func (s *devSlot) device(op, name string) (session.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dev == nil {
		return nil, &ioctl.Error{Op: op, Session: name, Errno: unix.EBADF}
	}
	return session.FromIoctl(s.dev), nil
}

func (s *devSlot) CreateSession(name string) (session.Handle, error) {
	dev, err := s.device("CREATE_SESSION", name)
	if err != nil {
		return nil, err
	}
	return dev.CreateSession(name)
}

func (s *devSlot) RetrieveSession(name string) (session.Handle, error) {
	s.mu.Lock()
	h, ok := s.carried[name]
	delete(s.carried, name)
	s.mu.Unlock()
	if ok {
		return h, nil
	}
	dev, err := s.device("RETRIEVE_SESSION", name)
	if err != nil {
		return nil, err
	}
	return dev.RetrieveSession(name)
}

// setCarried gives RetrieveSession the sessions systemd handed back.
func (s *devSlot) setCarried(c map[string]session.Handle) {
	s.mu.Lock()
	s.carried = maps.Clone(c)
	s.mu.Unlock()
}

// takeCarried returns, sorted by name, the handed-back sessions nobody
// asked for, and forgets them all.
func (s *devSlot) takeCarried() []session.Handle {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []session.Handle
	for _, name := range slices.Sorted(maps.Keys(s.carried)) {
		out = append(out, s.carried[name])
	}
	s.carried = nil
	return out
}

func (s *devSlot) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dev != nil {
		s.dev.Close()
		s.dev = nil
	}
}

func (s *devSlot) reopen(ctx context.Context, open func(context.Context) (*ioctl.Device, error)) error {
	dev, err := open(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.dev = dev
	s.mu.Unlock()
	return nil
}

// carriedSessions checks the session fds systemd passed at start, in a
// boot luod has not recovered yet: each must be a LUO session of the name
// its FDNAME says (GET_NAME). What fails the check is removed from the
// store and closed.
func (d *Daemon) carriedSessions(in map[string]*os.File) map[string]session.Handle {
	out := map[string]session.Handle{}
	for _, name := range slices.Sorted(maps.Keys(in)) {
		f := in[name]
		s := ioctl.NewSession(d.cfg.Backend, f, name, true)
		got, err := s.GetName()
		if err != nil || got != name {
			d.log.Error("fd store entry is not the LUO session its name says; removing it",
				"session", name, "kernel_name", got, "err", err)
			d.unstoreSession(name)
			f.Close()
			continue
		}
		out[name] = s
	}
	return out
}
