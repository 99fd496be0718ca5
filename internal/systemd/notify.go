package systemd

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify(3) messages to the service manager: state
// changes, and fds through StoreFD and RemoveFD. The zero value is ready to
// use. On Linux every Notifier shares one socket, connected at the first
// message and kept (see send), so a message is one sendmsg(2).
//
// Every call reads $NOTIFY_SOCKET afresh and leaves it set (go-systemd's
// unsetEnv=false), because luod notifies for as long as it runs; luod
// starts no long-lived children that could misuse it, and NotifyAccess=main
// makes systemd ignore anyone but luod's main process anyway. Without
// $NOTIFY_SOCKET (not started by systemd, or Type= other than notify) every
// method does nothing and returns nil.
type Notifier struct{}

// Enabled reports whether $NOTIFY_SOCKET is set, that is whether the
// notifications, and the fd store, reach anyone.
func (Notifier) Enabled() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

func (Notifier) notify(op, state string) error { return send(op, "", state, nil) }

// oneLine makes s fit a single VAR=value line of the protocol.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// Ready tells systemd that startup finished (READY=1) and sets the status
// line in the same datagram. With Type=notify, systemd considers
// luod.service started only now; luod sends it once recovery is done and
// the socket serves.
func (n Notifier) Ready(status string) error {
	msg := daemon.SdNotifyReady
	if status != "" {
		msg += "\nSTATUS=" + oneLine(status)
	}
	return n.notify("READY", msg)
}

// Status sets the one-line status systemctl status shows (STATUS=).
func (n Notifier) Status(s string) error { return n.notify("STATUS", "STATUS="+oneLine(s)) }

// Stopping tells systemd that luod is shutting down (STOPPING=1), so a
// stop is reported as such rather than as a crash when the socket closes.
func (n Notifier) Stopping() error { return n.notify("STOPPING", daemon.SdNotifyStopping) }

// Watchdog is one keep-alive ping (WATCHDOG=1). See WatchdogInterval.
func (n Notifier) Watchdog() error { return n.notify("WATCHDOG", daemon.SdNotifyWatchdog) }

// WatchdogInterval returns WatchdogSec= of the unit, from $WATCHDOG_USEC,
// and whether the watchdog applies to this process: false without the
// variable, when $WATCHDOG_PID names another process, or when the values
// do not parse (go-systemd's SdWatchdogEnabled; the variables stay set).
// systemd recommends pinging at half the interval.
func (Notifier) WatchdogInterval() (time.Duration, bool) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0, false
	}
	return d, true
}

// WatchdogLoop pings the watchdog every half interval until ctx is done,
// skipping a ping whenever healthy (if not nil) returns false, so that a
// luod that is alive but stuck gets killed and restarted. It returns nil at
// once when the watchdog is off, ctx.Err() when ctx ends, or the first
// error sending a ping.
func (n Notifier) WatchdogLoop(ctx context.Context, healthy func() bool) error {
	d, ok := n.WatchdogInterval()
	if !ok {
		return nil
	}
	t := time.NewTicker(d / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if healthy != nil && !healthy() {
			continue
		}
		if err := n.Watchdog(); err != nil {
			return err
		}
	}
}

// StoreFD puts a duplicate of f into systemd's fd store under name
// (FDSTORE=1, FDNAME=name, f as SCM_RIGHTS). luod's f stays open and is
// not otherwise touched. name must pass ValidateFDName; build it with
// FDName.
//
// systemd keeps the fd until RemoveFD(name), until the store is released
// (see the package documentation) or — for pollable fds — until it sees
// POLLHUP/POLLERR on it; it passes it back at luod's next start
// (TakeInherited). memfds are not pollable, so systemd never drops them.
// Storing the same open file twice stores it once; storing a different
// file under a name already used adds a second fd of that name, so replace
// with RemoveFD first. Success means the datagram was sent: whether systemd
// kept the fd (FileDescriptorStoreMax= not reached) it only logs.
//
// A send that does not complete within 5 seconds (systemd not reading its
// socket) fails rather than blocking luod.
func (Notifier) StoreFD(name string, f *os.File) error {
	if err := ValidateFDName(name); err != nil {
		return &Error{Op: "FDSTORE", FDName: name, Err: err}
	}
	if f == nil {
		return &Error{Op: "FDSTORE", FDName: name, Err: errors.New("nil file")}
	}
	return send("FDSTORE", name, "FDSTORE=1\nFDNAME="+name, f)
}

// NamedFile is one file of a StoreFDs batch and the name to store it under.
type NamedFile struct {
	Name string
	File *os.File
}

// StoreFDs is StoreFD of each file in turn, the same messages in the same
// order, sent with as few system calls as the kernel takes (sendmmsg(2),
// up to 1024 messages a call) instead of one each: recovery stores every
// session it retrieved before READY, in the workloads' pause. It returns
// how many were sent; on an error the rest were not, and the error names
// the first of them. Names are checked first: a bad one sends nothing.
func (Notifier) StoreFDs(files []NamedFile) (int, error) {
	states := make([]string, len(files))
	for i, f := range files {
		if err := ValidateFDName(f.Name); err != nil {
			return 0, &Error{Op: "FDSTORE", FDName: f.Name, Err: err}
		}
		if f.File == nil {
			return 0, &Error{Op: "FDSTORE", FDName: f.Name, Err: errors.New("nil file")}
		}
		states[i] = "FDSTORE=1\nFDNAME=" + f.Name
	}
	return sendBatch("FDSTORE", files, states)
}

// RemoveFDs is RemoveFD of each name in turn, sent as StoreFDs sends: a
// reclaim of many sessions removes them all before it answers.
func (Notifier) RemoveFDs(names []string) (int, error) {
	files := make([]NamedFile, len(names))
	states := make([]string, len(names))
	for i, name := range names {
		if err := ValidateFDName(name); err != nil {
			return 0, &Error{Op: "FDSTOREREMOVE", FDName: name, Err: err}
		}
		files[i] = NamedFile{Name: name}
		states[i] = "FDSTOREREMOVE=1\nFDNAME=" + name
	}
	return sendBatch("FDSTOREREMOVE", files, states)
}

// RemoveFD closes every fd stored under name (FDSTOREREMOVE=1). Removing a
// name that is not stored is not an error (systemd does nothing).
func (Notifier) RemoveFD(name string) error {
	if err := ValidateFDName(name); err != nil {
		return &Error{Op: "FDSTOREREMOVE", FDName: name, Err: err}
	}
	return send("FDSTOREREMOVE", name, "FDSTOREREMOVE=1\nFDNAME="+name, nil)
}

// sendTimeout bounds one send to the notification socket.
const sendTimeout = 5 * time.Second
