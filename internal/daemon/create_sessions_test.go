//go:build linux

package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// TestCreateSessions creates 300 sessions with CreateSessions (several
// create_sessions requests: proto.MaxCreateSessions sessions and
// proto.MaxFDs files a request), among them sessions without files, one
// of three files and one of more files than a request carries, while two
// are refused on their own (name taken, a file that is no memfd) and one
// locally (named twice). Every other one is created with its files, in
// luod, the kernel and the fd store; a luod killed right after answering
// leaves them all to its successor.
func TestCreateSessions(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	defer fake.Close()
	store := &fakeStore{fds: map[string]*os.File{}}
	sameBoot := func(c *Config) { c.BootID = "batch-boot"; c.FDStore = store }
	h := boot(t, dir, fake, false, sameBoot)
	c := h.dial()
	if _, err := c.CreateSession(ctx(t), "vm-taken", nil); err != nil {
		t.Fatal(err)
	}
	notMemfd, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer notMemfd.Close()

	const n = 300
	big := proto.MaxFDs + 10
	var req []client.SessionToCreate
	tokensOf := map[string][]uint64{}
	for i := range n {
		name := fmt.Sprintf("vm-%04d", i)
		s := client.SessionToCreate{Name: name, Labels: map[string]string{"vm": name}}
		switch {
		case i%50 == 7: // no files
		case i == 10:
			for j := range 3 {
				s.Files = append(s.Files, client.FileToPreserve{File: memfd(t, []byte(name)), Token: uint64(j + 1), Label: "ram"})
			}
		case i == 20:
			for j := range big {
				s.Files = append(s.Files, client.FileToPreserve{File: memfd(t, []byte{byte(j)}), Token: uint64(j + 1)})
			}
		default:
			s.Files = []client.FileToPreserve{{File: memfd(t, []byte(name)), Token: 7, Label: "ram"}}
		}
		for _, f := range s.Files {
			tokensOf[name] = append(tokensOf[name], f.Token)
		}
		req = append(req, s)
	}
	refused := map[int]proto.Code{
		n:     proto.CodeExists, // vm-taken
		n + 1: proto.CodeBadFD,  // not a memfd
	}
	req = append(req,
		client.SessionToCreate{Name: "vm-taken", Files: []client.FileToPreserve{{File: memfd(t, nil), Token: 1}}},
		client.SessionToCreate{Name: "vm-devnull", Files: []client.FileToPreserve{
			{File: memfd(t, nil), Token: 1}, {File: notMemfd, Token: 2}}},
		client.SessionToCreate{Name: "vm-0001"}, // named twice: refused locally
	)

	got, err := c.CreateSessions(ctx(t), req)
	if err == nil || !strings.Contains(err.Error(), "3 of 303 sessions not created") {
		t.Fatalf("CreateSessions = %v; want 3 of 303 not created", err)
	}
	if len(got) != len(req) {
		t.Fatalf("%d results for %d sessions", len(got), len(req))
	}
	for i, r := range got {
		switch code, bad := refused[i]; {
		case bad:
			if !isCode(r.Err, code) {
				t.Fatalf("%s: err = %v, want %s", req[i].Name, r.Err, code)
			}
		case i == n+2:
			if r.Err == nil || !strings.Contains(r.Err.Error(), "named twice") {
				t.Fatalf("%s given twice: err = %v", req[i].Name, r.Err)
			}
		case r.Err != nil:
			t.Fatalf("%s: %v", req[i].Name, r.Err)
		case len(r.Files) != len(req[i].Files):
			t.Fatalf("%s: %d files answered, want %d", req[i].Name, len(r.Files), len(req[i].Files))
		}
	}
	if _, err := h.d.custody.Get(session.Caller{Admin: true}, "vm-devnull"); err == nil {
		t.Fatal("luod holds vm-devnull, whose file could not be preserved")
	}
	if _, ok := findSession(fake, "vm-devnull"); ok {
		t.Fatal("the kernel still has vm-devnull")
	}
	check := func(h *host, when string) {
		t.Helper()
		for i := range n {
			name := req[i].Name
			cs, err := h.d.custody.Get(session.Caller{Admin: true}, name)
			if err != nil || cs.Labels["vm"] != name || len(cs.Files) != len(tokensOf[name]) {
				t.Fatalf("%s: custody of %s = %+v, %v", when, name, cs, err)
			}
			checkFake(t, fake, name, tokensOf[name])
			if !store.has(sessionFDName(name)) {
				t.Fatalf("%s: %s is not in the fd store", when, name)
			}
		}
	}
	check(h, "created")

	c.Close()
	h.stop() // luod's fds all close, as at a SIGKILL after the answer
	h2 := boot(t, dir, fake, false, func(c *Config) { sameBoot(c); c.Inherited = store.passBack(t) })
	if st := h2.d.custody.Snapshot(); st.Open != n+1 { // and vm-taken
		t.Fatalf("after the restart luod holds %+v, want %d open", st, n+1)
	}
	check(h2, "after the restart")
}

