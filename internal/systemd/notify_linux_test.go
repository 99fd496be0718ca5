//go:build linux

package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeSystemd listens where $NOTIFY_SOCKET points, like PID 1: an AF_UNIX
// datagram socket, a path in a temporary directory or an abstract name.
func fakeSystemd(t *testing.T, abstract bool) *net.UnixConn {
	t.Helper()
	var name string
	if abstract {
		name = fmt.Sprintf("@luod-systemd-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	} else {
		dir, err := os.MkdirTemp("", "sd") // short: sun_path holds 108 bytes
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		name = filepath.Join(dir, "notify")
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return c
}

// recv reads one datagram and the fds it carries.
func recv(t *testing.T, c *net.UnixConn) (string, []*os.File) {
	t.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*8))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("reading the notification: %v", err)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		t.Fatal("control data truncated")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue // SCM_CREDENTIALS, if the socket asked for them
		}
		for _, fd := range fds {
			f := os.NewFile(uintptr(fd), "received")
			t.Cleanup(func() { f.Close() })
			files = append(files, f)
		}
	}
	return string(buf[:n]), files
}

func memfd(t *testing.T, content string) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("luod-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f
}

func readAt0(t *testing.T, f *os.File) string {
	t.Helper()
	b := make([]byte, 256)
	n, err := f.ReadAt(b, 0)
	if err != nil && n == 0 {
		t.Fatalf("reading %s: %v", f.Name(), err)
	}
	return string(b[:n])
}

func TestNotifications(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(map[bool]string{false: "path", true: "abstract"}[abstract], func(t *testing.T) {
			sd := fakeSystemd(t, abstract)
			var n Notifier
			if !n.Enabled() {
				t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
			}
			for _, tc := range []struct {
				send func() error
				want string
			}{
				{func() error { return n.Ready("3 sessions held") }, "READY=1\nSTATUS=3 sessions held"},
				{func() error { return n.Ready("") }, "READY=1"},
				{func() error { return n.Status("upgrade\nbarrier") }, "STATUS=upgrade barrier"},
				{n.Watchdog, "WATCHDOG=1"},
				{n.Stopping, "STOPPING=1"},
			} {
				if err := tc.send(); err != nil {
					t.Fatalf("sending %q: %v", tc.want, err)
				}
				if got, fds := recv(t, sd); got != tc.want || len(fds) != 0 {
					t.Errorf("systemd got %q with %d fds, want %q", got, len(fds), tc.want)
				}
			}
		})
	}
}

func TestStoreFD(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(map[bool]string{false: "path", true: "abstract"}[abstract], func(t *testing.T) {
			sd := fakeSystemd(t, abstract)
			var n Notifier
			f := memfd(t, "guest RAM of vm:42")
			name := FDName(KindSession, "vm:42")
			if err := n.StoreFD(name, f); err != nil {
				t.Fatal(err)
			}
			msg, fds := recv(t, sd)
			if want := "FDSTORE=1\nFDNAME=session-vm%3A42"; msg != want {
				t.Errorf("systemd got %q, want %q", msg, want)
			}
			if len(fds) != 1 {
				t.Fatalf("systemd got %d fds, want 1", len(fds))
			}
			// The same file, not a copy: same inode, and a write through
			// one shows through the other.
			var a, b unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &a); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fstat(int(fds[0].Fd()), &b); err != nil {
				t.Fatal(err)
			}
			if a.Dev != b.Dev || a.Ino != b.Ino {
				t.Errorf("received fd is inode %d:%d, stored %d:%d", b.Dev, b.Ino, a.Dev, a.Ino)
			}
			if got := readAt0(t, fds[0]); got != "guest RAM of vm:42" {
				t.Errorf("received fd reads %q", got)
			}
			if _, err := fds[0].WriteAt([]byte("GUEST"), 0); err != nil {
				t.Fatal(err)
			}
			if got := readAt0(t, f); got != "GUEST RAM of vm:42" {
				t.Errorf("after writing through the received fd the original reads %q", got)
			}
			// luod's own fd is untouched and still open.
			if _, err := f.Stat(); err != nil {
				t.Errorf("luod's fd after StoreFD: %v", err)
			}

			if err := n.RemoveFD(name); err != nil {
				t.Fatal(err)
			}
			if msg, fds := recv(t, sd); msg != "FDSTOREREMOVE=1\nFDNAME=session-vm%3A42" || len(fds) != 0 {
				t.Errorf("systemd got %q with %d fds, want the FDSTOREREMOVE", msg, len(fds))
			}
		})
	}
}

func TestStoreFDRefusesBadNames(t *testing.T) {
	sd := fakeSystemd(t, false)
	var n Notifier
	f := memfd(t, "x")
	for _, name := range []string{"", "session-vm:42", "a\nFDSTOREREMOVE=1", string(bytes.Repeat([]byte("x"), 256))} {
		if err := n.StoreFD(name, f); !errors.Is(err, ErrInvalidFDName) {
			t.Errorf("StoreFD(%q) = %v, want ErrInvalidFDName", name, err)
		}
		if err := n.RemoveFD(name); !errors.Is(err, ErrInvalidFDName) {
			t.Errorf("RemoveFD(%q) = %v, want ErrInvalidFDName", name, err)
		}
	}
	var e *Error
	if err := n.StoreFD("manifest", nil); !errors.As(err, &e) || e.Op != "FDSTORE" {
		t.Errorf("StoreFD(nil) = %v, want an *Error for FDSTORE", err)
	}
	// Nothing reached systemd.
	sd.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _, err := sd.ReadFromUnix(make([]byte, 64)); err == nil {
		t.Errorf("systemd got a %d-byte datagram for an invalid request", n)
	}
}

