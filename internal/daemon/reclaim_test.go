package daemon

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// TestReclaimClosesEveryFD: the files reclaim sends arrive byte-exact,
// and luod closes every fd it retrieved, whatever the answer: files sent
// over two answers, a reclaim refused after part of the session was
// retrieved, an answer of nearly 64 KiB, and a session of more files than
// an answer carries, which luod refuses untouched and pkg/client then
// takes through the session's fd.
func TestReclaimClosesEveryFD(t *testing.T) {
	dir := t.TempDir()
	fake := ioctltest.New()
	t.Cleanup(func() { fake.Close() })
	h := boot(t, dir, fake, false, nil)
	c := h.dial()
	content := func(name string, j int) []byte {
		return fmt.Appendf(nil, "%s/%d:%s", name, j, strings.Repeat("x", j*37))
	}
	create := func(name string, n int, label string) {
		t.Helper()
		files := make([]client.FileToPreserve, n)
		for j := range files {
			files[j] = client.FileToPreserve{File: memfd(t, content(name, j)), Token: uint64(j + 1), Label: label}
		}
		s, _, err := c.CreateSessionWithFiles(ctx(t), name, nil, files)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	create("vm-warm", 1, "")
	create("vm-a", 200, "ram")
	create("vm-b", 200, "ram")
	// A token declared but never preserved: RETRIEVE_FD of it fails
	// after the file before it was retrieved.
	create("vm-ghost", 1, "ram")
	if err := c.Declare(ctx(t), "vm-ghost", []proto.FileSpec{{Token: 99, Label: "ghost"}}); err != nil {
		t.Fatal(err)
	}
	// 200 labels of 255 bytes: the answer listing them takes most of
	// 64 KiB (210 would not be preserved: TestTooLargeAnswerIsAnError).
	create("vm-big", 200, strings.Repeat("l", 255))
	// More files than one answer carries fds, between two small sessions.
	create("vm-small-1", 2, "ram")
	create("vm-huge", proto.MaxFDs+47, "ram")
	create("vm-small-2", 2, "ram")
	h.kexec(t, c, dir)
	h.stop()

	h2 := boot(t, dir, fake, true, nil)
	c2 := h2.dial()
	c2.UseBackend(fake) // session fds it takes itself are the fake kernel's
	// The first reclaim opens what luod keeps open from then on.
	warm, err := c2.Reclaim(ctx(t), "vm-warm", true)
	if err != nil {
		t.Fatal(err)
	}
	warm[0].File.Close()
	before := openFDs(t)

	names := []string{"vm-a", "vm-b"}
	got, err := c2.ReclaimSessions(ctx(t), names, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, rf := range got {
		if len(rf) != 200 {
			t.Fatalf("%s: %d files, want 200", names[i], len(rf))
		}
		for j, f := range rf {
			want := content(names[i], j)
			b, err := io.ReadAll(io.NewSectionReader(f.File, 0, 1<<20))
			f.File.Close()
			if err != nil || f.Token != uint64(j+1) || f.Size != int64(len(want)) || !bytes.Equal(b, want) {
				t.Fatalf("%s token %d (%d bytes listed): %d bytes back, %v; not the %d preserved", names[i], f.Token, f.Size, len(b), err, len(want))
			}
		}
	}

	if _, err := c2.Reclaim(ctx(t), "vm-ghost", true); !isCode(err, proto.CodeNotFound) {
		t.Fatalf("reclaim of a session with a token never preserved = %v, want not_found", err)
	}
	// luod refuses a session that fits no answer before it retrieves or
	// finishes anything: the session is left as it was.
	raw := dialRaw(t, h2.sock)
	for _, name := range []string{"vm-huge"} {
		for _, op := range []struct {
			name string
			args any
		}{
			{proto.OpReclaim, proto.ReclaimArgs{Name: name, Finish: true}},
			{proto.OpReclaimSessions, proto.ReclaimSessionsArgs{Names: []string{name}, Finish: true}},
		} {
			resp := raw.req(op.name, op.args)
			if resp.OK || resp.Error.Code != proto.CodeLimit || !strings.Contains(resp.Error.Message, "more files than one answer carries") ||
				!strings.Contains(resp.Error.Message, "retrieve_session") {
				t.Fatalf("%s of %s = %+v, want a limit error naming retrieve_session", op.name, name, resp.Error)
			}
			if st := stateOf(h2, name); st != session.StateIncoming {
				t.Fatalf("%s after a refused %s: %q, want incoming", name, op.name, st)
			}
		}
	}
	raw.close()
	// pkg/client takes such sessions file by file through the session fd.
	checkAll := func(name string, rf []client.ReclaimedFile, n int) {
		t.Helper()
		if len(rf) != n {
			t.Fatalf("%s: %d files, want %d", name, len(rf), n)
		}
		for j, f := range rf {
			want := content(name, j)
			b, err := io.ReadAll(io.NewSectionReader(f.File, 0, 1<<20))
			f.File.Close()
			if err != nil || f.Token != uint64(j+1) || !bytes.Equal(b, want) {
				t.Fatalf("%s token %d: %d bytes back, %v; not the %d preserved", name, f.Token, len(b), err, len(want))
			}
		}
	}
	big, err := c2.Reclaim(ctx(t), "vm-big", true)
	if err != nil {
		t.Fatalf("client reclaim of vm-big: %v", err)
	}
	checkAll("vm-big", big, 200)
	names = []string{"vm-small-1", "vm-huge", "vm-small-2"}
	if got, err = c2.ReclaimSessions(ctx(t), names, true); err != nil {
		t.Fatalf("client reclaim_sessions past one answer: %v", err)
	}
	for i, n := range []int{2, proto.MaxFDs + 47, 2} {
		checkAll(names[i], got[i], n)
	}
	for _, name := range append(names, "vm-big") {
		if st := stateOf(h2, name); st != session.StateFinished {
			t.Fatalf("%s is %q after the reclaim with finish, want finished", name, st)
		}
	}
	c2.Hello(ctx(t)) // the requests before it are done
	waitFDs(t, fake, before, dir, 50*time.Millisecond)
}

// stateOf is the state of session name in h's custody, "" if it holds
// none.
func stateOf(h *host, name string) session.State {
	s, err := h.d.custody.Get(session.Caller{Admin: true}, name)
	if err != nil {
		return ""
	}
	return s.State
}
