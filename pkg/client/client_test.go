//go:build linux

package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
)

// handler answers one request on the fake server. It owns files.
type handler func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred)

// server is a fake luod: a real proto.Listener in a temp dir whose
// connections are served by a handler.
type server struct {
	t    *testing.T
	path string
	l    *proto.Listener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns []*proto.Conn
}

func newServer(t *testing.T, h handler) *server {
	t.Helper()
	s := &server{t: t, path: filepath.Join(t.TempDir(), "luod.sock")}
	l, err := proto.Listen(s.path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	s.l = l
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, conn)
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(conn, h)
		}
	}()
	t.Cleanup(s.Close)
	return s
}

func (s *server) serve(conn *proto.Conn, h handler) {
	defer s.wg.Done()
	for {
		raw, files, cred, err := conn.Recv()
		if err != nil {
			return
		}
		req, perr := proto.DecodeRequest(raw)
		if perr != nil {
			closeFiles(files)
			conn.Send(proto.ErrorResponse(req.ID, perr))
			continue
		}
		h(conn, req, files, cred)
	}
}

// Close stops the server and waits for its goroutines.
func (s *server) Close() {
	s.l.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *server) dial(t *testing.T) *Client {
	t.Helper()
	c, err := Dial(s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func answer(t *testing.T, conn *proto.Conn, id uint64, result any, files ...*os.File) {
	t.Helper()
	resp, err := proto.NewResponse(id, result)
	if err != nil {
		t.Error(err)
		return
	}
	if err := conn.Send(resp, files...); err != nil {
		t.Errorf("server: send reply %d: %v", id, err)
	}
}

func event(t *testing.T, conn *proto.Conn, name string, data any) {
	t.Helper()
	ev, _ := proto.NewEvent(name, data)
	if err := conn.Send(ev); err != nil {
		t.Errorf("server: send %s event: %v", name, err)
	}
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

func content(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

// checkGoroutines fails if, within a second, the goroutine count does not
// come back to base.
func checkGoroutines(t *testing.T, base int) {
	t.Helper()
	var n int
	for range 100 {
		if n = runtime.NumGoroutine(); n <= base {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 1<<16)
	t.Errorf("%d goroutines, want %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Concurrent calls are matched to their answers, which come out of order;
// every request carries the caller's credentials.
func TestConcurrentCalls(t *testing.T) {
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		if cred == nil || int(cred.Pid) != os.Getpid() || int(cred.Uid) != os.Getuid() {
			t.Errorf("request %d: cred %+v, want pid %d uid %d", req.ID, cred, os.Getpid(), os.Getuid())
		}
		var args proto.InspectArgs
		if perr := req.DecodeArgs(&args); perr != nil {
			conn.Send(proto.ErrorResponse(req.ID, perr))
			return
		}
		go func() {
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
			answer(t, conn, req.ID, map[string]string{"dir": args.Dir})
		}()
	})
	c := srv.dial(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 8 {
				dir := fmt.Sprintf("/g%d/i%d", g, i)
				raw, err := c.Inspect(ctx, dir)
				if err != nil {
					t.Error(err)
					return
				}
				var got struct{ Dir string }
				json.Unmarshal(raw, &got)
				if got.Dir != dir {
					t.Errorf("Inspect(%s) got the answer for %s", dir, got.Dir)
				}
			}
		})
	}
	wg.Wait()
}

// luod's errors come back as *proto.Error, matched by code.
func TestErrors(t *testing.T) {
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		conn.Send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodeExists, "session %q already exists", "vm-1")))
	})
	c := srv.dial(t)
	_, err := c.CreateSession(ctxT(t), "vm-1", nil)
	var perr *proto.Error
	if !errors.Is(err, proto.ErrExists) || !errors.As(err, &perr) || perr.Message != `session "vm-1" already exists` {
		t.Errorf("CreateSession: %v, want an exists error", err)
	}
	// Names are checked before anything is sent.
	if _, err := c.CreateSession(ctxT(t), "luod-x", nil); !errors.Is(err, proto.ErrInvalidName) {
		t.Errorf("CreateSession(luod-x): %v, want invalid_name", err)
	}
}

