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
)

// TestReclaimClosesEveryFD: the files reclaim sends arrive byte-exact,
// and luod closes every fd it retrieved, whatever the answer: files sent
// over two answers, a reclaim refused after part of the session was
// retrieved, and an answer too large for a packet.
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
	// 250 labels of 255 bytes: the answer listing them passes 64 KiB.
	create("vm-big", 250, strings.Repeat("l", 255))
	h.kexec(t, c, dir)
	h.stop()

	h2 := boot(t, dir, fake, true, nil)
	c2 := h2.dial()
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
	if _, err := c2.Reclaim(ctx(t), "vm-big", false); !isCode(err, proto.CodeLimit) || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("reclaim of an answer past 64 KiB = %v, want a limit error", err)
	}
	c2.Hello(ctx(t)) // the requests before it are done
	waitFDs(t, fake, before, dir, 50*time.Millisecond)
}
