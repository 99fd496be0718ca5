//go:build linux

package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// rawClient speaks to luod with a raw proto.Conn, which sends whatever it
// is given, and, on the same socket, a net.UnixConn for what proto.Conn
// cannot produce at all (explicit SCM_CREDENTIALS, more than 253 fds).
type rawClient struct {
	t  *testing.T
	pc *proto.Conn
	uc *net.UnixConn
	id uint64
}

func dialRaw(t *testing.T, sock string) *rawClient {
	t.Helper()
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := uc.File()
	if err != nil {
		uc.Close()
		t.Fatal(err)
	}
	pc, err := proto.FileConn(f)
	f.Close()
	if err != nil {
		uc.Close()
		t.Fatal(err)
	}
	c := &rawClient{t: t, pc: pc, uc: uc, id: 1000}
	t.Cleanup(c.close)
	return c
}

func (c *rawClient) close() {
	c.pc.Close()
	c.uc.Close()
}

func (c *rawClient) nextID() uint64 { c.id++; return c.id }

// recv reads the next response, skipping events, and returns it with the
// fds that came with it (the caller closes them).
func (c *rawClient) recv() (*proto.Response, []*os.File) {
	c.t.Helper()
	c.pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.pc.SetReadDeadline(time.Time{})
	for {
		raw, files, _, err := c.pc.Recv()
		if err != nil {
			c.t.Fatalf("recv: %v", err)
		}
		resp, ev, err := proto.DecodeServerMessage(raw)
		if err != nil {
			closeFiles(files)
			c.t.Fatalf("luod sent an unreadable message %q: %v", raw, err)
		}
		if ev != nil {
			closeFiles(files)
			continue
		}
		return resp, files
	}
}

// raw sends b as one packet with files and returns the response; fds in
// the response are closed.
func (c *rawClient) raw(b []byte, files ...*os.File) *proto.Response {
	c.t.Helper()
	if err := c.pc.SendRaw(b, files...); err != nil {
		c.t.Fatalf("send %.80q: %v", b, err)
	}
	resp, out := c.recv()
	closeFiles(out)
	return resp
}

// req sends a well-formed request of op with args and files and returns
// the response; fds in the response are closed.
func (c *rawClient) req(op string, args any, files ...*os.File) *proto.Response {
	c.t.Helper()
	r, err := proto.NewRequest(c.nextID(), op, args)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.pc.Send(r, files...); err != nil {
		c.t.Fatalf("send %s: %v", op, err)
	}
	resp, out := c.recv()
	closeFiles(out)
	if resp.ID != r.ID {
		c.t.Fatalf("%s: response id %d, want %d", op, resp.ID, r.ID)
	}
	return resp
}

func (c *rawClient) mustOK(op string, args any, files ...*os.File) json.RawMessage {
	c.t.Helper()
	resp := c.req(op, args, files...)
	if !resp.OK {
		c.t.Fatalf("%s %+v: %s: %s", op, args, resp.Error.Code, resp.Error.Message)
	}
	return resp.Result
}

// hello proves the connection is still served.
func (c *rawClient) hello() {
	c.t.Helper()
	var h proto.HelloResult
	if err := json.Unmarshal(c.mustOK(proto.OpHello, nil), &h); err != nil || h.Version != proto.Version {
		c.t.Fatalf("hello = %+v, %v", h, err)
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// openFDs lists this process's open fds, number and what each refers
// to: luod runs in the test process, so its fds are among them.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := make(map[string]string, len(es))
	for _, e := range es {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // closed since: ReadDir's own fd, for one
		}
		fds[e.Name()] = l
	}
	return fds
}