// The VFIO/iommufd path: the client gets its own session fd and issues
// the kernel's ioctls itself; after a reboot it retrieves the session fd
// and its files.
func TestSessionFD(t *testing.T) {
	fake := ioctltest.New()
	defer fake.Close()
	var dev *ioctl.Device
	open := func() {
		var err error
		if dev, err = ioctl.OpenWith(fake, fake.Path()); err != nil {
			t.Fatal(err)
		}
	}
	open()
	var mu sync.Mutex // guards dev and kept
	var kept []*ioctl.Session
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		mu.Lock()
		defer mu.Unlock()
		var args struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		}
		req.DecodeArgs(&args)
		var s *ioctl.Session
		var err error
		if req.Op == proto.OpCreateSession {
			s, err = dev.CreateSession(args.Name)
		} else {
			s, err = dev.RetrieveSession(args.Name)
		}
		if err != nil {
			conn.Send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodeKernel, "%v", err)))
			return
		}
		kept = append(kept, s) // luod keeps its own fd
		if req.Op == proto.OpCreateSession {
			answer(t, conn, req.ID, proto.CreateSessionResult{Name: args.Name}, s.File())
		} else {
			answer(t, conn, req.ID, proto.RetrieveSessionResult{Name: args.Name, Files: []proto.FileInfo{{Token: 42, Label: "iommufd", Size: 5}}}, s.File())
		}
	})
	c := srv.dial(t)
	c.backend = fake
	ctx := ctxT(t)

	s, err := c.CreateSession(ctx, "vm-1", map[string]string{"vm": "1"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "vm-1" || s.Retrieved() {
		t.Errorf("session %q retrieved=%v", s.Name(), s.Retrieved())
	}
	if err := s.PreserveFD(int(memfd(t, "state").Fd()), 42); err != nil {
		t.Fatal(err)
	}
	s.Close() // luod's fd keeps the session alive
	if st := fake.Sessions(); len(st) != 1 || st[0].Name != "vm-1" || len(st[0].Tokens) != 1 || st[0].Tokens[0] != 42 {
		t.Fatalf("kernel sessions: %+v", st)
	}

	mu.Lock()
	if err := fake.Reboot(); err != nil {
		t.Fatal(err)
	}
	kept = nil
	open()
	mu.Unlock()

	s, err = c.RetrieveSession(ctx, "vm-1")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Retrieved() || len(s.Files) != 1 || s.Files[0].Token != 42 {
		t.Errorf("retrieved session: retrieved=%v files=%+v", s.Retrieved(), s.Files)
	}
	f, err := s.RetrieveFD(42)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := content(t, f); got != "state" {
		t.Errorf("retrieved file holds %q, want %q", got, "state")
	}
	if err := s.Finish(); err != nil {
		t.Error(err)
	}
}

// fds travel both ways: Preserve sends memfds, in batches of at most
// MaxFDs; Reclaim gets memfds back.
func TestPreserveReclaim(t *testing.T) {
	type batch struct {
		n        int
		contents []string
	}
	batches := make(chan batch, 10)
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		defer closeFiles(files)
		switch req.Op {
		case proto.OpPreserve:
			var args proto.PreserveArgs
			if perr := req.DecodeArgs(&args); perr != nil || len(args.Files) != len(files) {
				conn.Send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodeBadRequest, "%d files, %d fds", len(args.Files), len(files))))
				return
			}
			b := batch{n: len(files)}
			var res proto.PreserveResult
			for i, f := range files {
				s := content(t, f)
				b.contents = append(b.contents, s)
				res.Files = append(res.Files, proto.PreservedFile{Token: args.Files[i].Token, Size: int64(len(s))})
			}
			batches <- b
			answer(t, conn, req.ID, res)
		case proto.OpReclaim:
			var args proto.ReclaimArgs
			req.DecodeArgs(&args)
			res := proto.ReclaimResult{Finished: false}
			var out []*os.File
			for i := range 3 {
				s := fmt.Sprintf("ram-%d", i)
				out = append(out, memfd(t, s))
				res.Files = append(res.Files, proto.FileInfo{Token: 1<<63 + uint64(i), Label: s, Size: int64(len(s))})
			}
			answer(t, conn, req.ID, res, out...)
		}
	})
	c := srv.dial(t)
	ctx := ctxT(t)

	var files []FileToPreserve
	f := memfd(t, "guest-ram")
	for i := range 300 {
		files = append(files, FileToPreserve{File: f, Token: 1<<60 + uint64(i), Label: fmt.Sprintf("ram-%d", i)})
	}
	done, err := c.Preserve(ctx, "vm-1", files)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 300 || done[299].Token != 1<<60+299 || done[0].Size != int64(len("guest-ram")) {
		t.Errorf("Preserve returned %d files, last %+v", len(done), done[len(done)-1])
	}
	if b := <-batches; b.n != proto.MaxFDs || b.contents[0] != "guest-ram" {
		t.Errorf("first batch: %d files, content %q; want %d", b.n, b.contents[0], proto.MaxFDs)
	}
	if b := <-batches; b.n != 300-proto.MaxFDs {
		t.Errorf("second batch: %d files, want %d", b.n, 300-proto.MaxFDs)
	}

	got, err := c.Reclaim(ctx, "vm-1", true)
	if !errors.Is(err, ErrNotFinished) || len(got) != 3 {
		t.Fatalf("Reclaim: %d files, %v; want 3 and ErrNotFinished", len(got), err)
	}
	for i, rf := range got {
		if want := fmt.Sprintf("ram-%d", i); content(t, rf.File) != want || rf.Label != want || rf.Token != 1<<63+uint64(i) {
			t.Errorf("file %d: %+v holds %q", i, rf, content(t, rf.File))
		}
		rf.File.Close()
	}
}

