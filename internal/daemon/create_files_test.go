//go:build linux

package daemon

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// TestCreateSessionWithFiles: create_session carrying files preserves
// them into the new session in the same request; past one request's
// worth the rest follow as preserve requests.
func TestCreateSessionWithFiles(t *testing.T) {
	fake := ioctltest.New()
	defer fake.Close()
	h := boot(t, t.TempDir(), fake, false, nil)
	c := h.dial()
	for _, n := range []int{1, proto.MaxFDs, proto.MaxFDs + 47} {
		name := fmt.Sprintf("vm-%d", n)
		req := make([]client.FileToPreserve, n)
		want := make([]uint64, n)
		for i := range req {
			want[i] = uint64(1000 + i)
			req[i] = client.FileToPreserve{File: memfd(t, make([]byte, i+1)), Token: want[i], Label: fmt.Sprint("ram-", i)}
		}
		s, got, err := c.CreateSessionWithFiles(ctx(t), name, map[string]string{"vm": name}, req)
		if err != nil {
			t.Fatalf("%d files: %v", n, err)
		}
		if len(got) != n {
			t.Fatalf("%d files: %d answered", n, len(got))
		}
		for i, p := range got {
			if p.Token != want[i] || p.Size != int64(i+1) {
				t.Fatalf("%d files: file %d = %+v, want token %d size %d", n, i, p, want[i], i+1)
			}
		}
		checkFake(t, fake, name, want)
		cs, err := h.d.custody.Get(session.Caller{Admin: true}, name)
		if err != nil || len(cs.Files) != n || cs.Labels["vm"] != name || cs.Files[n-1].Label != fmt.Sprint("ram-", n-1) {
			t.Fatalf("%d files: custody = %+v, %v", n, cs, err)
		}
		// The session fd came back, as from create_session without files.
		if s == nil || s.File() == nil {
			t.Fatalf("%d files: no session fd", n)
		}
		s.Close()
	}
}

// TestCreateSessionWithFilesAllOrNothing: a file that cannot be preserved
// fails the request and leaves no session, in luod or in the kernel; the
// name is free again.
func TestCreateSessionWithFilesAllOrNothing(t *testing.T) {
	fake := ioctltest.New()
	defer fake.Close()
	h := boot(t, t.TempDir(), fake, false, nil)
	c := h.dial()
	notMemfd, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer notMemfd.Close()
	same := memfd(t, []byte("a"))
	for what, files := range map[string][]client.FileToPreserve{
		"token twice": {{File: memfd(t, []byte("a")), Token: 1}, {File: memfd(t, []byte("b")), Token: 1}},
		"same file":   {{File: same, Token: 1}, {File: same, Token: 2}},
		"not a memfd": {{File: memfd(t, []byte("a")), Token: 1}, {File: notMemfd, Token: 2}},
	} {
		_, got, err := c.CreateSessionWithFiles(ctx(t), "vm-1", nil, files)
		var pe *proto.Error
		if !errors.As(err, &pe) || len(got) != 0 {
			t.Fatalf("%s: create = %v, %v; want a protocol error and nothing preserved", what, got, err)
		}
		t.Logf("%s: %v", what, err)
		if _, err := h.d.custody.Get(session.Caller{Admin: true}, "vm-1"); err == nil {
			t.Fatalf("%s: luod still holds the session after %v", what, err)
		}
		if ss := fake.Sessions(); len(ss) != 0 {
			t.Fatalf("%s: the kernel still has %d sessions after %v", what, len(ss), err)
		}
	}
	// The name is free, and the two-step flow still works.
	s, err := c.CreateSession(ctx(t), "vm-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := c.Preserve(ctx(t), "vm-1", []client.FileToPreserve{{File: memfd(t, []byte("x")), Token: 7}}); err != nil {
		t.Fatal(err)
	}
	checkFake(t, fake, "vm-1", []uint64{7})
}
