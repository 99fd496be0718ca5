package proto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/luod/luod/internal/mmsg"
	"golang.org/x/sys/unix"
)

// pair returns the two ends of a socketpair(AF_UNIX, SOCK_SEQPACKET).
func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs[0], cs[1]
}

func memfd(t *testing.T, content string) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd:test")
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func readAll(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSendRecvFDs(t *testing.T) {
	a, b := pair(t)
	req, _ := NewRequest(1, OpPreserve, PreserveArgs{Session: "s", Files: []FileSpec{{Token: 1}, {Token: 2}}})
	if err := a.Send(req, memfd(t, "one"), memfd(t, "two")); err != nil {
		t.Fatal(err)
	}
	raw, files, cred, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		t.Errorf("cred without SO_PASSCRED: %+v", cred)
	}
	got, perr := DecodeRequest(raw)
	if perr != nil || got.Op != OpPreserve {
		t.Fatalf("DecodeRequest(%s): %v", raw, perr)
	}
	if len(files) != 2 {
		t.Fatalf("got %d files, want 2", len(files))
	}
	for i, want := range []string{"one", "two"} {
		if s := readAll(t, files[i]); s != want {
			t.Errorf("file %d holds %q, want %q", i, s, want)
		}
		flags, err := unix.FcntlInt(files[i].Fd(), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("file %d is not close-on-exec (%#x, %v)", i, flags, err)
		}
		files[i].Close()
	}
}

// TestSendFDs: plain descriptors go out as Send's files do, in order,
// the sender's staying open; the limits are Send's.
func TestSendFDs(t *testing.T) {
	a, b := pair(t)
	one, two := memfd(t, "one"), memfd(t, "two")
	fds := []int{int(one.Fd()), int(two.Fd())}
	if err := a.SendFDs(&Event{V: 1, Event: "x"}, fds...); err != nil {
		t.Fatal(err)
	}
	raw, got, _, err := b.RecvFDs()
	if err != nil || !strings.Contains(string(raw), `"x"`) || len(got) != 2 {
		t.Fatalf("RecvFDs = %s, %v, %v", raw, got, err)
	}
	for i, want := range []string{"one", "two"} {
		f := os.NewFile(uintptr(got[i]), "received")
		if s := readAll(t, f); s != want {
			t.Errorf("fd %d holds %q, want %q", i, s, want)
		}
		f.Close()
	}
	if s := readAll(t, one); s != "one" {
		t.Errorf("the sender's file after SendFDs holds %q", s)
	}
	many := make([]int, MaxFDs+1)
	for i := range many {
		many[i] = fds[0]
	}
	if err := a.SendFDs(&Event{V: 1, Event: "x"}, many...); !errors.Is(err, ErrTooManyFDs) {
		t.Errorf("SendFDs with %d fds: %v, want ErrTooManyFDs", len(many), err)
	}
	big := strings.Repeat(" ", MaxMessageSize)
	if err := a.SendFDs(map[string]string{"x": big}, fds...); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("SendFDs of a large message: %v, want ErrMessageTooLarge", err)
	}
}

func TestMaxFDs(t *testing.T) {
	a, b := pair(t)
	f := memfd(t, "x")
	files := make([]*os.File, MaxFDs+1)
	for i := range files {
		files[i] = f
	}
	if err := a.Send(&Event{V: 1, Event: "x"}, files...); !errors.Is(err, ErrTooManyFDs) {
		t.Errorf("Send with %d fds: %v, want ErrTooManyFDs", len(files), err)
	}
	before := openFDs(t)
	if err := a.Send(&Event{V: 1, Event: "x"}, files[:MaxFDs]...); err != nil {
		t.Fatalf("Send with %d fds: %v", MaxFDs, err)
	}
	_, got, _, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != MaxFDs {
		t.Errorf("received %d fds, want %d", len(got), MaxFDs)
	}
	closeFiles(got)
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open after closing what came, want %d", n, before)
	}
}