// TestCreateSessionsHostile: create_sessions requests refused whole (no
// session, too many, a name twice, files and fds that do not match, an
// unknown field) create nothing and leak no fd; per-session refusals are
// answered in request order without fds, the others created.
func TestCreateSessionsHostile(t *testing.T) {
	fake := ioctltest.New()
	defer fake.Close()
	dir := t.TempDir()
	h := boot(t, dir, fake, false, nil)
	c := dialRaw(t, h.sock)
	c.hello()
	before := openFDs(t)
	e := &hostileEnv{t: t, c: c, fake: fake, dir: dir}

	one := func(name string, tokens ...uint64) proto.SessionToCreate {
		s := proto.SessionToCreate{Name: name}
		for _, tok := range tokens {
			s.Files = append(s.Files, proto.FileSpec{Token: tok})
		}
		return s
	}
	many := make([]proto.SessionToCreate, proto.MaxCreateSessions+1)
	for i := range many {
		many[i] = one(fmt.Sprintf("vm-%d", i))
	}
	fds := func(k int) []*os.File {
		out := make([]*os.File, k)
		for i := range out {
			out[i] = e.memfd("x")
		}
		return out
	}
	for _, tc := range []struct {
		what string
		args any
		fds  []*os.File
		code proto.Code
		msg  string
	}{
		{"no session", proto.CreateSessionsArgs{}, nil, proto.CodeBadRequest, "names no session"},
		{"too many sessions", proto.CreateSessionsArgs{Sessions: many}, nil, proto.CodeLimit, "at most 256"},
		{"a name twice", proto.CreateSessionsArgs{Sessions: []proto.SessionToCreate{one("vm-a", 1), one("vm-b"), one("vm-a", 2)}},
			fds(2), proto.CodeBadRequest, `"vm-a" twice`},
		{"fewer fds than files", proto.CreateSessionsArgs{Sessions: []proto.SessionToCreate{one("vm-a", 1), one("vm-b", 1)}},
			fds(1), proto.CodeBadRequest, "2 files but 1 file descriptors"},
		{"more fds than files", proto.CreateSessionsArgs{Sessions: []proto.SessionToCreate{one("vm-a", 1), one("vm-b")}},
			fds(3), proto.CodeBadRequest, "1 files but 3 file descriptors"},
		{"more files than fds can carry", proto.CreateSessionsArgs{Sessions: []proto.SessionToCreate{
			one("vm-a", tokens(proto.MaxFDs)...), one("vm-b", 1)}},
			fds(proto.MaxFDs), proto.CodeBadRequest, "254 files but 253 file descriptors"},
		{"unknown field in a session", map[string]any{"sessions": []any{map[string]any{"name": "vm-a", "fds": 1}}},
			nil, proto.CodeBadRequest, `"fds"`},
		{"fds to create_session without files", proto.CreateSessionArgs{Name: "vm-a"}, fds(1), proto.CodeBadRequest, "takes no file descriptors"},
	} {
		op := proto.OpCreateSessions
		if _, ok := tc.args.(proto.CreateSessionArgs); ok {
			op = proto.OpCreateSession
		}
		resp := c.req(op, tc.args, tc.fds...)
		if resp.OK || resp.Error.Code != tc.code || !strings.Contains(resp.Error.Message, tc.msg) {
			t.Fatalf("%s: answered %+v %+v; want %s naming %q", tc.what, resp.Result, resp.Error, tc.code, tc.msg)
		}
		if ss := fake.Sessions(); len(ss) != 0 {
			t.Fatalf("%s: the kernel has %d sessions after a request refused whole", tc.what, len(ss))
		}
	}

	// Refused one by one: the answer is positional, with no fd.
	e.create("vm-taken")
	long := strings.Repeat("x", 2000)
	args := proto.CreateSessionsArgs{Sessions: []proto.SessionToCreate{
		one("vm-ok", 1),
		one("vm-taken", 1),
		{Name: "vm-" + long}, // invalid: too long
		{Name: "vm-labels", Labels: map[string]string{"": "empty key"}},
		one("vm-tokens", 5, 5),
		one("vm-ok2"),
	}}
	r, err := proto.NewRequest(c.nextID(), proto.OpCreateSessions, args)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.pc.Send(r, fds(4)...); err != nil {
		t.Fatal(err)
	}
	resp, out := c.recv()
	closeFiles(out)
	if !resp.OK || len(out) != 0 {
		t.Fatalf("create_sessions = %+v, %d fds; want ok and no fd", resp, len(out))
	}
	var res proto.CreateSessionsResult
	if err := json.Unmarshal(resp.Result, &res); err != nil || len(res.Sessions) != len(args.Sessions) {
		t.Fatalf("result %s: %v", resp.Result, err)
	}
	want := []proto.Code{"", proto.CodeExists, proto.CodeInvalidName, proto.CodeBadRequest, proto.CodeExists, ""}
	for i, s := range res.Sessions {
		switch {
		case want[i] == "" && (s.Error != nil || len(s.Files) != len(args.Sessions[i].Files)):
			t.Fatalf("%s: %+v, want created", args.Sessions[i].Name[:min(20, len(args.Sessions[i].Name))], s)
		case want[i] != "" && (s.Error == nil || s.Error.Code != want[i]):
			t.Fatalf("session %d: %+v, want %s", i, s, want[i])
		}
	}
	checkFake(t, fake, "vm-ok", []uint64{1})
	checkFake(t, fake, "vm-ok2", nil)
	if len(fake.Sessions()) != 3 { // and vm-taken
		t.Fatalf("the kernel has %d sessions, want 3", len(fake.Sessions()))
	}
	for _, name := range []string{"vm-ok", "vm-ok2", "vm-taken"} {
		e.delete(name)
	}
	closeFiles(e.files)
	c.hello()
	waitFDs(t, fake, before, dir, 200*time.Millisecond)
}