// Events come between responses and reach Events after Subscribe; a
// subscriber answers prepare with ready.
func TestEvents(t *testing.T) {
	readies := make(chan string, 1)
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		switch req.Op {
		case proto.OpSubscribe:
			answer(t, conn, req.ID, nil)
		case proto.OpListSessions:
			// An event before and after the response.
			event(t, conn, proto.EventPrepare, proto.PrepareEvent{Upgrade: "u-3", DeadlineMS: 30000})
			answer(t, conn, req.ID, proto.SessionsResult{Sessions: []proto.SessionInfo{{Name: "vm-1", State: proto.StateOpen}}})
			event(t, conn, proto.EventAborted, proto.AbortedEvent{Upgrade: "u-3", Reason: "test"})
		case proto.OpReady:
			var args proto.ReadyArgs
			req.DecodeArgs(&args)
			readies <- args.Upgrade
			answer(t, conn, req.ID, nil)
		}
	})
	c := srv.dial(t)
	ctx := ctxT(t)
	if err := c.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	ss, err := c.ListSessions(ctx)
	if err != nil || len(ss) != 1 || ss[0].Name != "vm-1" {
		t.Fatalf("ListSessions: %+v, %v", ss, err)
	}
	ev := <-c.Events()
	var pe proto.PrepareEvent
	if ev.Event != proto.EventPrepare || ev.Decode(&pe) != nil || pe.Upgrade != "u-3" {
		t.Fatalf("first event: %+v", ev)
	}
	if err := c.Ready(ctx, pe.Upgrade); err != nil {
		t.Fatal(err)
	}
	if got := <-readies; got != "u-3" {
		t.Errorf("ready for %q", got)
	}
	if ev := <-c.Events(); ev.Event != proto.EventAborted {
		t.Errorf("second event: %+v", ev)
	}
}

func upgradeServer(t *testing.T, dryRun bool) *server {
	return newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		if req.Op != proto.OpUpgrade {
			return
		}
		for _, ph := range []string{proto.PhaseBarrier, proto.PhaseManifest, proto.PhaseReboot} {
			event(t, conn, proto.EventProgress, proto.ProgressEvent{Upgrade: "u-9", Phase: ph})
		}
		if dryRun {
			answer(t, conn, req.ID, proto.UpgradeResult{Upgrade: "u-9", DryRun: true, Phases: map[string]int64{"barrier": 3}})
			return
		}
		event(t, conn, proto.EventCommitted, proto.CommittedEvent{Upgrade: "u-9"})
		conn.Close() // the machine kexecs
	})
}