func TestTooLarge(t *testing.T) {
	a, b := pair(t)
	big := bytes.Repeat([]byte(" "), MaxMessageSize+10)
	if err := a.Send(map[string]string{"x": string(big)}); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("Send of a large message: %v, want ErrMessageTooLarge", err)
	}
	before := openFDs(t)
	f := memfd(t, "x")
	if err := a.SendRaw(big, f, f, f); err != nil {
		t.Fatal(err)
	}
	if err := a.SendRaw(big[:MaxMessageSize+1]); err != nil {
		t.Fatal(err)
	}
	if err := a.Send(&Event{V: 1, Event: "after"}); err != nil {
		t.Fatal(err)
	}
	_, files, _, err := b.Recv()
	if !errors.Is(err, ErrMessageTooLarge) || files != nil || !strings.Contains(err.Error(), "65546 bytes") {
		t.Errorf("Recv of %d bytes: %v, %d files; want ErrMessageTooLarge naming the size", len(big), err, len(files))
	}
	if _, _, _, err := b.Recv(); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("Recv of MaxMessageSize+1 bytes: %v, want ErrMessageTooLarge", err)
	}
	f.Close()
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open, want %d: a refused packet's fds leaked", n, before)
	}
	// The connection is still in step.
	raw, _, _, err := b.Recv()
	if err != nil || !strings.Contains(string(raw), "after") {
		t.Errorf("Recv after refused packets: %s, %v", raw, err)
	}
	// Exactly MaxMessageSize is fine.
	if err := a.SendRaw(big[:MaxMessageSize]); err != nil {
		t.Fatal(err)
	}
	if raw, _, _, err := b.Recv(); err != nil || len(raw) != MaxMessageSize {
		t.Errorf("Recv of MaxMessageSize bytes: %d bytes, %v", len(raw), err)
	}
}

func TestControlTruncated(t *testing.T) {
	a, b := pair(t)
	b.oob = make([]byte, unix.CmsgSpace(2*4)) // room for two fds only
	f := memfd(t, "x")
	before := openFDs(t)
	if err := a.Send(&Event{V: 1, Event: "x"}, f, f, f, f); err != nil {
		t.Fatal(err)
	}
	if _, files, _, err := b.Recv(); !errors.Is(err, ErrControlTruncated) || files != nil {
		t.Errorf("Recv: %v, %d files; want ErrControlTruncated", err, len(files))
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open, want %d: the fds that did arrive leaked", n, before)
	}
}

func TestEOFAndDeadline(t *testing.T) {
	a, b := pair(t)
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, _, err := b.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Recv past the deadline: %v", err)
	}
	b.SetReadDeadline(time.Time{})
	a.Close()
	if _, _, _, err := b.Recv(); err != io.EOF {
		t.Errorf("Recv after the peer closed: %v, want io.EOF", err)
	}
}

func TestCloseUnblocksRecv(t *testing.T) {
	_, b := pair(t)
	done := make(chan error)
	go func() { _, _, _, err := b.Recv(); done <- err }()
	time.Sleep(10 * time.Millisecond)
	b.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Recv after Close: %v, want net.ErrClosed", err)
	}
}

func TestListenCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.sock")
	l, err := Listen(path, 0o660, os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket file: %v, %v", fi.Mode(), err)
	}
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req, _ := NewRequest(1, OpHello, nil)
	for range 2 {
		if err := c.Send(req); err != nil {
			t.Fatal(err)
		}
		_, _, cred, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if cred == nil || int(cred.Pid) != os.Getpid() || int(cred.Uid) != os.Getuid() || int(cred.Gid) != os.Getgid() {
			t.Errorf("cred = %+v, want pid %d uid %d gid %d", cred, os.Getpid(), os.Getuid(), os.Getgid())
		}
	}
	if pc, err := s.PeerCred(); err != nil || int(pc.Pid) != os.Getpid() {
		t.Errorf("PeerCred = %+v, %v", pc, err)
	}
	// Oversized packets still tell who sent them.
	if err := c.SendRaw(make([]byte, MaxMessageSize+1)); err != nil {
		t.Fatal(err)
	}
	if _, _, cred, err := s.Recv(); !errors.Is(err, ErrMessageTooLarge) || cred == nil {
		t.Errorf("Recv of a large packet: %v, cred %+v", err, cred)
	}
}

func TestListenStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l.sock")
	l, err := Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, 0o600, -1); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("Listen on a live socket: %v", err)
	}
	// A socket file nobody listens on any more is replaced.
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	stale := filepath.Join(dir, "stale.sock")
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	l2, err := Listen(stale, 0o600, -1)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l2.Close()
	if _, err := os.Lstat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file left after Close: %v", err)
	}
	// A regular file is never removed.
	reg := filepath.Join(dir, "file")
	os.WriteFile(reg, nil, 0o600)
	if _, err := Listen(reg, 0o600, -1); err == nil {
		t.Error("Listen over a regular file succeeded")
	}
	if _, err := os.Stat(reg); err != nil {
		t.Errorf("regular file gone: %v", err)
	}
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}

func TestFileListener(t *testing.T) {
	dir := t.TempDir()
	// As systemd would hand it over: a listening SOCK_SEQPACKET socket.
	nl, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: filepath.Join(dir, "a.sock"), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	f, err := nl.File()
	if err != nil {
		t.Fatal(err)
	}
	l, err := FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := Dial(filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c.Send(&Event{V: 1, Event: "x"})
	if _, _, cred, err := s.Recv(); err != nil || cred == nil {
		t.Errorf("Recv on an activated listener: cred %+v, %v", cred, err)
	}

	// A stream socket, as a unit file with ListenStream= would give, is refused.
	sl, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	sf, _ := sl.File()
	defer sf.Close()
	if _, err := FileListener(sf); err == nil || !strings.Contains(err.Error(), "SOCK_SEQPACKET") {
		t.Errorf("FileListener(stream socket) = %v", err)
	}
	if _, err := NewListener(sl); err == nil {
		t.Error("NewListener(stream listener) succeeded")
	}
	if _, err := FileListener(memfd(t, "")); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("FileListener(memfd) = %v", err)
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// TestSendBatch: SendBatch sends each message as its own packet, in
// order, past one sendmmsg(2) and past a full socket buffer (the reader
// drains it meanwhile); a message too large is refused before any is sent.
func TestSendBatch(t *testing.T) {
	a, b := pair(t)
	msgs := make([]any, mmsg.MaxBatch+30)
	for i := range msgs {
		msgs[i] = &Event{V: 1, Event: fmt.Sprintf("e%d", i)}
	}
	got := make(chan []string, 1)
	go func() {
		var names []string
		for range msgs {
			raw, _, _, err := b.Recv()
			if err != nil {
				break
			}
			_, ev, err := DecodeServerMessage(raw)
			if err != nil || ev == nil {
				break
			}
			names = append(names, ev.Event)
		}
		got <- names
	}()
	if err := a.SendBatch(msgs...); err != nil {
		t.Fatal(err)
	}
	names := <-got
	if len(names) != len(msgs) {
		t.Fatalf("received %d of %d messages", len(names), len(msgs))
	}
	for i, n := range names {
		if n != fmt.Sprintf("e%d", i) {
			t.Fatalf("message %d is %s", i, n)
		}
	}
	big := map[string]string{"x": strings.Repeat(" ", MaxMessageSize)}
	if err := a.SendBatch(&Event{V: 1, Event: "first"}, big); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("SendBatch with a large message: %v, want ErrMessageTooLarge", err)
	}
	a.SendBatch(&Event{V: 1, Event: "after"})
	if raw, _, _, err := b.Recv(); err != nil || !strings.Contains(string(raw), `"after"`) {
		t.Fatalf("after the refused batch the reader got %s, %v; want only the next message", raw, err)
	}
}