// TestCreateSessionsAnswerFits: refusals whose messages quote long
// labels still make an answer that fits one message, codes kept.
func TestCreateSessionsAnswerFits(t *testing.T) {
	res := &proto.CreateSessionsResult{Sessions: make([]proto.CreatedSession, proto.MaxCreateSessions)}
	for i := range res.Sessions {
		res.Sessions[i].Error = &proto.Error{Code: proto.CodeLimit, Message: strings.Repeat("<\x01>", 400)}
	}
	fitAnswer(res)
	b, err := json.Marshal(res)
	if err != nil || len(b)+256 > proto.MaxMessageSize {
		t.Fatalf("answer of %d bytes, %v", len(b), err)
	}
	for _, s := range res.Sessions {
		if s.Error.Code != proto.CodeLimit {
			t.Fatalf("code lost: %+v", s.Error)
		}
	}
	if !errors.Is(res.Sessions[0].Error, proto.ErrLimit) {
		t.Fatalf("%v is not ErrLimit", res.Sessions[0].Error)
	}
}

// TestCreateSessionsStoreInOneBatch: the sessions of one create_sessions
// request go into the fd store in one batch (one sendmmsg(2) under
// systemd), the refused ones not at all.
func TestCreateSessionsStoreInOneBatch(t *testing.T) {
	fake := ioctltest.New()
	defer fake.Close()
	store := &fakeStore{fds: map[string]*os.File{}}
	h := boot(t, t.TempDir(), fake, false, func(c *Config) { c.FDStore = store })
	notMemfd, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer notMemfd.Close()
	req := []client.SessionToCreate{
		{Name: "vm-a", Files: []client.FileToPreserve{{File: memfd(t, []byte("a")), Token: 1}}},
		{Name: "vm-bad", Files: []client.FileToPreserve{{File: notMemfd, Token: 1}}},
		{Name: "vm-b"},
		{Name: "vm-c", Files: []client.FileToPreserve{{File: memfd(t, []byte("c")), Token: 1}}},
	}
	got, err := h.dial().CreateSessions(ctx(t), req)
	if err == nil || len(got) != len(req) || !isCode(got[1].Err, proto.CodeBadFD) {
		t.Fatalf("CreateSessions = %+v, %v; want vm-bad refused", got, err)
	}
	store.mu.Lock()
	batches := slices.Clone(store.batches)
	store.mu.Unlock()
	if !slices.Equal(batches, []int{3}) {
		t.Errorf("sessions stored in batches %v, want one of 3", batches)
	}
	for _, n := range []string{"vm-a", "vm-b", "vm-c"} {
		if !store.has(sessionFDName(n)) {
			t.Errorf("%s is not in the fd store: %v", n, storeNames(store))
		}
	}
	if store.has(sessionFDName("vm-bad")) {
		t.Error("the refused vm-bad is in the fd store")
	}
}