func TestUpgrade(t *testing.T) {
	for _, dry := range []bool{true, false} {
		t.Run(fmt.Sprintf("dry_run=%v", dry), func(t *testing.T) {
			srv := upgradeServer(t, dry)
			c := srv.dial(t)
			var phases []string
			res, err := c.Upgrade(ctxT(t), proto.UpgradeArgs{DryRun: dry}, func(p proto.ProgressEvent) { phases = append(phases, p.Phase) })
			if got := strings.Join(phases, ","); got != "barrier,manifest,reboot" {
				t.Errorf("progress: %s", got)
			}
			if dry {
				if err != nil || !res.DryRun || res.Upgrade != "u-9" || res.Phases["barrier"] != 3 {
					t.Errorf("Upgrade: %+v, %v", res, err)
				}
				return
			}
			if !errors.Is(err, ErrRebooting) || res == nil || res.Upgrade != "u-9" {
				t.Errorf("Upgrade: %+v, %v; want u-9 and ErrRebooting", res, err)
			}
			// Later calls know the connection is gone.
			if _, err := c.Hello(ctxT(t)); !errors.Is(err, ErrDisconnected) || !errors.Is(err, ErrRebooting) {
				t.Errorf("Hello after the commit: %v", err)
			}
		})
	}
}

// A cancelled call returns at once; its late answer (with an fd) is
// dropped and closed, and the connection goes on.
func TestContextCancel(t *testing.T) {
	late := make(chan uint64, 1)
	lateFile := memfd(t, "x")
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		switch req.Op {
		case proto.OpCreateSession:
			late <- req.ID // answered later
		case proto.OpHello:
			answer(t, conn, req.ID, proto.HelloResult{Version: 1, Daemon: "fake"})
		case proto.OpUnload:
			id := <-late
			answer(t, conn, id, proto.CreateSessionResult{Name: "vm-1"}, lateFile)
			answer(t, conn, req.ID, nil)
		}
	})
	c := srv.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.CreateSession(ctx, "vm-1", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("CreateSession: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancelled call took %v", d)
	}
	before := openFDs(t)
	if err := c.Unload(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if h, err := c.Hello(ctxT(t)); err != nil || h.Daemon != "fake" {
		t.Errorf("Hello after a cancelled call: %+v, %v", h, err)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d fds open, want %d: the late answer's fd leaked", n, before)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := c.Hello(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Hello with a cancelled context: %v", err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// When luod goes away mid-call, every pending call fails with
// ErrDisconnected, Events is closed, and Close leaves no goroutine behind.
func TestServerCloses(t *testing.T) {
	base := runtime.NumGoroutine()
	var mu sync.Mutex
	var n int
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		mu.Lock()
		defer mu.Unlock()
		if n++; n == 4 { // luod goes away with four requests unanswered
			conn.Close()
		}
	})
	c := srv.dial(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() { _, err := c.Status(context.Background()); errs <- err }()
	}
	for range 4 {
		if err := <-errs; !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "luod closed the connection") {
			t.Errorf("pending call: %v, want ErrDisconnected", err)
		}
	}
	if _, ok := <-c.Events(); ok {
		t.Error("Events still open")
	}
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrDisconnected) {
		t.Errorf("call after the disconnect: %v", err)
	}
	c.Close()
	srv.Close()
	checkGoroutines(t, base)
}

// Close fails calls in flight with ErrClosed.
func TestClose(t *testing.T) {
	base := runtime.NumGoroutine()
	srv := newServer(t, func(*proto.Conn, *proto.Request, []*os.File, *unix.Ucred) {})
	c := srv.dial(t)
	errc := make(chan error)
	go func() { _, err := c.Hello(context.Background()); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("pending call after Close: %v", err)
	}
	if _, err := c.Hello(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("call after Close: %v", err)
	}
	srv.Close()
	checkGoroutines(t, base)
}