// waitFDs checks that no fd is open that was not open, to the same
// file, in before. (Fewer is fine: other tests' files may be finalized
// meanwhile.) The fake kernel releases a session's fds lazily, at its
// next call, so it nudges it; luod's disk writer opens files under dir
// for a moment, so those are waited out. Any other fd must be gone
// within grace: a leaked *os.File would otherwise pass the check as soon
// as a garbage collection finalizes it.
func waitFDs(t *testing.T, fake *ioctltest.Fake, before map[string]string, dir string, grace time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		fake.Sessions() // reaps released sessions
		var extra []string
		transient := true
		for fd, l := range openFDs(t) {
			if b, ok := before[fd]; !ok || b != l {
				extra = append(extra, fd+" -> "+l)
				transient = transient && strings.HasPrefix(l, dir+"/")
			}
		}
		if len(extra) == 0 {
			return
		}
		if waited := time.Since(start); waited > 5*time.Second || !transient && waited > grace {
			sort.Strings(extra)
			t.Fatalf("fd leak: %d fds open that were not before:\n  %s", len(extra), strings.Join(extra, "\n  "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hostileEnv is what a case works with; files it makes are closed after
// the case, before the fd count is compared.
type hostileEnv struct {
	t     *testing.T
	c     *rawClient
	fake  *ioctltest.Fake
	dir   string
	files []*os.File
}

func (e *hostileEnv) keep(f *os.File) *os.File { e.files = append(e.files, f); return f }

func (e *hostileEnv) memfd(data string) *os.File {
	e.t.Helper()
	fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC)
	if err != nil {
		e.t.Fatal(err)
	}
	f := e.keep(os.NewFile(uintptr(fd), "memfd:hostile"))
	if _, err := f.WriteString(data); err != nil {
		e.t.Fatal(err)
	}
	return f
}

func (e *hostileEnv) create(name string) {
	e.t.Helper()
	e.c.mustOK(proto.OpCreateSession, proto.CreateSessionArgs{Name: name}) // its fd is closed by req
}

func (e *hostileEnv) delete(name string) {
	e.t.Helper()
	e.c.mustOK(proto.OpDeleteSession, proto.DeleteSessionArgs{Name: name})
}

func preserveArgs(session string, tokens ...uint64) proto.PreserveArgs {
	a := proto.PreserveArgs{Session: session}
	for _, tok := range tokens {
		a.Files = append(a.Files, proto.FileSpec{Token: tok})
	}
	return a
}

// hostileSession is an open session every case may preserve into; it
// exists before the fd baseline is taken.
const hostileSession = "hostile"

// TestHostileRequests sends luod malformed, oversized and ill-meant
// requests over a raw connection. Each must get a clear error (code, and
// a message naming the problem), leave the connection served (a hello
// answers afterwards) and leave no fd behind.
func TestHostileRequests(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := dialRaw(t, h.sock)
	env := &hostileEnv{t: t, c: c, fake: fake, dir: dir}
	env.create(hostileSession)
	c.hello()

	regular := filepath.Join(dir, "regular-file")
	if err := os.WriteFile(regular, []byte("not a memfd"), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func(e *hostileEnv, path string, flag int) *os.File {
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			e.t.Fatal(err)
		}
		return e.keep(f)
	}
	req := func(op, args string) []byte {
		if args == "" {
			return fmt.Appendf(nil, `{"v":1,"id":77,"op":%q}`, op)
		}
		return fmt.Appendf(nil, `{"v":1,"id":77,"op":%q,"args":%s}`, op, args)
	}
	badFD := func(mk func(e *hostileEnv) *os.File) func(e *hostileEnv) *proto.Response {
		return func(e *hostileEnv) *proto.Response {
			return e.c.req(proto.OpPreserve, preserveArgs(hostileSession, 0x101), mk(e))
		}
	}

	cases := []struct {
		name   string
		run    func(e *hostileEnv) *proto.Response
		code   proto.Code
		id     uint64 // 0: the response must carry id 0; else the request's
		anyID  bool   // the case's request id is not known here
		naming []string
	}{
		{name: "empty packet", code: proto.CodeBadRequest, naming: []string{"empty"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw(nil) }},
		{name: "whitespace only", code: proto.CodeBadRequest, naming: []string{"empty"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(" \n\t ")) }},
		{name: "over MaxMessageSize", code: proto.CodeBadRequest, naming: []string{"too large", "65537"},
			run: func(e *hostileEnv) *proto.Response {
				b := append([]byte(`{"v":1,"id":9,"op":"hello","args":{"pad":"`), bytes.Repeat([]byte("x"), proto.MaxMessageSize)...)
				return e.c.raw(b[:proto.MaxMessageSize+1])
			}},
		{name: "over MaxMessageSize with fds", code: proto.CodeBadRequest, naming: []string{"too large"},
			run: func(e *hostileEnv) *proto.Response {
				b := bytes.Repeat([]byte(" "), 2*proto.MaxMessageSize)
				return e.c.raw(b, e.memfd("a"), e.memfd("b"), open(e, os.DevNull, os.O_RDONLY))
			}},
		{name: "invalid JSON", code: proto.CodeBadRequest, naming: []string{"not valid JSON"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":5,"op":"hello"`)) }},
		{name: "invalid JSON syntax", code: proto.CodeBadRequest, naming: []string{"not valid JSON", "offset"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,,"id":5}`)) }},
		{name: "trailing data", code: proto.CodeBadRequest, naming: []string{"after its closing brace"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":5,"op":"hello"}{}`)) }},
		{name: "JSON array", code: proto.CodeBadRequest, naming: []string{"array", "want a JSON object"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`[{"v":1,"id":5,"op":"hello"}]`)) }},
		{name: "JSON string", code: proto.CodeBadRequest, naming: []string{"want a JSON object"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`"hello"`)) }},
		{name: "JSON null", code: proto.CodeBadRequest, naming: []string{"want a JSON object"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`null`)) }},
		{name: "unknown protocol version", code: proto.CodeUnsupportedVersion, id: 3, naming: []string{"version 2"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw([]byte(`{"v":2,"id":3,"op":"hello","new_field":true}`))
			}},
		{name: "version as string", code: proto.CodeBadRequest, id: 3, naming: []string{`"v"`},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":"1","id":3,"op":"hello"}`)) }},
		{name: "no version", code: proto.CodeBadRequest, id: 3, naming: []string{`no "v"`},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"id":3,"op":"hello"}`)) }},
		{name: "missing id", code: proto.CodeBadRequest, naming: []string{`no "id"`},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"op":"hello"}`)) }},
		{name: "id 0", code: proto.CodeBadRequest, naming: []string{`"id"`},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":0,"op":"hello"}`)) }},
		{name: "negative id", code: proto.CodeBadRequest, naming: []string{`"id"`},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":-4,"op":"hello"}`)) }},
		{name: "id over 2^64", code: proto.CodeBadRequest, naming: []string{`"id"`},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw([]byte(`{"v":1,"id":18446744073709551616,"op":"hello"}`))
			}},
		{name: "missing op", code: proto.CodeBadRequest, id: 8, naming: []string{`no "op"`},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":8}`)) }},
		{name: "unknown op", code: proto.CodeUnknownOp, id: 4, naming: []string{"frobnicate"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":4,"op":"frobnicate"}`)) }},
		{name: "op wrong case", code: proto.CodeUnknownOp, id: 4, naming: []string{"Hello"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":4,"op":"Hello"}`)) }},
		{name: "unknown field", code: proto.CodeBadRequest, id: 5, naming: []string{"extra"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw([]byte(`{"v":1,"id":5,"op":"hello","extra":1}`))
			}},
		{name: "field twice", code: proto.CodeBadRequest, naming: []string{`"op" twice`},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw([]byte(`{"v":1,"id":5,"op":"hello","op":"status"}`))
			}},
		{name: "field in other case", code: proto.CodeBadRequest, id: 5, naming: []string{"Op"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw([]byte(`{"v":1,"id":5,"Op":"hello"}`)) }},
		{name: "unknown argument", code: proto.CodeBadRequest, id: 77, naming: []string{"bogus", "create_session"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw(req("create_session", `{"name":"vm-x","bogus":true}`))
			}},
		{name: "unknown nested argument", code: proto.CodeBadRequest, id: 77, naming: []string{"fd"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw(req("declare", `{"session":"hostile","files":[{"token":1,"fd":3}]}`))
			}},
		{name: "argument of wrong type", code: proto.CodeBadRequest, id: 77, naming: []string{"token"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw(req("declare", `{"session":"hostile","files":[{"token":"1"}]}`))
			}},
		{name: "token over 2^64", code: proto.CodeBadRequest, id: 77, naming: []string{"token"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw(req("declare", `{"session":"hostile","files":[{"token":18446744073709551616}]}`))
			}},
		{name: "args not an object", code: proto.CodeBadRequest, id: 77, naming: []string{`"args"`, "array"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw(req("delete_session", `["hostile"]`)) }},
		{name: "args of an op without args", code: proto.CodeBadRequest, id: 77, naming: []string{"hello", "x"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw(req("hello", `{"x":1}`)) }},
		{name: "args of list_sessions", code: proto.CodeBadRequest, id: 77, naming: []string{"list_sessions", "uid"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw(req("list_sessions", `{"uid":0}`)) }},

		// fd counts.
		{name: "preserve 2 files 1 fd", code: proto.CodeBadRequest, anyID: true, naming: []string{"2 files", "1 file descriptor"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpPreserve, preserveArgs(hostileSession, 1, 2), e.memfd("a"))
			}},
		{name: "preserve 2 files 3 fds", code: proto.CodeBadRequest, anyID: true, naming: []string{"2 files", "3 file descriptors"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpPreserve, preserveArgs(hostileSession, 1, 2), e.memfd("a"), e.memfd("b"), e.memfd("c"))
			}},
		{name: "preserve no files", code: proto.CodeBadRequest, anyID: true, naming: []string{"0 files", "1 file descriptor"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpPreserve, proto.PreserveArgs{Session: hostileSession}, e.memfd("a"))
			}},
		{name: "create_session with an fd", code: proto.CodeBadRequest, anyID: true, naming: []string{"create_session", "no file descriptors", "got 1"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpCreateSession, proto.CreateSessionArgs{Name: "vm-fd"}, e.memfd("a"))
			}},
		{name: "hello with fds", code: proto.CodeBadRequest, anyID: true, naming: []string{"hello", "got 2"},
			run: func(e *hostileEnv) *proto.Response { return e.c.req(proto.OpHello, nil, e.memfd("a"), e.memfd("b")) }},
		{name: "delete_session with an fd", code: proto.CodeBadRequest, anyID: true, naming: []string{"delete_session", "got 1"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpDeleteSession, proto.DeleteSessionArgs{Name: "no-such"}, e.memfd("a"))
			}},
		{name: "subscribe with an fd", code: proto.CodeBadRequest, anyID: true, naming: []string{"subscribe", "got 1"},
			run: func(e *hostileEnv) *proto.Response { return e.c.req(proto.OpSubscribe, nil, e.memfd("a")) }},
		{name: "reclaim with an fd", code: proto.CodeBadRequest, anyID: true, naming: []string{"reclaim", "got 1"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpReclaim, proto.ReclaimArgs{Name: hostileSession}, e.memfd("a"))
			}},
		{name: "status with args", code: proto.CodeBadRequest, id: 77, naming: []string{"status", "verbose"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw(req("status", `{"verbose":true}`)) }},
		{name: "load with no fds", code: proto.CodeBadRequest, anyID: true, naming: []string{"load", "got 0"},
			run: func(e *hostileEnv) *proto.Response { return e.c.req(proto.OpLoad, proto.LoadArgs{Cmdline: "x"}) }},

		// Files that are no memfd.
		{name: "bad fd: pipe", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x101", hostileSession},
			run: badFD(func(e *hostileEnv) *os.File {
				r, w, err := os.Pipe()
				if err != nil {
					e.t.Fatal(err)
				}
				e.keep(w)
				return e.keep(r)
			})},
		{name: "bad fd: regular file", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x101", hostileSession},
			run: badFD(func(e *hostileEnv) *os.File { return open(e, regular, os.O_RDWR) })},
		{name: "bad fd: directory", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x101", hostileSession},
			run: badFD(func(e *hostileEnv) *os.File { return open(e, e.dir, os.O_RDONLY) })},
		{name: "bad fd: /dev/null", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x101", hostileSession},
			run: badFD(func(e *hostileEnv) *os.File { return open(e, os.DevNull, os.O_RDWR) })},
		{name: "bad fd: O_PATH", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x101", hostileSession},
			run: badFD(func(e *hostileEnv) *os.File {
				fd, err := unix.Open(regular, unix.O_PATH|unix.O_CLOEXEC, 0)
				if err != nil {
					e.t.Fatal(err)
				}
				return e.keep(os.NewFile(uintptr(fd), "o_path"))
			})},
		{name: "bad fd: socket", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x101", hostileSession},
			run: badFD(func(e *hostileEnv) *os.File {
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					e.t.Fatal(err)
				}
				e.keep(os.NewFile(uintptr(fds[1]), "sock1"))
				return e.keep(os.NewFile(uintptr(fds[0]), "sock0"))
			})},
		{name: "bad fd: luod's own session fd", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x101"},
			run: func(e *hostileEnv) *proto.Response {
				// A session fd (pipe end on the fake) handed back to luod.
				r, err := proto.NewRequest(e.c.nextID(), proto.OpCreateSession, proto.CreateSessionArgs{Name: "vm-self"})
				if err != nil {
					e.t.Fatal(err)
				}
				if err := e.c.pc.Send(r); err != nil {
					e.t.Fatal(err)
				}
				resp, out := e.c.recv()
				for _, f := range out {
					e.keep(f)
				}
				if !resp.OK || len(out) != 1 {
					e.t.Fatalf("create_session: %+v, %d fds", resp, len(out))
				}
				got := e.c.req(proto.OpPreserve, preserveArgs("vm-self", 0x101), out[0])
				e.delete("vm-self")
				return got
			}},
		{name: "bad fd: second file fails, first stays", code: proto.CodeBadFD, anyID: true,
			naming: []string{"token 0x202", "0x201", "still preserved", "1 later file"},
			run: func(e *hostileEnv) *proto.Response {
				e.create("vm-partial")
				defer e.delete("vm-partial")
				got := e.c.req(proto.OpPreserve, preserveArgs("vm-partial", 0x201, 0x202, 0x203),
					e.memfd("ok"), open(e, os.DevNull, os.O_RDONLY), e.memfd("later"))
				var ss proto.SessionsResult
				json.Unmarshal(e.c.mustOK(proto.OpListSessions, nil), &ss)
				for _, s := range ss.Sessions {
					if s.Name == "vm-partial" && (len(s.Files) != 1 || s.Files[0].Token != 0x201) {
						e.t.Errorf("after a partial preserve the session lists %+v, want token 0x201 only", s.Files)
					}
				}
				return got
			}},
		{name: "same memfd twice in one request", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x2", "same file as token 0x1"},
			run: func(e *hostileEnv) *proto.Response {
				m := e.memfd("a")
				return e.c.req(proto.OpPreserve, preserveArgs(hostileSession, 1, 2), m, m)
			}},
		{name: "token twice in one request", code: proto.CodeExists, anyID: true, naming: []string{"token 0x5", "twice"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpPreserve, preserveArgs(hostileSession, 5, 5), e.memfd("a"), e.memfd("b"))
			}},
		{name: "token reused", code: proto.CodeExists, anyID: true, naming: []string{"token 0x7", "vm-reuse", "already used"},
			run: func(e *hostileEnv) *proto.Response {
				e.create("vm-reuse")
				defer e.delete("vm-reuse")
				e.c.mustOK(proto.OpPreserve, preserveArgs("vm-reuse", 7), e.memfd("first"))
				return e.c.req(proto.OpPreserve, preserveArgs("vm-reuse", 7), e.memfd("second"))
			}},
		{name: "memfd preserved in another session", code: proto.CodeBadFD, anyID: true, naming: []string{"token 0x9", "vm-b", "EBUSY"},
			run: func(e *hostileEnv) *proto.Response {
				e.create("vm-a")
				defer e.delete("vm-a")
				e.create("vm-b")
				defer e.delete("vm-b")
				m := e.memfd("shared")
				e.c.mustOK(proto.OpPreserve, preserveArgs("vm-a", 8), m)
				return e.c.req(proto.OpPreserve, preserveArgs("vm-b", 9), m)
			}},
		{name: "declare then reclaim an open session", code: proto.CodeBadRequest, anyID: true, naming: []string{"vm-decl", "open"},
			run: func(e *hostileEnv) *proto.Response {
				e.create("vm-decl")
				defer e.delete("vm-decl")
				e.c.mustOK(proto.OpDeclare, proto.DeclareArgs{Session: "vm-decl", Files: []proto.FileSpec{{Token: 1}, {Token: 2}}})
				return e.c.req(proto.OpReclaim, proto.ReclaimArgs{Name: "vm-decl", Finish: true})
			}},
		{name: "retrieve an open session", code: proto.CodeBadRequest, anyID: true, naming: []string{hostileSession, "open"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpRetrieveSession, proto.RetrieveSessionArgs{Name: hostileSession})
			}},
		{name: "finish an open session", code: proto.CodeBadRequest, anyID: true, naming: []string{hostileSession},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpFinishSession, proto.FinishSessionArgs{Name: hostileSession})
			}},
		{name: "preserve into a missing session", code: proto.CodeNotFound, anyID: true, naming: []string{"vm-none"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpPreserve, preserveArgs("vm-none", 1), e.memfd("a"))
			}},
		{name: "create an existing session", code: proto.CodeExists, anyID: true, naming: []string{hostileSession},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpCreateSession, proto.CreateSessionArgs{Name: hostileSession})
			}},

		// Session names.
		{name: "name with NUL", code: proto.CodeInvalidName, id: 77, naming: []string{"0x00", "position 1"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw(req("create_session", `{"name":"a\u0000b"}`)) }},
		{name: "name with slash", code: proto.CodeInvalidName, id: 77, naming: []string{"'/'", "position 2"},
			run: func(e *hostileEnv) *proto.Response { return e.c.raw(req("create_session", `{"name":"vm\/x"}`)) }},
		{name: "name of 64 bytes", code: proto.CodeInvalidName, anyID: true, naming: []string{"64 bytes", "63"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpCreateSession, proto.CreateSessionArgs{Name: strings.Repeat("a", 64)})
			}},
		{name: "name of invalid UTF-8", code: proto.CodeInvalidName, id: 77, naming: []string{"position 1"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.raw(req("create_session", "{\"name\":\"a\xff\xfeb\"}"))
			}},
		{name: "name with reserved prefix", code: proto.CodeInvalidName, anyID: true, naming: []string{"luod-vm", "reserved"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpCreateSession, proto.CreateSessionArgs{Name: "luod-vm"})
			}},
		{name: "delete luod's own session", code: proto.CodeInvalidName, anyID: true, naming: []string{`"luod"`, "reserved"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpDeleteSession, proto.DeleteSessionArgs{Name: "luod"})
			}},
		{name: "reclaim luod's own session", code: proto.CodeInvalidName, anyID: true, naming: []string{`"luod"`, "reserved"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpReclaim, proto.ReclaimArgs{Name: "luod"})
			}},
		{name: "empty name", code: proto.CodeInvalidName, anyID: true, naming: []string{"empty"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpCreateSession, proto.CreateSessionArgs{Name: ""})
			}},
		{name: "name starting with a dot", code: proto.CodeInvalidName, anyID: true, naming: []string{"first"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpCreateSession, proto.CreateSessionArgs{Name: ".hidden"})
			}},
		{name: "name with newline", code: proto.CodeInvalidName, anyID: true, naming: []string{"0x0a"},
			run: func(e *hostileEnv) *proto.Response {
				return e.c.req(proto.OpCreateSession, proto.CreateSessionArgs{Name: "vm\nINFO forged log line"})
			}},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &hostileEnv{t: t, c: c, fake: fake, dir: dir}
			c.t = t
			defer func() { c.t = env.t }()
			before := openFDs(t)
			resp := tc.run(e)
			closeFiles(e.files)
			switch {
			case resp.OK:
				t.Errorf("answered ok %s, want %s", resp.Result, tc.code)
			case resp.Error.Code != tc.code:
				t.Errorf("code %s (%s), want %s", resp.Error.Code, resp.Error.Message, tc.code)
			case !tc.anyID && resp.ID != tc.id:
				t.Errorf("response id %d, want %d", resp.ID, tc.id)
			}
			if resp.Error != nil {
				for _, s := range tc.naming {
					if !strings.Contains(resp.Error.Message, s) {
						t.Errorf("message %q does not name %q", resp.Error.Message, s)
					}
				}
			}
			c.hello()
			waitFDs(t, fake, before, dir, 50*time.Millisecond)
		})
	}

	t.Run("random bytes", func(t *testing.T) {
		c.t = t
		defer func() { c.t = env.t }()
		before := openFDs(t)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range 200 {
			b := make([]byte, 1+rng.IntN(2048))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			if i%2 == 1 {
				b[0] = '{' // get past the first token now and then
			}
			resp := c.raw(b)
			if resp.OK || resp.Error.Code != proto.CodeBadRequest || resp.ID != 0 ||
				!strings.Contains(resp.Error.Message, "request") {
				t.Fatalf("%d random bytes %.16q…: %+v %+v, want bad_request with id 0", len(b), b, resp, resp.Error)
			}
		}
		c.hello()
		waitFDs(t, fake, before, dir, 50*time.Millisecond)
	})

	t.Run("253 fds", func(t *testing.T) {
		e := &hostileEnv{t: t, c: c, fake: fake, dir: dir}
		c.t = t
		defer func() { c.t = env.t }()
		before := openFDs(t)
		e.create("vm-bulk")
		var files []*os.File
		var tokens []uint64
		for i := range proto.MaxFDs {
			files = append(files, e.memfd(strings.Repeat("x", i)))
			tokens = append(tokens, uint64(1000+i))
		}
		var res proto.PreserveResult
		if err := json.Unmarshal(c.mustOK(proto.OpPreserve, preserveArgs("vm-bulk", tokens...), files...), &res); err != nil {
			t.Fatal(err)
		}
		if len(res.Files) != proto.MaxFDs {
			t.Fatalf("preserved %d files, want %d", len(res.Files), proto.MaxFDs)
		}
		for i, f := range res.Files {
			if f.Token != tokens[i] || f.Size != int64(i) {
				t.Fatalf("file %d = %+v, want token %d size %d", i, f, tokens[i], i)
			}
		}
		closeFiles(e.files)
		e.files = nil
		var ss proto.SessionsResult
		json.Unmarshal(c.mustOK(proto.OpListSessions, nil), &ss)
		found := false
		for _, s := range ss.Sessions {
			if s.Name == "vm-bulk" {
				found = true
				if len(s.Files) != proto.MaxFDs {
					t.Errorf("list_sessions shows %d files of vm-bulk, want %d", len(s.Files), proto.MaxFDs)
				}
			}
		}
		if !found {
			t.Errorf("vm-bulk not listed: %+v", ss)
		}
		for _, s := range fake.Sessions() {
			if s.Name == "vm-bulk" && len(s.Tokens) != proto.MaxFDs {
				t.Errorf("the kernel holds %d files of vm-bulk, want %d", len(s.Tokens), proto.MaxFDs)
			}
		}
		e.delete("vm-bulk")
		c.hello()
		waitFDs(t, fake, before, dir, 50*time.Millisecond)
	})

	t.Run("254 fds", func(t *testing.T) {
		e := &hostileEnv{t: t, c: c, fake: fake, dir: dir}
		c.t = t
		defer func() { c.t = env.t }()
		before := openFDs(t)
		var files []*os.File
		var fds []int
		for range proto.MaxFDs + 1 {
			f := e.memfd("y")
			files = append(files, f)
			fds = append(fds, int(f.Fd()))
		}
		if err := c.pc.SendRaw([]byte(`{"v":1,"id":5,"op":"hello"}`), files...); !errors.Is(err, proto.ErrTooManyFDs) {
			t.Errorf("SendRaw of 254 fds = %v, want ErrTooManyFDs", err)
		}
		// Past the library: the kernel itself refuses more than
		// SCM_MAX_FD, in one SCM_RIGHTS message or split over two, so
		// such a packet never reaches luod.
		msg := []byte(`{"v":1,"id":5,"op":"preserve"}`)
		for _, oob := range [][]byte{
			unix.UnixRights(fds...),
			append(unix.UnixRights(fds[:200]...), unix.UnixRights(fds[200:]...)...),
		} {
			_, _, err := c.uc.WriteMsgUnix(msg, oob, nil)
			if !errors.Is(err, unix.EINVAL) {
				t.Errorf("sendmsg with %d fds = %v, want EINVAL", len(fds), err)
			}
		}
		closeFiles(e.files)
		c.hello()
		waitFDs(t, fake, before, dir, 50*time.Millisecond)
	})

	t.Run("admin ops with forged credentials", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("sending SCM_CREDENTIALS of another uid needs root (CAP_SETUID); a non-root test cannot pose as a non-admin other than itself")
		}
		c.t = t
		defer func() { c.t = env.t }()
		before := openFDs(t)
		creds := unix.UnixCredentials(&unix.Ucred{Pid: int32(os.Getpid()), Uid: 1000, Gid: 1000})
		for i, op := range []string{proto.OpStatus, proto.OpLoad, proto.OpUpgrade, proto.OpInspect, proto.OpSessions, proto.OpUnload, proto.OpMetrics} {
			id := uint64(500 + i)
			b := fmt.Appendf(nil, `{"v":1,"id":%d,"op":%q}`, id, op)
			if _, _, err := c.uc.WriteMsgUnix(b, creds, nil); err != nil {
				t.Fatalf("sendmsg with SCM_CREDENTIALS: %v", err)
			}
			resp, out := c.recv()
			closeFiles(out)
			if resp.OK || resp.ID != id || resp.Error.Code != proto.CodePermissionDenied ||
				!strings.Contains(resp.Error.Message, op) || !strings.Contains(resp.Error.Message, "uid 1000") {
				t.Errorf("%s as uid 1000: %+v %+v, want permission_denied naming the op and uid", op, resp, resp.Error)
			}
		}
		// The same op with the connection's own (root) credentials works:
		// authorization follows the packet, not the connection.
		c.mustOK(proto.OpStatus, nil)
		// A workload op as uid 1000 sees uid 1000's sessions only.
		b := []byte(`{"v":1,"id":600,"op":"list_sessions"}`)
		if _, _, err := c.uc.WriteMsgUnix(b, creds, nil); err != nil {
			t.Fatal(err)
		}
		resp, out := c.recv()
		closeFiles(out)
		var ss proto.SessionsResult
		if !resp.OK || json.Unmarshal(resp.Result, &ss) != nil || len(ss.Sessions) != 0 {
			t.Errorf("list_sessions as uid 1000 = %+v %s, want no sessions (root's are not its)", resp, resp.Result)
		}
		c.hello()
		waitFDs(t, fake, before, dir, 50*time.Millisecond)
	})

	env.delete(hostileSession)
}

