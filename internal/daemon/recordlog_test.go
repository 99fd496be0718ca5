//go:build linux

package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// kill stops luod as a SIGKILL at this instant would: the state directory
// is left exactly as it is now (what Serve's last disk copy, or the
// background writer, would write later is undone) and luod's fds close,
// so the kernel drops the sessions only luod held.
func (h *host) kill() {
	h.t.Helper()
	dir := filepath.Join(h.dir, "state")
	type file struct {
		b   []byte
		mod time.Time
	}
	snap := map[string]file{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue // renamed meanwhile: a kill could have come before or after
		}
		if b, err := os.ReadFile(p); err == nil {
			snap[e.Name()] = file{b, fi.ModTime()}
		}
	}
	h.stop()
	if err := os.RemoveAll(dir); err != nil {
		h.t.Fatal(err)
	}
	os.MkdirAll(dir, 0o750)
	for name, f := range snap {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, f.b, 0o600); err != nil {
			h.t.Fatal(err)
		}
		os.Chtimes(p, f.mod, f.mod)
	}
}

// bootHolding boots luod in a new directory on fake with mod and creates
// the named sessions in it, for a test that then kills or stops it.
func bootHolding(t *testing.T, fake *ioctltest.Fake, mod func(*Config), names ...string) (*host, *client.Client) {
	t.Helper()
	h := boot(t, t.TempDir(), fake, false, mod)
	c := h.dial()
	for _, n := range names {
		if _, err := c.CreateSession(ctx(t), n, nil); err != nil {
			t.Fatal(err)
		}
	}
	return h, c
}

// lostAfterKill kills h (kill) and closes its client c (if not nil);
// alter (if not nil) changes the state directory left behind, and the
// next luod boots in h's directory on fake with mod. It returns that
// luod, its status and the sessions it names lost (lostNames).
func lostAfterKill(t *testing.T, h *host, c *client.Client, alter func(state string), fake *ioctltest.Fake, mod func(*Config)) (*host, *proto.Status, []string) {
	t.Helper()
	h.kill()
	if c != nil {
		c.Close()
	}
	if alter != nil {
		alter(filepath.Join(h.dir, "state"))
	}
	h2 := boot(t, h.dir, fake, false, mod)
	st, got := lostNames(t, h2)
	return h2, st, got
}

func lostNames(t *testing.T, h *host) (*proto.Status, []string) {
	t.Helper()
	st, err := h.dial().Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Clone(st.LostSessions)
	slices.Sort(got)
	return st, got
}