func TestStoreFDNoSystemd(t *testing.T) {
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "gone"))
	var n Notifier
	var e *Error
	if err := n.StoreFD("manifest", memfd(t, "m")); !errors.As(err, &e) || !errors.Is(err, unix.ENOENT) {
		t.Errorf("StoreFD to a missing socket = %v, want an *Error wrapping ENOENT", err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if err := n.StoreFD("manifest", memfd(t, "m")); err == nil {
		t.Error("StoreFD to a vsock NOTIFY_SOCKET succeeded")
	}
}

func TestNoNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	var n Notifier
	if n.Enabled() {
		t.Error("Enabled() without NOTIFY_SOCKET")
	}
	f := memfd(t, "x")
	for what, err := range map[string]error{
		"Ready":    n.Ready("ok"),
		"Status":   n.Status("ok"),
		"Watchdog": n.Watchdog(),
		"Stopping": n.Stopping(),
		"StoreFD":  n.StoreFD("manifest", f),
		"RemoveFD": n.RemoveFD("manifest"),
	} {
		if err != nil {
			t.Errorf("%s without NOTIFY_SOCKET = %v, want nil", what, err)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	var n Notifier
	pid := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"", "", 0, false},
		{"30000000", "", 30 * time.Second, true},
		{"30000000", pid, 30 * time.Second, true},
		{"30000000", "1", 0, false}, // another process's watchdog
		{"junk", pid, 0, false},
		{"-5", "", 0, false},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		d, ok := n.WatchdogInterval()
		if d != tc.want || ok != tc.ok {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: WatchdogInterval() = %v, %v; want %v, %v",
				tc.usec, tc.pid, d, ok, tc.want, tc.ok)
		}
		if os.Getenv("WATCHDOG_USEC") != tc.usec {
			t.Error("WatchdogInterval unset WATCHDOG_USEC")
		}
	}
}

func TestWatchdogLoop(t *testing.T) {
	sd := fakeSystemd(t, false)
	var n Notifier
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	t.Setenv("WATCHDOG_USEC", "40000") // 40 ms: a ping every 20 ms
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	healthy := make(chan bool, 1)
	healthy <- false
	go func() {
		done <- n.WatchdogLoop(ctx, func() bool {
			select {
			case h := <-healthy:
				return h
			default:
				return true
			}
		})
	}()
	// The first tick is skipped as unhealthy; pings follow.
	for range 2 {
		if msg, _ := recv(t, sd); msg != "WATCHDOG=1" {
			t.Errorf("got %q, want WATCHDOG=1", msg)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("WatchdogLoop after cancel = %v", err)
	}

	t.Setenv("WATCHDOG_USEC", "")
	if err := n.WatchdogLoop(context.Background(), nil); err != nil {
		t.Errorf("WatchdogLoop without a watchdog = %v, want nil at once", err)
	}
}

// openFDs counts this process's open fds.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// TestOneSocket: every message, plain or carrying an fd, goes out on one
// socket connected once, not a socket of its own.
func TestOneSocket(t *testing.T) {
	sd := fakeSystemd(t, false)
	var n Notifier
	f := memfd(t, "x")
	if err := n.Status("first"); err != nil { // dials
		t.Fatal(err)
	}
	recv(t, sd)
	before, fds := dials.Load(), openFDs(t)
	const msgs = 200
	for i := range msgs {
		var err error
		switch i % 4 {
		case 0:
			err = n.StoreFD("session-x", f)
		case 1:
			err = n.RemoveFD("session-x")
		case 2:
			err = n.Status(fmt.Sprint(i, " sessions held"))
		case 3:
			err = n.Watchdog()
		}
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if _, got := recv(t, sd); len(got) > 0 {
			for _, g := range got {
				g.Close()
			}
		}
	}
	if got := dials.Load() - before; got != 0 {
		t.Errorf("%d messages dialed %d new sockets, want none", msgs, got)
	}
	if got := openFDs(t); got != fds {
		t.Errorf("%d open fds after %d messages, %d before", got, msgs, fds)
	}
}

// reexecSystemd is systemd re-executing itself: sd closed, a new socket
// bound at the same $NOTIFY_SOCKET path.
func reexecSystemd(t *testing.T, sd *net.UnixConn) *net.UnixConn {
	t.Helper()
	path := os.Getenv("NOTIFY_SOCKET")
	sd.Close()
	os.Remove(path)
	sd2, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sd2.Close() })
	return sd2
}

// TestRedialAfterReexec: systemd re-executing binds a new socket at the
// same path; the next message reaches it on a new connection, and nothing
// is lost.
func TestRedialAfterReexec(t *testing.T) {
	sd := fakeSystemd(t, false)
	var n Notifier
	if err := n.Status("before"); err != nil {
		t.Fatal(err)
	}
	if got, _ := recv(t, sd); got != "STATUS=before" {
		t.Fatalf("got %q", got)
	}
	sd2 := reexecSystemd(t, sd)
	before := dials.Load()
	for _, s := range []string{"after", "again"} {
		if err := n.Status(s); err != nil {
			t.Fatalf("status %q after the re-exec: %v", s, err)
		}
		if got, _ := recv(t, sd2); got != "STATUS="+s {
			t.Errorf("the new systemd got %q, want STATUS=%s", got, s)
		}
	}
	if got := dials.Load() - before; got != 1 {
		t.Errorf("%d dials after the re-exec, want 1", got)
	}
}