// TestStalledReaderDoesNotStallOthers: a client that sends requests and
// never reads the replies fills its receive queue; luod's writes to it
// time out (Config.WriteTimeout) and it keeps serving everyone else
// promptly, and that client too once it reads again.
func TestStalledReaderDoesNotStallOthers(t *testing.T) {
	const writeTimeout = 200 * time.Millisecond
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, func(c *Config) { c.WriteTimeout = writeTimeout })
	other := dialRaw(t, h.sock)
	other.hello()
	before := openFDs(t)

	mute := dialRaw(t, h.sock)
	var stop atomic.Bool
	var sent atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		for id := uint64(1); !stop.Load(); id++ {
			mute.pc.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			err := mute.pc.SendRaw(fmt.Appendf(nil, `{"v":1,"id":%d,"op":"hello"}`, id))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // luod is not reading right now: it is stuck writing to us
			}
			if err != nil {
				writerDone <- err
				return
			}
			sent.Add(1)
		}
		writerDone <- nil
	}()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(h.logText(), "send failed") {
		if time.Now().After(deadline) {
			stop.Store(true)
			t.Fatalf("luod never gave up writing to the client that does not read (%d requests sent)", sent.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The mute client's queue is full and luod is writing to it (each
	// write waiting up to writeTimeout); the other client is served
	// meanwhile, each time faster than one write timeout.
	var slowest time.Duration
	for range 20 {
		t0 := time.Now()
		other.hello()
		slowest = max(slowest, time.Since(t0))
	}
	if slowest >= writeTimeout {
		t.Errorf("a hello took %v while another client did not read; want under the write timeout %v", slowest, writeTimeout)
	}
	// A new client connects and is served too.
	late := dialRaw(t, h.sock)
	t0 := time.Now()
	late.hello()
	if d := time.Since(t0); d >= writeTimeout {
		t.Errorf("a new client's hello took %v", d)
	}
	late.close()

	stop.Store(true)
	if err := <-writerDone; err != nil {
		t.Fatalf("the mute client's sends failed: %v", err)
	}
	t.Logf("the mute client sent %d requests unread", sent.Load())

	// The mute client reads again: luod still serves its connection
	// (responses that timed out are lost; the connection is in step).
	const last = 1 << 40
	got := make(chan error, 1)
	go func() {
		mute.pc.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			raw, files, _, err := mute.pc.Recv()
			closeFiles(files)
			if err != nil {
				got <- err
				return
			}
			resp, _, err := proto.DecodeServerMessage(raw)
			if err != nil {
				got <- err
				return
			}
			if resp != nil && resp.ID == last {
				if !resp.OK {
					got <- fmt.Errorf("last hello: %+v", resp.Error)
				}
				got <- nil
				return
			}
		}
	}()
	mute.pc.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if err := mute.pc.SendRaw(fmt.Appendf(nil, `{"v":1,"id":%d,"op":"hello"}`, last)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the formerly mute client: %v", err)
	}
	mute.close()
	other.hello()
	waitFDs(t, fake, before, dir, 5*time.Second) // luod closes its end of mute's connection when it sees EOF
}

// TestConnectionLimit: past --limits.connections a new client gets a
// "limit" error and is closed; the clients already served are not
// disturbed, and a slot that frees is taken by the next client.
func TestConnectionLimit(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, func(c *Config) { c.MaxConnections = 2 })
	a := dialRaw(t, h.sock)
	a.hello()
	before := openFDs(t)
	b := dialRaw(t, h.sock)
	b.hello()

	over := dialRaw(t, h.sock)
	resp, files := over.recv() // luod answers before any request
	closeFiles(files)
	if resp.OK || resp.Error == nil || resp.Error.Code != proto.CodeLimit || !strings.Contains(resp.Error.Message, "at most 2 connections") {
		t.Fatalf("the third client got %+v, want a limit error naming 2 connections", resp)
	}
	over.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, _, err := over.pc.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("the third client's connection after the refusal: %v, want EOF", err)
	}
	over.close()
	a.hello()
	b.hello()

	b.close()
	var late *rawClient
	for deadline := time.Now().Add(5 * time.Second); ; {
		// luod frees b's slot when it sees b's EOF.
		c := dialRaw(t, h.sock)
		// Until then luod refuses and closes, which may reset the
		// connection before its answer is read: any failure is a retry.
		c.pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := c.pc.SendRaw([]byte(`{"v":1,"id":1,"op":"hello"}`)); err == nil {
			raw, files, _, err := c.pc.Recv()
			closeFiles(files)
			if resp, _, derr := proto.DecodeServerMessage(raw); err == nil && derr == nil && resp != nil && resp.OK {
				late = c
				break
			}
		}
		c.close()
		if time.Now().After(deadline) {
			t.Fatal("a freed connection slot was never taken by a new client")
		}
		time.Sleep(20 * time.Millisecond)
	}
	late.close()
	a.hello()
	waitFDs(t, fake, before, dir, 5*time.Second)
}