// A packet the client cannot read fails the connection with ErrProtocol
// rather than leaving a call waiting forever.
func TestBadPackets(t *testing.T) {
	extra := memfd(t, "x")
	for name, send := range map[string]func(*proto.Conn, uint64){
		"oversized": func(conn *proto.Conn, id uint64) {
			conn.SendRaw([]byte(`{"v":1,"id":`+fmt.Sprint(id)+`,"ok":true,"result":{"x":"`+strings.Repeat("x", proto.MaxMessageSize)+`"}}`), extra)
		},
		"not_json": func(conn *proto.Conn, id uint64) { conn.SendRaw([]byte("{oops")) },
		"version": func(conn *proto.Conn, id uint64) {
			conn.SendRaw([]byte(`{"v":2,"id":` + fmt.Sprint(id) + `,"ok":true}`))
		},
		"id_0": func(conn *proto.Conn, id uint64) {
			conn.Send(proto.ErrorResponse(0, proto.Errorf(proto.CodeBadRequest, "request is not valid JSON")))
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
				send(conn, req.ID)
			})
			c := srv.dial(t)
			before := openFDs(t)
			_, err := c.Hello(ctxT(t))
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("Hello: %v, want ErrProtocol", err)
			}
			if name == "oversized" && !errors.Is(err, proto.ErrMessageTooLarge) {
				t.Errorf("Hello: %v, want ErrMessageTooLarge", err)
			}
			if _, err := c.Hello(ctxT(t)); !errors.Is(err, ErrProtocol) {
				t.Errorf("second Hello: %v, want ErrProtocol", err)
			}
			if n := openFDs(t); n > before {
				t.Errorf("%d fds open, want at most %d", n, before)
			}
		})
	}
}

// A response with the wrong number of fds fails that call only.
func TestWrongFDCount(t *testing.T) {
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		if req.Op == proto.OpCreateSession {
			answer(t, conn, req.ID, proto.CreateSessionResult{Name: "vm-1"}) // no fd
			return
		}
		answer(t, conn, req.ID, proto.HelloResult{Version: 1})
	})
	c := srv.dial(t)
	if _, err := c.CreateSession(ctxT(t), "vm-1", nil); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "0 fds, want 1") {
		t.Errorf("CreateSession: %v", err)
	}
	if _, err := c.Hello(ctxT(t)); err != nil {
		t.Errorf("Hello: %v", err)
	}
}

func TestLoad(t *testing.T) {
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		defer closeFiles(files)
		var args proto.LoadArgs
		if perr := req.DecodeArgs(&args); perr != nil {
			conn.Send(proto.ErrorResponse(req.ID, perr))
			return
		}
		if len(files) != 2 || !args.Initrd || args.Config || content(t, files[0]) != "bzImage" || content(t, files[1]) != "initrd" {
			conn.Send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodeBadRequest, "%d fds, %+v", len(files), args)))
			return
		}
		answer(t, conn, req.ID, proto.LoadResult{LoadedKernel: proto.LoadedKernel{Release: "7.2.0", Cmdline: args.Cmdline}, Warnings: []string{}})
	})
	c := srv.dial(t)
	res, err := c.Load(ctxT(t), memfd(t, "bzImage"), memfd(t, "initrd"), nil, proto.LoadArgs{Cmdline: "console=ttyS0"})
	if err != nil || res.Release != "7.2.0" || res.Cmdline != "console=ttyS0" {
		t.Errorf("Load: %+v, %v", res, err)
	}
}

// A send blocked on luod's full receive queue, or waiting for another
// send, gives up when its context is done.
func TestSendBlocked(t *testing.T) {
	block := make(chan struct{})
	srv := newServer(t, func(*proto.Conn, *proto.Request, []*os.File, *unix.Ucred) { <-block })
	t.Cleanup(func() { close(block) }) // before the server's cleanup
	c := srv.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	big := strings.Repeat("x", 60000)
	errs := make(chan error)
	for range 10 {
		go func() { _, err := c.Inspect(ctx, big); errs <- err }()
	}
	timeout := time.After(5 * time.Second)
	for range 10 {
		select {
		case err := <-errs:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Inspect: %v, want DeadlineExceeded", err)
			}
		case <-timeout:
			t.Fatal("calls blocked past their deadline")
		}
	}
}

