//go:build linux

package session

import (
	"os"
	"slices"
	"testing"

	"github.com/luod/luod/pkg/ioctl"
)

// TestAdoptAfterRestart: luod dies within a boot; the session fds it had
// put in systemd's fd store keep the sessions alive, and a new luod takes
// them back from its record, open and incoming alike.
func TestAdoptAfterRestart(t *testing.T) {
	h := newHost(t, Config{})
	mustCreate(t, h.c, alice, "vm-a").Close()
	data := pattern("vm-a", 8192)
	if _, err := h.c.Preserve(alice, "vm-a", []PreserveFile{{FD: fdOf(memfd(t, data)), Token: 3, Label: "ram"}}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, h.c, bob, "vm-b").Close()
	mustCreate(t, h.c, bob, "vm-gone").Close()

	rec := h.c.Record(1)
	if len(rec.Sessions) != 3 || rec.Sessions[0].State != StateOpen {
		t.Fatalf("record = %+v", rec.Sessions)
	}
	b, err := rec.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeManifest(b); err != nil {
		t.Fatalf("a record must decode as a manifest: %v", err)
	}
	// The "fd store": dups of luod's fds, except vm-gone's.
	store := map[string]*os.File{}
	dup := func(key string) func(string, *os.File) {
		return func(_ string, f *os.File) {
			d, err := dupFile(f)
			if err != nil {
				t.Fatal(err)
			}
			store[key] = d
		}
	}
	h.c.EachFile([]string{"vm-a"}, dup("vm-a"))
	h.c.EachFile([]string{"vm-b"}, dup("vm-b"))
	h.c.EachFile([]string{"vm-b"}, dup("not-ours"))
	if len(store) != 3 {
		t.Fatalf("fd store of %d, want vm-a, vm-b and a stray", len(store))
	}

	// luod dies: every fd of its own closes.
	h.c.Close()
	h.dev.Close()
	if _, ok := h.kernelSession("vm-gone"); ok {
		t.Fatal("vm-gone survived without a stored fd")
	}

	h2 := boot(t, h.fake, Config{})
	adopted, lost, unknown := h2.c.Adopt(rec, store, func(f *os.File, name string, retrieved bool) Handle {
		return ioctl.NewSession(h.fake, f, name, retrieved)
	})
	if len(adopted) != 2 || len(lost) != 1 || lost[0].Name != "vm-gone" || len(unknown) != 1 {
		t.Fatalf("adopted %v, lost %v, unknown %d", adopted, lost, len(unknown))
	}
	unknown[0].Close()
	s, err := h2.c.Get(alice, "vm-a")
	if err != nil || s.State != StateOpen || len(s.Files) != 1 || s.Files[0].Token != 3 {
		t.Fatalf("vm-a after adoption = %+v, %v", s, err)
	}
	if _, err := h2.c.Get(alice, "vm-b"); err == nil {
		t.Error("alice sees bob's adopted session")
	}
	// The adopted custody works on: the session goes over the next kexec.
	h3, _ := h2.kexec("", 1, Config{})
	if rep, err := h3.c.Recover(h3.handover(nil)); err != nil || len(rep.Recovered) != 2 {
		t.Fatalf("recover after adoption = %+v, %v", rep, err)
	}
	r, err := h3.c.Reclaim(alice, "vm-a", true)
	if err != nil {
		t.Fatal(err)
	}
	got := asFiles(r.FDs)
	equalBytes(t, "vm-a", readAll(t, got[0]), data)
	closeAll(got)
}

// TestEachFileIn: luod's fd of every session in the state, in name order,
// the others left out.
func TestEachFileIn(t *testing.T) {
	h := newHost(t, Config{})
	for _, name := range []string{"vm-c", "vm-a", "vm-b"} {
		mustCreate(t, h.c, alice, name).Close()
	}
	h.c.mu.Lock()
	h.c.byName["vm-b"].s.State = StateClaimed // as if retrieved in this boot
	h.c.mu.Unlock()
	var got []string
	h.c.EachFileIn(StateOpen, func(name string, f *os.File) {
		if f == nil {
			t.Errorf("%s: no fd", name)
		}
		got = append(got, name)
	})
	if want := []string{"vm-a", "vm-c"}; !slices.Equal(got, want) {
		t.Errorf("EachFileIn(open) gave %v, want %v", got, want)
	}
}