// TestTooLargeAnswerIsAnError: an answer over the protocol's message size
// (the listing of one session with many files and long labels: a page
// holds whole sessions) comes back as a "limit" error, not as silence,
// and the connection goes on. A session's files alone never get there:
// luod refuses to declare or preserve more than the answer that hands
// the session back carries.
func TestTooLargeAnswerIsAnError(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	labels := map[string]string{}
	for i := range session.MaxLabels {
		labels[fmt.Sprintf("k%02d", i)] = strings.Repeat("<", 200) // 1200 bytes escaped
	}
	s, err := c.CreateSession(ctx(t), "vm-big", labels)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	decl := make([]proto.FileSpec, 4000)
	for i := range decl {
		decl[i] = proto.FileSpec{Token: uint64(i + 1), Label: fmt.Sprintf("guest-ram-%d", i)}
	}
	if err := c.Declare(ctx(t), "vm-big", decl); !isCode(err, proto.CodeLimit) || !strings.Contains(err.Error(), "too many for one session") {
		t.Fatalf("declare of 4000 files = %v, want a limit error", err)
	}
	if err := c.Declare(ctx(t), "vm-big", decl[:700]); err != nil {
		t.Fatal(err)
	}
	_, err = c.Sessions(ctx(t))
	if !isCode(err, proto.CodeLimit) || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("sessions of a session of 700 files and long labels = %v, want a limit error", err)
	}
	if _, err := c.Status(ctx(t)); err != nil {
		t.Fatalf("status after the refused answer: %v", err)
	}
}