// TestKilledWithoutFDStoreNamesNewestLost: luod without systemd's fd
// store is killed right after answering; the next luod of the boot names
// every session it held as lost, the newest too, from the record log
// (the lazy manifest copy cannot have caught up).
func TestKilledWithoutFDStoreNamesNewestLost(t *testing.T) {
	fake := ioctltest.New()
	same := func(c *Config) { c.BootID = "kill-boot" }
	h, c := bootHolding(t, fake, same, "vm-1", "vm-2", "vm-3", "vm-4")
	if _, err := c.Preserve(ctx(t), "vm-4", []client.FileToPreserve{{File: memfd(t, []byte("x")), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSession(ctx(t), "vm-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSession(ctx(t), "vm-newest", nil); err != nil {
		t.Fatal(err)
	}
	// At once: no time for the disk writer.
	h2, _, got := lostAfterKill(t, h, c, nil, fake, same)
	if want := []string{"vm-1", "vm-3", "vm-4", "vm-newest"}; !slices.Equal(got, want) {
		t.Fatalf("lost after the kill = %v, want %v\n%s", got, want, h2.logText())
	}
	if strings.Contains(h2.logText(), "cannot read the manifest copy") {
		t.Errorf("the record log did not read:\n%s", h2.logText())
	}
}

// TestRecordLogTornLineIgnored: a luod killed while appending leaves a
// last line cut short; the next luod ignores it (its change was never
// answered) and names the rest.
func TestRecordLogTornLineIgnored(t *testing.T) {
	fake := ioctltest.New()
	same := func(c *Config) { c.BootID = "torn-boot" }
	h, c := bootHolding(t, fake, same, "vm-a", "vm-b")
	h2, _, got := lostAfterKill(t, h, c, func(state string) {
		f, err := os.OpenFile(filepath.Join(state, session.RecordFileName), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(`{"set":{"state":"open","name":"vm-tor`)
		f.Close()
	}, fake, same)
	if want := []string{"vm-a", "vm-b"}; !slices.Equal(got, want) {
		t.Fatalf("lost = %v, want %v\n%s", got, want, h2.logText())
	}
	if strings.Contains(h2.logText(), "cannot read the manifest copy") {
		t.Errorf("a torn last line made the record log unreadable:\n%s", h2.logText())
	}
}

// TestRecordLogCompacts: churn enough to outweigh the whole record; the
// log is rewritten (temp file + rename), stays small, leaves no temporary
// file behind, and reads back after a kill.
func TestRecordLogCompacts(t *testing.T) {
	fake := ioctltest.New()
	same := func(c *Config) { c.BootID = "compact-boot" }
	h, c := bootHolding(t, fake, same, "vm-keep")
	log := filepath.Join(h.dir, "state", session.RecordFileName)
	before, err := os.Stat(log)
	if err != nil {
		t.Fatal(err)
	}
	var appended int64
	last := before.Size()
	for i := 0; i < 800; i++ {
		n := fmt.Sprintf("vm-churn-%04d", i)
		if _, err := c.CreateSession(ctx(t), n, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteSession(ctx(t), n); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(log)
		if fi.Size() > last {
			appended += fi.Size() - last
		}
		last = fi.Size()
	}
	if _, err := c.CreateSession(ctx(t), "vm-last", nil); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(log)
	if err != nil {
		t.Fatal(err)
	}
	if appended < 64<<10 || fi.Size() >= appended || fi.Size() > 72<<10 {
		t.Fatalf("record log of %d bytes after %d appended: not compacted", fi.Size(), appended)
	}
	if os.SameFile(before, fi) {
		t.Fatal("the record log was never replaced")
	}
	if tmps, _ := filepath.Glob(filepath.Join(h.dir, "state", ".*tmp*")); len(tmps) > 0 {
		t.Fatalf("temporary files left: %v", tmps)
	}
	_, _, got := lostAfterKill(t, h, c, nil, fake, same)
	if want := []string{"vm-keep", "vm-last"}; !slices.Equal(got, want) {
		t.Fatalf("lost after compaction and a kill = %v, want %v", got, want)
	}
}

// TestColdBootAfterKillUsesRecordLog: a machine whose luod (without fd
// store) was killed right after an answer, then cold booted: the newer
// record log names the newest session lost.
func TestColdBootAfterKillUsesRecordLog(t *testing.T) {
	h, c := bootHolding(t, ioctltest.New(), nil, "vm-a", "vm-newest")
	_, st, got := lostAfterKill(t, h, c, nil, ioctltest.New(), nil)
	if want := []string{"vm-a", "vm-newest"}; st.Continuity != proto.ContinuityColdBoot || !slices.Equal(got, want) {
		t.Fatalf("after a cold boot: continuity %s, lost %v; want cold_boot, %v", st.Continuity, got, want)
	}
}

// TestDiskCopyNewerThanRecordLogWins: recovery reads the newer of the two
// files; a newer record log that does not read is a warning naming it,
// and the manifest copy is used.
func TestDiskCopyNewerThanRecordLogWins(t *testing.T) {
	h, c := bootHolding(t, ioctltest.New(), nil, "vm-old")
	state := filepath.Join(h.dir, "state")
	log := filepath.Join(state, session.RecordFileName)
	old := time.Now().Add(-time.Hour)
	var copyBytes []byte
	h2, _, got := lostAfterKill(t, h, c, func(state string) {
		rec, err := session.LoadRecordFile(state)
		if err != nil {
			t.Fatal(err)
		}
		m := rec.OpenSessions()
		m.Sessions[0].Name = "vm-copy"
		if copyBytes, err = m.Encode(); err != nil {
			t.Fatal(err)
		}
		if err := session.WriteFile(state, copyBytes, true); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(log, old, old)
	}, ioctltest.New(), nil)
	if !slices.Equal(got, []string{"vm-copy"}) {
		t.Fatalf("lost = %v, want the newer manifest copy's vm-copy", got)
	}

	// The manifest copy as before; the record log newer, but torn in its
	// first line.
	h3, _, got := lostAfterKill(t, h2, nil, func(state string) {
		if err := session.WriteFile(state, copyBytes, true); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(filepath.Join(state, session.ManifestFileName), old, old)
		os.WriteFile(log, []byte(`{"format":"luod-manifest-v1","sess`), 0o600)
	}, ioctltest.New(), nil)
	if !slices.Equal(got, []string{"vm-copy"}) {
		t.Fatalf("lost = %v, want the manifest copy's vm-copy", got)
	}
	if !strings.Contains(h3.logText(), `msg="cannot read the manifest copy on disk" file=`+log) {
		t.Errorf("no warning naming the unreadable %s:\n%s", log, h3.logText())
	}
}

// TestUnwritableStateDirIsAWarning: a state directory where nothing can
// be written costs a warning, never a request, and not a rewrite of the
// whole record for every change.
func TestUnwritableStateDirIsAWarning(t *testing.T) {
	dir := t.TempDir()
	// A file where the directory should be: every write fails (ENOTDIR),
	// for root too, as ENOSPC or EROFS would.
	os.WriteFile(filepath.Join(dir, "state"), nil, 0o600)
	h := boot(t, dir, ioctltest.New(), false, nil)
	c := h.dial()
	for i := 0; i < 20; i++ {
		if _, err := c.CreateSession(ctx(t), fmt.Sprintf("vm-%02d", i), nil); err != nil {
			t.Fatalf("create with an unwritable state directory: %v", err)
		}
	}
	text := h.logText()
	warned := strings.Count(text, `msg="cannot write the manifest copy" file=`+filepath.Join(dir, "state", session.RecordFileName))
	if warned == 0 || warned > 5 {
		t.Fatalf("%d warnings about the record log for 20 changes, want a few:\n%s", warned, text)
	}
}