// CreateSessionWithFiles sends the first proto.MaxFDs files with
// create_session, fds attached in order, and the rest as preserve.
func TestCreateSessionWithFiles(t *testing.T) {
	type request struct {
		op     string
		name   string
		tokens []uint64
		fds    int
	}
	reqs := make(chan request, 10)
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		defer closeFiles(files)
		var specs []proto.FileSpec
		var name string
		switch req.Op {
		case proto.OpCreateSession:
			var args proto.CreateSessionArgs
			if perr := req.DecodeArgs(&args); perr != nil {
				conn.Send(proto.ErrorResponse(req.ID, perr))
				return
			}
			specs, name = args.Files, args.Name
		case proto.OpPreserve:
			var args proto.PreserveArgs
			if perr := req.DecodeArgs(&args); perr != nil {
				conn.Send(proto.ErrorResponse(req.ID, perr))
				return
			}
			specs, name = args.Files, args.Session
		}
		r := request{op: req.Op, name: name, fds: len(files)}
		var done []proto.PreservedFile
		for i, s := range specs {
			r.tokens = append(r.tokens, s.Token)
			done = append(done, proto.PreservedFile{Token: s.Token, Size: int64(len(content(t, files[i])))})
		}
		reqs <- r
		if req.Op == proto.OpCreateSession {
			answer(t, conn, req.ID, proto.CreateSessionResult{Name: name, Files: done}, memfd(t, "session"))
		} else {
			answer(t, conn, req.ID, proto.PreserveResult{Files: done})
		}
	})
	c := srv.dial(t)
	f := memfd(t, "guest-ram")
	var files []FileToPreserve
	for i := range 300 {
		files = append(files, FileToPreserve{File: f, Token: uint64(i + 1)})
	}
	s, done, err := c.CreateSessionWithFiles(ctxT(t), "vm-1", nil, files)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(done) != 300 || done[299].Token != 300 || done[0].Size != int64(len("guest-ram")) {
		t.Errorf("returned %d files, last %+v", len(done), done[len(done)-1])
	}
	if r := <-reqs; r.op != proto.OpCreateSession || r.name != "vm-1" || r.fds != proto.MaxFDs || len(r.tokens) != proto.MaxFDs || r.tokens[0] != 1 {
		t.Errorf("first request: %s of %q, %d fds, %d tokens", r.op, r.name, r.fds, len(r.tokens))
	}
	if r := <-reqs; r.op != proto.OpPreserve || r.name != "vm-1" || r.fds != 300-proto.MaxFDs || r.tokens[0] != proto.MaxFDs+1 {
		t.Errorf("second request: %s of %q, %d fds", r.op, r.name, r.fds)
	}
}

// TestCreateSessionsOldLuod: a luod without create_sessions answers
// unknown_op once; CreateSessions then creates each session with
// create_session, closing the session fds it gets back.
func TestCreateSessionsOldLuod(t *testing.T) {
	var mu sync.Mutex
	var ops []string
	srv := newServer(t, func(conn *proto.Conn, req *proto.Request, files []*os.File, cred *unix.Ucred) {
		defer closeFiles(files)
		mu.Lock()
		ops = append(ops, req.Op)
		mu.Unlock()
		if req.Op != proto.OpCreateSession {
			conn.Send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodeUnknownOp, "unknown operation %q", req.Op)))
			return
		}
		var args proto.CreateSessionArgs
		if perr := req.DecodeArgs(&args); perr != nil {
			conn.Send(proto.ErrorResponse(req.ID, perr))
			return
		}
		if args.Name == "vm-2" {
			conn.Send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodeExists, "session %q: session already exists", args.Name)))
			return
		}
		var done []proto.PreservedFile
		for i, s := range args.Files {
			done = append(done, proto.PreservedFile{Token: s.Token, Size: int64(len(content(t, files[i])))})
		}
		answer(t, conn, req.ID, proto.CreateSessionResult{Name: args.Name, Files: done}, memfd(t, "session"))
	})
	c := srv.dial(t)
	var req []SessionToCreate
	for i := range 4 {
		req = append(req, SessionToCreate{Name: fmt.Sprintf("vm-%d", i),
			Files: []FileToPreserve{{File: memfd(t, "ram"), Token: 1}}})
	}
	got, err := c.CreateSessions(ctxT(t), req)
	if !errors.Is(err, proto.ErrExists) || !strings.Contains(err.Error(), "1 of 4") {
		t.Fatalf("CreateSessions = %v; want 1 of 4 not created, exists", err)
	}
	for i, r := range got {
		if (i == 2) != (r.Err != nil) || i != 2 && (len(r.Files) != 1 || r.Files[0].Size != 3) {
			t.Fatalf("session %d: %+v", i, r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{proto.OpCreateSessions, proto.OpCreateSession, proto.OpCreateSession, proto.OpCreateSession, proto.OpCreateSession}
	if !slices.Equal(ops, want) {
		t.Fatalf("requests %v, want %v", ops, want)
	}
}
