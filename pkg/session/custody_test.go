//go:build linux

package session

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/proto"
	"golang.org/x/sys/unix"
)

func TestValidateName(t *testing.T) {
	long := string(make([]byte, 64))
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"vm-42", true},
		{"A.b_c:d-e", true},
		{"0abc", true},
		{"x", true},
		{"a23456789012345678901234567890123456789012345678901234567890123", true}, // 63 bytes
		{"a234567890123456789012345678901234567890123456789012345678901234", false},
		{"", false},
		{"-vm", false},
		{".vm", false},
		{"vm 42", false},
		{"vm/42", false},
		{"vm\x00", false},
		{"vé", false},
		{"luod", false},
		{"luod-x", false},
		{"luodx", false},
		{"Luod", true}, // the reserved prefix is case-sensitive
		{"xluod", true},
		{long, false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil {
			wantCode(t, err, CodeInvalidName)
		}
	}
}

// TestFullCycle runs two workloads through a whole live update: alice has
// luod preserve her memfds, bob preserves into his own duplicate and
// declares; luod freezes, writes the manifest, the kernel kexecs, the new
// luod recovers, and both get their memory back byte for byte.
func TestFullCycle(t *testing.T) {
	h := newHost(t, Config{})
	c := h.c
	dir := t.TempDir()

	// alice: luod preserves on her behalf.
	s, dup, err := c.Create(alice, "vm-a", map[string]string{"vm": "a", "tier": "gold"})
	if err != nil {
		t.Fatal(err)
	}
	if s.State != StateOpen || s.UID != alice.UID || s.GID != alice.GID || !s.Created.Equal(t0) {
		t.Fatalf("created %+v", s)
	}
	dup.Close() // the client goes away; luod's own fd keeps the session
	ramA := pattern("alice-ram", 3*4096+17)
	devA := pattern("alice-dev", 100)
	files, err := c.Preserve(alice, "vm-a", []PreserveFile{
		{FD: fdOf(memfd(t, ramA)), Token: 1, Label: "ram"},
		{FD: fdOf(memfd(t, devA)), Token: 0xfeed, Label: "devstate"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []File{{1, "ram", int64(len(ramA))}, {0xfeed, "devstate", int64(len(devA))}}; !slices.Equal(files, want) {
		t.Fatalf("preserved %+v, want %+v", files, want)
	}

	// bob: preserves into his duplicate himself, then declares.
	dupB := mustCreate(t, c, bob, "vm-b")
	ramB := pattern("bob-ram", 8192)
	if err := ioctl.NewSession(h.fake, dupB, "vm-b", false).PreserveFD(int(memfd(t, ramB).Fd()), 7); err != nil {
		t.Fatal(err)
	}
	if err := c.Declare(bob, "vm-b", []FileDecl{{Token: 7, Label: "ram"}}); err != nil {
		t.Fatal(err)
	}
	dupB.Close()

	if got := names(c.List(alice)); !slices.Equal(got, []string{"vm-a"}) {
		t.Fatalf("alice lists %v", got)
	}
	if got := names(c.List(admin)); !slices.Equal(got, []string{"vm-a", "vm-b"}) {
		t.Fatalf("admin lists %v", got)
	}
	if ks, ok := h.kernelSession("vm-a"); !ok || !slices.Equal(ks.Tokens, []uint64{1, 0xfeed}) {
		t.Fatalf("kernel has vm-a %+v %v", ks, ok)
	}

	// The upgrade commits: freeze, manifest into the reserved session.
	unfreeze := c.Freeze()
	if _, _, err := c.Create(alice, "vm-c", nil); CodeOf(err) != CodeBusy {
		t.Fatalf("Create while frozen: %v", err)
	}
	w, err := c.WriteManifest(h.fake.LiveUpdateNum() + 1)
	m := w.Manifest
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Snapshot(); !st.Frozen || !st.ManifestWritten || st.Open != 2 {
		t.Fatalf("snapshot %+v", st)
	}
	if ks, ok := h.kernelSession(ReservedName); !ok || !slices.Equal(ks.Tokens, []uint64{ManifestToken, PauseToken}) {
		t.Fatalf("reserved session in the kernel: %+v %v", ks, ok)
	}
	if len(m.Sessions) != 2 || m.Sessions[0].Name != "vm-a" || m.Sessions[1].Files[0].Size != 0 {
		t.Fatalf("manifest %+v", m)
	}
	if err := saveFile(dir, m); err != nil {
		t.Fatal(err)
	}
	_ = unfreeze

	h2 := h.reboot(Config{Release: "7.3.0-test"})
	c2 := h2.c
	h2.now = t0.Add(time.Hour)
	disk, err := LoadFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c2.Recover(h2.handover(disk))
	if err != nil {
		t.Fatal(err)
	}
	if r.Continuity != ContinuityOK || r.Expected != 1 || r.Got != 1 || len(r.Lost) != 0 ||
		!slices.Equal(r.Recovered, []string{"vm-a", "vm-b"}) || r.PreviousRelease != "7.2.0-test" || len(r.Warnings) != 0 {
		t.Fatalf("report %+v", r)
	}
	if _, ok := h2.kernelSession(ReservedName); ok {
		t.Fatal("reserved session still in the kernel after Recover")
	}
	if _, err := c2.Recover(h2.handover(disk)); CodeOf(err) != CodeInternal {
		t.Fatalf("second Recover: %v", err)
	}

	la := c2.List(alice)
	if len(la) != 1 || la[0].State != StateIncoming || !la[0].Incoming || la[0].Labels["tier"] != "gold" ||
		!la[0].Created.Equal(t0) || !la[0].HandedOver.Equal(h2.now) || len(la[0].Files) != 2 {
		t.Fatalf("alice after recovery: %+v", la)
	}
	if st := c2.Snapshot(); st.Incoming != 2 || st.Frozen {
		t.Fatalf("snapshot %+v", st)
	}

	// alice has luod reclaim her files, without finishing first.
	rc, err := c2.Reclaim(alice, "vm-a", false)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Finished || rc.Session.State != StateClaimed || len(rc.FDs) != 2 {
		t.Fatalf("reclaim %+v", rc)
	}
	// The sizes are the ones recorded at preserve (the kernel froze them).
	if want := []File{{1, "ram", int64(len(ramA))}, {0xfeed, "devstate", int64(len(devA))}}; !slices.Equal(rc.Session.Files, want) {
		t.Fatalf("reclaimed files %+v, want %+v", rc.Session.Files, want)
	}
	got := asFiles(rc.FDs)
	equalBytes(t, "vm-a ram", readAll(t, got[0]), ramA)
	equalBytes(t, "vm-a devstate", readAll(t, got[1]), devA)
	closeAll(got)
	// Again, with finish: the kernel hands out the same files.
	rc, err = c2.Reclaim(alice, "vm-a", true)
	if err != nil {
		t.Fatal(err)
	}
	got = asFiles(rc.FDs)
	equalBytes(t, "vm-a ram again", readAll(t, got[0]), ramA)
	closeAll(got)
	if !rc.Finished || rc.Session.State != StateFinished {
		t.Fatalf("reclaim with finish %+v", rc)
	}
	if err := c2.Finish(alice, "vm-a"); err != nil {
		t.Fatalf("Finish of a finished session: %v", err)
	}
	if _, ok := h2.kernelSession("vm-a"); ok {
		t.Fatal("vm-a still in the kernel after reclaim with finish")
	}

	// bob takes his session fd and retrieves the file himself.
	s, fdB, err := c2.RetrieveForClient(bob, "vm-b")
	if err != nil {
		t.Fatal(err)
	}
	if s.State != StateClaimed {
		t.Fatalf("after RetrieveForClient: %+v", s)
	}
	gotB, err := ioctl.NewSession(h2.fake, fdB, "vm-b", true).RetrieveFD(7)
	if err != nil {
		t.Fatal(err)
	}
	equalBytes(t, "vm-b ram", readAll(t, gotB), ramB)
	gotB.Close()
	fdB.Close()
	if err := c2.Finish(bob, "vm-b"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h2.kernelSession("vm-b"); ok {
		t.Fatal("vm-b still in the kernel after Finish")
	}
	for _, who := range []Caller{alice, bob} {
		for _, s := range c2.List(who) {
			if s.State != StateFinished {
				t.Fatalf("%+v not finished", s)
			}
			if err := c2.Delete(who, s.Name); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(c2.List(admin)); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
	// The name is free for the next update.
	mustCreate(t, c2, alice, "vm-a")
}

// TestClientOutlived: luod's own fd keeps a session after the client's
// duplicate closes; Delete then drops it in the kernel.
func TestClientOutlived(t *testing.T) {
	h := newHost(t, Config{})
	dup := mustCreate(t, h.c, alice, "vm")
	if _, err := h.c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, []byte("x"))), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	dup.Close()
	if _, ok := h.kernelSession("vm"); !ok {
		t.Fatal("session dropped when the client closed its fd")
	}
	if err := h.c.Delete(alice, "vm"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.kernelSession("vm"); ok {
		t.Fatal("session alive after Delete")
	}
	if _, err := h.c.Get(alice, "vm"); CodeOf(err) != CodeNotFound {
		t.Fatalf("Get after Delete: %v", err)
	}
}

// TestDeleteOpenWithClientFD: after Delete the kernel keeps the session
// while the client's duplicate is open, so its name is still taken.
func TestDeleteOpenWithClientFD(t *testing.T) {
	h := newHost(t, Config{})
	dup := mustCreate(t, h.c, alice, "vm")
	if err := h.c.Delete(alice, "vm"); err != nil {
		t.Fatal(err)
	}
	_, _, err := h.c.Create(alice, "vm", nil)
	wantCode(t, err, CodeExists)
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf("%v does not unwrap to EEXIST", err)
	}
	var ie *ioctl.Error
	if !errors.As(err, &ie) || ie.Op != "CREATE_SESSION" {
		t.Fatalf("%v does not unwrap to the *ioctl.Error", err)
	}
	dup.Close()
	mustCreate(t, h.c, alice, "vm")
}

func TestAuthorization(t *testing.T) {
	h := newHost(t, Config{})
	c := h.c
	mustCreate(t, c, alice, "vm-a")
	mf := memfd(t, []byte("bob's attempt"))

	// Every operation by bob on alice's session says not_found, exactly
	// as for a name nobody has.
	for _, name := range []string{"vm-a", "nobody"} {
		ops := map[string]func() error{
			"Get":      func() error { _, err := c.Get(bob, name); return err },
			"Preserve": func() error { _, err := c.Preserve(bob, name, []PreserveFile{{FD: fdOf(mf), Token: 1}}); return err },
			"Declare":  func() error { return c.Declare(bob, name, []FileDecl{{Token: 1}}) },
			"Delete":   func() error { return c.Delete(bob, name) },
			"Finish":   func() error { return c.Finish(bob, name) },
			"Reclaim":  func() error { _, err := c.Reclaim(bob, name, true); return err },
			"RetrieveForClient": func() error {
				_, _, err := c.RetrieveForClient(bob, name)
				return err
			},
		}
		for op, fn := range ops {
			err := fn()
			if CodeOf(err) != CodeNotFound {
				t.Errorf("%s(bob, %q) = %v, want not_found", op, name, err)
			} else if err.Error() != `session "`+name+`": no such session` {
				t.Errorf("%s(bob, %q) message %q", op, name, err)
			}
		}
	}
	// Create unavoidably tells that the name exists.
	_, _, err := c.Create(bob, "vm-a", nil)
	wantCode(t, err, CodeExists)
	if got := c.List(bob); len(got) != 0 {
		t.Fatalf("bob lists %v", names(got))
	}
	if ks, _ := h.kernelSession("vm-a"); len(ks.Tokens) != 0 {
		t.Fatalf("bob preserved into alice's session: %v", ks.Tokens)
	}

	// An admin sees and touches every session.
	if _, err := c.Get(admin, "vm-a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Declare(admin, "vm-a", []FileDecl{{Token: 9, Label: "by admin"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(admin, "vm-a"); err != nil {
		t.Fatal(err)
	}
	if got := c.List(alice); len(got) != 0 {
		t.Fatalf("alice still has %v", names(got))
	}

	// Reserved and malformed names.
	for _, name := range []string{"luod", "luod-mine", "", "a b"} {
		_, _, err := c.Create(alice, name, nil)
		wantCode(t, err, CodeInvalidName)
		wantCode(t, c.Delete(admin, name), CodeInvalidName)
	}
}

func TestLimits(t *testing.T) {
	h := newHost(t, Config{MaxSessionsPerUID: 2, MaxFilesPerSession: 3})
	c := h.c
	if s, f := c.Limits(); s != 2 || f != 3 {
		t.Fatalf("limits %d %d", s, f)
	}
	if s, f := New(nil, Config{}).Limits(); s != DefaultMaxSessionsPerUID || f != DefaultMaxFilesPerSession {
		t.Fatalf("default limits %d %d", s, f)
	}
	mustCreate(t, c, alice, "a1")
	mustCreate(t, c, alice, "a2")
	_, _, err := c.Create(alice, "a3", nil)
	wantCode(t, err, CodeLimit)
	mentions(t, err, "uid 1000", "a3")
	mustCreate(t, c, bob, "b1") // per uid
	if err := c.Delete(alice, "a2"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, c, alice, "a3")

	// Files: refused as a whole, before any ioctl.
	four := make([]PreserveFile, 4)
	for i := range four {
		four[i] = PreserveFile{FD: fdOf(memfd(t, []byte{byte(i)})), Token: uint64(i)}
	}
	_, err = c.Preserve(alice, "a1", four)
	wantCode(t, err, CodeLimit)
	if ks, _ := h.kernelSession("a1"); len(ks.Tokens) != 0 {
		t.Fatalf("preserved %v past the limit", ks.Tokens)
	}
	if _, err := c.Preserve(alice, "a1", four[:2]); err != nil {
		t.Fatal(err)
	}
	wantCode(t, c.Declare(alice, "a1", []FileDecl{{Token: 10}, {Token: 11}}), CodeLimit)
	if err := c.Declare(alice, "a1", []FileDecl{{Token: 10}}); err != nil {
		t.Fatal(err)
	}

	// Labels.
	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	_, _, err = c.Create(bob, "b2", many)
	wantCode(t, err, CodeLimit)
	_, _, err = c.Create(bob, "b2", map[string]string{"k": string(make([]byte, MaxLabelValueLen+1))})
	wantCode(t, err, CodeLimit)
	_, _, err = c.Create(bob, "b2", map[string]string{"k": "\xff"})
	wantCode(t, err, CodeBadRequest)
	wantCode(t, c.Declare(alice, "a3", []FileDecl{{Token: 1, Label: string(make([]byte, MaxLabelValueLen+1))}}), CodeLimit)
}

func TestPreserveChecks(t *testing.T) {
	h := newHost(t, Config{})
	c := h.c
	dup := mustCreate(t, c, alice, "vm")
	mf := memfd(t, []byte("ram"))
	closed := memfd(t, nil)
	closed.Close()

	// Refused whole, nothing preserved.
	for _, tc := range []struct {
		what  string
		files []PreserveFile
		code  string
		token uint64
	}{
		{"nil file", []PreserveFile{{FD: fdOf(mf), Token: 1}, {FD: -1, Token: 2}}, CodeBadFD, 2},
		{"closed file", []PreserveFile{{FD: fdOf(mf), Token: 1}, {FD: fdOf(closed), Token: 2}}, CodeBadFD, 2},
		{"same file twice", []PreserveFile{{FD: fdOf(mf), Token: 1}, {FD: fdOf(mf), Token: 2}}, CodeBadFD, 2},
		{"token twice", []PreserveFile{{FD: fdOf(mf), Token: 1}, {FD: fdOf(memfd(t, nil)), Token: 1}}, CodeExists, 1},
	} {
		done, err := c.Preserve(alice, "vm", tc.files)
		wantCode(t, err, tc.code)
		var e *Error
		if !errors.As(err, &e) || !e.HasToken || e.Token != tc.token || e.Session != "vm" || len(done) != 0 {
			t.Errorf("%s: %v (%+v), done %v", tc.what, err, e, done)
		}
		if ks, _ := h.kernelSession("vm"); len(ks.Tokens) != 0 {
			t.Fatalf("%s: kernel preserved %v", tc.what, ks.Tokens)
		}
	}

	// The kernel's own refusals.
	if _, err := c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(mf), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, nil)), Token: 1}})
	wantCode(t, err, CodeExists) // recorded token
	mentions(t, err, "already used in this session")
	_, err = c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(mf), Token: 2}})
	wantCode(t, err, CodeBadFD) // EBUSY: preserved already
	if !errors.Is(err, unix.EBUSY) {
		t.Fatalf("%v is not EBUSY", err)
	}
	// The client preserved token 5 itself and did not declare it.
	if err := ioctl.NewSession(h.fake, dup, "vm", false).PreserveFD(int(memfd(t, nil).Fd()), 5); err != nil {
		t.Fatal(err)
	}
	_, err = c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, nil)), Token: 5}})
	wantCode(t, err, CodeExists)
	mentions(t, err, "PRESERVE_FD", `"vm"`, "0x5", "EEXIST")
	// Declare refuses a recorded token.
	err = c.Declare(alice, "vm", []FileDecl{{Token: 1}})
	wantCode(t, err, CodeExists)
	mentions(t, err, "already used in this session")
	err = c.Declare(alice, "vm", []FileDecl{{Token: 6}, {Token: 6}})
	wantCode(t, err, CodeExists)
	mentions(t, err, "given twice in the request")
	// An empty request does nothing.
	if done, err := c.Preserve(alice, "vm", nil); err != nil || len(done) != 0 {
		t.Fatalf("empty Preserve: %v %v", done, err)
	}
}

// TestPreservePartial: the kernel refuses the third of four files; the
// first two stay preserved and recorded, the fourth is not attempted.
func TestPreservePartial(t *testing.T) {
	h := newHost(t, Config{})
	c := h.c
	mustCreate(t, c, alice, "vm")
	onDisk, err := os.Create(filepath.Join(t.TempDir(), "ram.img")) // not a memfd: no handler
	if err != nil {
		t.Fatal(err)
	}
	defer onDisk.Close()
	files := []PreserveFile{
		{FD: fdOf(memfd(t, []byte("one"))), Token: 0x10, Label: "one"},
		{FD: fdOf(memfd(t, []byte("two!"))), Token: 0x20, Label: "two"},
		{FD: fdOf(onDisk), Token: 0x30, Label: "disk"},
		{FD: fdOf(memfd(t, []byte("four"))), Token: 0x40, Label: "four"},
	}
	done, err := c.Preserve(alice, "vm", files)
	wantCode(t, err, CodeBadFD)
	var e *Error
	if !errors.As(err, &e) || e.Token != 0x30 || !errors.Is(err, unix.ENOENT) {
		t.Fatalf("error %+v", err)
	}
	mentions(t, err, `"vm"`, "0x30", "0x10, 0x20", "still preserved", "1 later file(s) not attempted")
	if want := []File{{0x10, "one", 3}, {0x20, "two", 4}}; !slices.Equal(done, want) {
		t.Fatalf("done %+v, want %+v", done, want)
	}
	s, _ := c.Get(alice, "vm")
	if !slices.Equal(s.Files, done) {
		t.Fatalf("recorded %+v", s.Files)
	}
	if ks, _ := h.kernelSession("vm"); !slices.Equal(ks.Tokens, []uint64{0x10, 0x20}) {
		t.Fatalf("kernel has %v", ks.Tokens)
	}
	// The rest can be retried.
	if _, err := c.Preserve(alice, "vm", files[3:]); err != nil {
		t.Fatal(err)
	}

	// A kernel errno without a better code is kernel.
	h.fake.FailNext(ioctl.ReqPreserveFD, unix.ENOMEM)
	_, err = c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, nil)), Token: 0x50}})
	wantCode(t, err, CodeKernel)
	h.fake.FailNext(ioctl.ReqPreserveFD, unix.ENOSPC)
	_, err = c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, nil)), Token: 0x50}})
	wantCode(t, err, CodeLimit)
}

func TestFreeze(t *testing.T) {
	h := newHost(t, Config{})
	c := h.c
	mustCreate(t, c, alice, "vm")
	if _, err := c.WriteManifest(1); CodeOf(err) != CodeInternal {
		t.Fatalf("WriteManifest outside Freeze: %v", err)
	}
	unfreeze := c.Freeze()
	mf := memfd(t, nil)
	ops := map[string]func() error{
		"Create":   func() error { _, _, err := c.Create(alice, "vm2", nil); return err },
		"Preserve": func() error { _, err := c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(mf), Token: 1}}); return err },
		"Declare":  func() error { return c.Declare(alice, "vm", []FileDecl{{Token: 1}}) },
		"Delete":   func() error { return c.Delete(alice, "vm") },
		"Finish":   func() error { return c.Finish(alice, "vm") },
		"Reclaim":  func() error { _, err := c.Reclaim(alice, "vm", false); return err },
		"RetrieveForClient": func() error {
			_, _, err := c.RetrieveForClient(alice, "vm")
			return err
		},
	}
	for op, fn := range ops {
		err := fn()
		if CodeOf(err) != CodeBusy {
			t.Errorf("%s while frozen: %v", op, err)
		} else {
			mentions(t, err, "upgrade in progress")
		}
	}
	if len(c.List(alice)) != 1 || !c.Frozen() {
		t.Fatal("List or Frozen while frozen")
	}
	if w, err := c.WriteManifest(1); err != nil || w.Reused {
		t.Fatalf("WriteManifest: %+v, %v", w, err)
	}
	// Nothing changed: the second keeps the first.
	if w, err := c.WriteManifest(1); err != nil || !w.Reused {
		t.Fatalf("second WriteManifest: reused %v, %v", w.Reused, err)
	}
	// Another liveupdate number: written anew.
	if w, err := c.WriteManifest(2); err != nil || w.Reused || w.ExpectedLiveUpdateNumber != 2 {
		t.Fatalf("WriteManifest(2): %+v, %v", w, err)
	}
	if _, ok := h.kernelSession(ReservedName); !ok {
		t.Fatal("no reserved session")
	}
	// Abort: the reserved session goes, everything works again.
	unfreeze()
	unfreeze()
	if _, ok := h.kernelSession(ReservedName); ok {
		t.Fatal("reserved session left after unfreeze")
	}
	if st := c.Snapshot(); st.Frozen || st.ManifestWritten {
		t.Fatalf("snapshot %+v", st)
	}
	if _, err := c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(mf), Token: 1}}); err != nil {
		t.Fatal(err)
	}
}

// TestPrewriteManifest: a manifest written before the freeze is kept by
// WriteManifest while nothing changed, dropped from the kernel by the
// first change (never stale there), and by DiscardManifest.
func TestPrewriteManifest(t *testing.T) {
	h := newHost(t, Config{})
	c := h.c
	mustCreate(t, c, alice, "vm")
	pre, err := c.PrewriteManifest(1)
	if err != nil || pre.Reused || len(pre.Sessions) != 1 {
		t.Fatalf("PrewriteManifest: %+v, %v", pre, err)
	}
	if _, ok := h.kernelSession(ReservedName); !ok {
		t.Fatal("no reserved session after PrewriteManifest")
	}
	if st := c.Snapshot(); st.ManifestWritten {
		t.Fatalf("ManifestWritten outside a freeze: %+v", st)
	}
	unfreeze := c.Freeze()
	if st := c.Snapshot(); !st.ManifestWritten {
		t.Fatalf("frozen with the prewritten manifest still true: %+v", st)
	}
	if _, err := c.PrewriteManifest(1); CodeOf(err) != CodeInternal {
		t.Fatalf("PrewriteManifest while frozen: %v", err)
	}
	w, err := c.WriteManifest(1)
	if err != nil || !w.Reused || !bytes.Equal(w.Bytes, pre.Bytes) {
		t.Fatalf("WriteManifest after an unchanged prewrite: reused %v, same bytes %v, %v", w.Reused, bytes.Equal(w.Bytes, pre.Bytes), err)
	}
	unfreeze()
	if _, ok := h.kernelSession(ReservedName); ok {
		t.Fatal("reserved session left after unfreeze")
	}

	// A change after the prewrite drops it at once; the freeze writes anew.
	if _, err := c.PrewriteManifest(1); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, c, alice, "vm2")
	if _, ok := h.kernelSession(ReservedName); ok {
		t.Fatal("a stale prewritten manifest stayed in the kernel after a change")
	}
	unfreeze = c.Freeze()
	w, err = c.WriteManifest(1)
	if err != nil || w.Reused || len(w.Sessions) != 2 {
		t.Fatalf("WriteManifest after a change: %+v, %v", w, err)
	}
	unfreeze()

	// A preserve changes the table too.
	if _, err := c.PrewriteManifest(1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, []byte("ram"))), Token: 7}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.kernelSession(ReservedName); ok {
		t.Fatal("prewritten manifest kept after a preserve")
	}

	// An upgrade that does not go on discards it.
	if _, err := c.PrewriteManifest(1); err != nil {
		t.Fatal(err)
	}
	c.DiscardManifest()
	if _, ok := h.kernelSession(ReservedName); ok {
		t.Fatal("reserved session left after DiscardManifest")
	}
	// And the table works as before.
	mustCreate(t, c, alice, "vm3")
}

// blockingDevice holds PRESERVE_FD until released.
type blockingDevice struct {
	Device
	entered, release chan struct{}
}

type blockingHandle struct {
	Handle
	d *blockingDevice
}

func (d *blockingDevice) CreateSession(name string) (Handle, error) {
	h, err := d.Device.CreateSession(name)
	if err != nil {
		return nil, err
	}
	return blockingHandle{h, d}, nil
}

func (h blockingHandle) PreserveFD(fd int, token uint64) error {
	h.d.entered <- struct{}{}
	<-h.d.release
	return h.Handle.PreserveFD(fd, token)
}

// TestFreezeWaitsInFlight: Freeze returns only after a running Preserve
// has recorded its files, and the manifest then has them; meanwhile the
// session is busy for others, but the table is not locked.
func TestFreezeWaitsInFlight(t *testing.T) {
	h := newHost(t, Config{})
	bd := &blockingDevice{Device: FromIoctl(h.dev), entered: make(chan struct{}), release: make(chan struct{})}
	c := New(bd, Config{})
	defer c.Close()
	_, dup, err := c.Create(alice, "vm", nil)
	if err != nil {
		t.Fatal(err)
	}
	dup.Close()
	mf := memfd(t, []byte("ram"))
	preserved := make(chan error, 1)
	go func() {
		_, err := c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(mf), Token: 1}})
		preserved <- err
	}()
	<-bd.entered
	wantCode(t, c.Declare(alice, "vm", []FileDecl{{Token: 2}}), CodeBusy)
	if got := names(c.List(alice)); len(got) != 1 {
		t.Fatalf("List during an ioctl: %v", got)
	}
	frozen := make(chan func(), 1)
	go func() { frozen <- c.Freeze() }()
	select {
	case <-frozen:
		t.Fatal("Freeze returned while a Preserve was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(bd.release)
	if err := <-preserved; err != nil {
		t.Fatal(err)
	}
	unfreeze := <-frozen
	defer unfreeze()
	m := c.Manifest(1)
	if len(m.Sessions) != 1 || len(m.Sessions[0].Files) != 1 {
		t.Fatalf("manifest after freeze: %+v", m.Sessions)
	}
}

func TestConcurrent(t *testing.T) {
	h := newHost(t, Config{})
	c := h.c
	var wg sync.WaitGroup
	for i := range 8 {
		who := Caller{UID: uint32(100 + i%2)}
		wg.Go(func() {
			for j := range 20 {
				name := "s-" + string(rune('a'+i)) + "-" + string(rune('a'+j))
				_, dup, err := c.Create(who, name, nil)
				if err != nil {
					t.Error(err)
					return
				}
				dup.Close()
				if _, err := c.Preserve(who, name, []PreserveFile{{FD: fdOf(memfd(t, []byte(name))), Token: 1}}); err != nil {
					t.Error(err)
				}
				c.List(who)
				c.Snapshot()
				if j%2 == 0 {
					if err := c.Delete(who, name); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	if st := c.Snapshot(); st.Open != 80 {
		t.Fatalf("snapshot %+v", st)
	}
}

func TestStates(t *testing.T) {
	h := newHost(t, Config{})
	mustCreate(t, h.c, alice, "vm")
	_, _, err := h.c.RetrieveForClient(alice, "vm")
	wantCode(t, err, CodeBadRequest)
	_, err = h.c.Reclaim(alice, "vm", false)
	wantCode(t, err, CodeBadRequest)
	wantCode(t, h.c.Finish(alice, "vm"), CodeBadRequest)

	h2, _ := h.kexec("", 1, Config{})
	if _, err := h2.c.Recover(h2.handover(nil)); err != nil {
		t.Fatal(err)
	}
	_, err = h2.c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, nil)), Token: 1}})
	wantCode(t, err, CodeBadRequest)
	wantCode(t, h2.c.Declare(alice, "vm", []FileDecl{{Token: 1}}), CodeBadRequest)
	// The incoming name is taken until the session is finished; a
	// finished session of one's own uid is replaced by Create.
	_, _, err = h2.c.Create(alice, "vm", nil)
	wantCode(t, err, CodeExists)
	if err := h2.c.Finish(alice, "vm"); err != nil {
		t.Fatal(err)
	}
	_, _, err = h2.c.Create(bob, "vm", nil)
	wantCode(t, err, CodeExists)
	_, _, err = h2.c.RetrieveForClient(alice, "vm")
	wantCode(t, err, CodeBadRequest)
	s, dup, err := h2.c.Create(alice, "vm", nil)
	if err != nil {
		t.Fatal(err)
	}
	dup.Close()
	if s.State != StateOpen || s.Incoming {
		t.Fatalf("replaced %+v", s)
	}
	if st := h2.c.Snapshot(); st.Open != 1 || st.Finished != 0 {
		t.Fatalf("snapshot %+v", st)
	}
}

// TestDeleteIncoming: deleting a handed-over session finishes it; a FINISH
// the kernel refuses keeps the session for a retry.
func TestDeleteIncoming(t *testing.T) {
	h := newHost(t, Config{})
	mustCreate(t, h.c, alice, "vm")
	if _, err := h.c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, []byte("ram"))), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	h2, _ := h.kexec("", 1, Config{})
	if _, err := h2.c.Recover(h2.handover(nil)); err != nil {
		t.Fatal(err)
	}
	h2.fake.FailNext(ioctl.ReqFinish, unix.EBUSY)
	err := h2.c.Delete(alice, "vm")
	wantCode(t, err, CodeKernel)
	mentions(t, err, "FINISH", `"vm"`, "EBUSY")
	if s, err := h2.c.Get(alice, "vm"); err != nil || s.State != StateIncoming {
		t.Fatalf("after failed delete: %+v %v", s, err)
	}
	if _, ok := h2.kernelSession("vm"); !ok {
		t.Fatal("session gone after failed delete")
	}
	if err := h2.c.Delete(alice, "vm"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h2.kernelSession("vm"); ok {
		t.Fatal("session alive after delete")
	}
}

// TestHolds: luod holds a session while it keeps its own fd of it: open
// or handed over, and after a refused FINISH; not once finished or
// deleted.
func TestHolds(t *testing.T) {
	h := newHost(t, Config{})
	mustCreate(t, h.c, alice, "vm-a")
	mustCreate(t, h.c, alice, "vm-b")
	if !h.c.Holds("vm-a") || h.c.Holds("vm-none") {
		t.Fatal("Holds of an open session false, or of none true")
	}
	h2, _ := h.kexec("", 1, Config{})
	if _, err := h2.c.Recover(h2.handover(nil)); err != nil {
		t.Fatal(err)
	}
	h2.fake.FailNext(ioctl.ReqFinish, unix.EBUSY)
	if err := h2.c.Finish(alice, "vm-a"); err == nil || !h2.c.Holds("vm-a") {
		t.Fatalf("after a refused finish: %v, Holds %v", err, h2.c.Holds("vm-a"))
	}
	if err := h2.c.Finish(alice, "vm-a"); err != nil || h2.c.Holds("vm-a") {
		t.Fatalf("after finish: %v, Holds %v", err, h2.c.Holds("vm-a"))
	}
	if err := h2.c.Delete(alice, "vm-b"); err != nil || h2.c.Holds("vm-b") {
		t.Fatalf("after delete: %v, Holds %v", err, h2.c.Holds("vm-b"))
	}
}

func TestReclaimFailures(t *testing.T) {
	h := newHost(t, Config{})
	mustCreate(t, h.c, alice, "vm")
	if _, err := h.c.Preserve(alice, "vm", []PreserveFile{{FD: fdOf(memfd(t, []byte("ram"))), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	// Declared but never preserved.
	if err := h.c.Declare(alice, "vm", []FileDecl{{Token: 2, Label: "ghost"}}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, h.c, alice, "vm-f")
	if _, err := h.c.Preserve(alice, "vm-f", []PreserveFile{{FD: fdOf(memfd(t, []byte("ram-f"))), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	h2, _ := h.kexec("", 1, Config{})
	if _, err := h2.c.Recover(h2.handover(nil)); err != nil {
		t.Fatal(err)
	}
	// Token 1 is retrieved before token 2 fails: its fd is closed.
	before := fdCount(t)
	_, err := h2.c.Reclaim(alice, "vm", true)
	wantCode(t, err, CodeNotFound)
	mentions(t, err, "RETRIEVE_FD", "0x2")
	if s, _ := h2.c.Get(alice, "vm"); s.State != StateIncoming {
		t.Fatalf("state after failed reclaim %v", s.State)
	}
	if n := fdCount(t); n != before {
		t.Fatalf("%d fds open after the failed reclaim, %d before", n, before)
	}
	// Every file retrieved, FINISH refused: the fds are closed, nothing
	// is handed out, the session stays.
	h2.fake.FailNext(ioctl.ReqFinish, unix.EBUSY)
	if rc, err := h2.c.Reclaim(alice, "vm-f", true); CodeOf(err) != CodeKernel || rc.FDs != nil {
		t.Fatalf("Reclaim with FINISH refused = %+v, %v", rc, err)
	}
	if s, _ := h2.c.Get(alice, "vm-f"); s.State != StateIncoming {
		t.Fatalf("state after a reclaim whose finish failed %v", s.State)
	}
	if n := fdCount(t); n != before {
		t.Fatalf("%d fds open after the reclaim whose finish failed, %d before", n, before)
	}
	rc, err := h2.c.Reclaim(alice, "vm-f", true)
	if err != nil || len(rc.FDs) != 1 {
		t.Fatalf("Reclaim = %+v, %v", rc, err)
	}
	got := asFiles(rc.FDs)
	equalBytes(t, "vm-f ram", readAll(t, got[0]), []byte("ram-f"))
	closeAll(got)
	// FINISH refused: nothing is handed out, the session stays.
	h2.fake.FailNext(ioctl.ReqFinish, unix.EBUSY)
	if err := h2.c.Finish(alice, "vm"); CodeOf(err) != CodeKernel {
		t.Fatalf("Finish: %v", err)
	}
	if s, _ := h2.c.Get(alice, "vm"); s.State != StateIncoming {
		t.Fatalf("state after failed finish %v", s.State)
	}
}

func TestOverdue(t *testing.T) {
	h := newHost(t, Config{})
	mustCreate(t, h.c, alice, "b")
	mustCreate(t, h.c, alice, "a")
	mustCreate(t, h.c, bob, "c")
	h2, _ := h.kexec("", 1, Config{})
	if _, err := h2.c.Recover(h2.handover(nil)); err != nil {
		t.Fatal(err)
	}
	if got := h2.c.Overdue(t0.Add(time.Minute), time.Minute); len(got) != 0 {
		t.Fatalf("overdue at the deadline: %v", got)
	}
	if _, _, err := h2.c.RetrieveForClient(bob, "c"); err != nil {
		t.Fatal(err)
	}
	if got := h2.c.Overdue(t0.Add(time.Minute+1), time.Minute); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("overdue %v", got)
	}
	// Reported, never finished.
	if st := h2.c.Snapshot(); st.Incoming != 2 {
		t.Fatalf("snapshot %+v", st)
	}
}

// TestCreateWithKeep: CreateWith hands luod's fd to Keep once the files
// are in and while the session is still busy, so no Delete can come
// between (the daemon stores the fd in systemd's fd store there); on a
// refused file Keep is not called and nothing is left.
func TestCreateWithKeep(t *testing.T) {
	h := newHost(t, Config{})
	var kept []string
	var during error
	keep := func(names []string, fds []*os.File) {
		for i, name := range names {
			kept = append(kept, name)
			if fds[i] == nil {
				t.Errorf("Keep of %s without a file", name)
			}
			during = h.c.Delete(alice, name) // unlocked but busy: refused
		}
	}
	s, done, dup, err := h.c.CreateWith(alice, "vm", nil, []PreserveFile{{FD: fdOf(memfd(t, []byte("ram"))), Token: 1}}, CreateOptions{Keep: keep})
	if err != nil || dup != nil || len(done) != 1 || done[0].Size != 3 || len(s.Files) != 1 {
		t.Fatalf("CreateWith = %+v, %+v, %v, %v", s, done, dup, err)
	}
	wantCode(t, during, CodeBusy)
	if len(kept) != 1 || kept[0] != "vm" {
		t.Fatalf("Keep called for %v", kept)
	}
	_, _, _, err = h.c.CreateWith(alice, "vm-bad", nil, []PreserveFile{{FD: -1, Token: 1}}, CreateOptions{Keep: keep})
	wantCode(t, err, CodeBadFD)
	if len(kept) != 1 {
		t.Fatalf("Keep called for a refused session: %v", kept)
	}
	if _, ok := h.kernelSession("vm-bad"); ok {
		t.Fatal("the kernel kept vm-bad")
	}
	if _, err := h.c.Get(alice, "vm-bad"); err == nil {
		t.Fatal("custody kept vm-bad")
	}
}

// TestCreateMany: CreateMany creates each session on its own, in order; a
// refused one leaves nothing (custody or kernel) and does not stop the
// others; keep is called once with every created session and luod's fd of
// it, while all of them are still busy and hidden, so no delete or
// listing can come between them and the fd store.
func TestCreateMany(t *testing.T) {
	h := newHost(t, Config{})
	mustCreate(t, h.c, bob, "vm-bob").Close()
	ns := []NewSession{
		{Name: "vm-a", Labels: map[string]string{"vm": "a"}, Files: []PreserveFile{{FD: fdOf(memfd(t, []byte("aa"))), Token: 1}}},
		{Name: "vm-bad", Files: []PreserveFile{{FD: -1, Token: 1}}},
		{Name: "vm-bob"}, // another uid's name
		{Name: "vm-c"},
		{Name: "vm-d", Files: []PreserveFile{{FD: fdOf(memfd(t, []byte("ddd"))), Token: 2}}},
	}
	calls := 0
	var kept []string
	keep := func(ks []string, fds []*os.File) {
		calls++
		kept = ks
		for i, name := range ks {
			if fds[i] == nil {
				t.Errorf("keep of %s without a file", name)
			}
			wantCode(t, h.c.Delete(alice, name), CodeBusy)
			if _, err := h.c.Get(alice, name); err == nil {
				t.Errorf("%s is listed before keep returned", name)
			}
		}
		if got := names(h.c.List(admin)); !slices.Equal(got, []string{"vm-bob"}) {
			t.Errorf("listed during keep: %v", got)
		}
	}
	got := h.c.CreateMany(alice, ns, keep)
	if calls != 1 || !slices.Equal(kept, []string{"vm-a", "vm-c", "vm-d"}) {
		t.Fatalf("keep called %d times, last with %v", calls, kept)
	}
	if len(got) != len(ns) {
		t.Fatalf("%d results for %d sessions", len(got), len(ns))
	}
	wantCode(t, got[1].Err, CodeBadFD)
	wantCode(t, got[2].Err, CodeExists)
	for _, i := range []int{0, 3, 4} {
		if got[i].Err != nil || got[i].Session.Name != ns[i].Name || len(got[i].Files) != len(ns[i].Files) {
			t.Fatalf("result %d = %+v", i, got[i])
		}
	}
	if got[0].Session.Labels["vm"] != "a" || got[4].Files[0].Size != 3 || got[4].Files[0].Token != 2 {
		t.Fatalf("vm-a = %+v, vm-d files = %+v", got[0].Session, got[4].Files)
	}
	if _, ok := h.kernelSession("vm-bad"); ok {
		t.Fatal("the kernel kept vm-bad")
	}
	if got := names(h.c.List(admin)); !slices.Equal(got, []string{"vm-a", "vm-bob", "vm-c", "vm-d"}) {
		t.Fatalf("listed after CreateMany: %v", got)
	}
	if err := h.c.Delete(alice, "vm-c"); err != nil {
		t.Fatalf("delete after CreateMany: %v", err)
	}
}

// TestFileListBudget: a session's files must fit the answer that hands it
// back. Preserve and Declare refuse, before any ioctl, the files past
// proto.FileListBudget bytes listed, counted with their real sizes, so a
// batch split in two reaches the same limit as one.
func TestFileListBudget(t *testing.T) {
	h := newHost(t, Config{})
	label := strings.Repeat("l", 200)
	perFile := proto.FileInfo{Token: 100, Label: label, Size: 3}.ListedBytes()
	fit := proto.FileListBudget / perFile // files of 3 bytes that fit, tokens of 3 digits
	files := func(from, n int) []PreserveFile {
		out := make([]PreserveFile, n)
		for i := range out {
			out[i] = PreserveFile{FD: fdOf(memfd(t, []byte("ram"))), Token: uint64(100 + from + i), Label: label}
		}
		return out
	}
	// One batch past the budget: refused, nothing created.
	_, _, _, err := h.c.CreateWith(alice, "vm-one", nil, files(0, fit+1), CreateOptions{})
	wantCode(t, err, CodeLimit)
	mentions(t, err, "too many for one session")
	if _, ok := h.kernelSession("vm-one"); ok {
		t.Fatal("the kernel kept vm-one")
	}
	// The same in two batches: the second is refused whole, the first stays.
	mustCreate(t, h.c, alice, "vm-two").Close()
	if _, err := h.c.Preserve(alice, "vm-two", files(0, fit-5)); err != nil {
		t.Fatal(err)
	}
	done, err := h.c.Preserve(alice, "vm-two", files(fit-5, 6))
	wantCode(t, err, CodeLimit)
	if ks, _ := h.kernelSession("vm-two"); len(done) != 0 || len(ks.Tokens) != fit-5 {
		t.Fatalf("after the refused batch: %d preserved by it, the kernel holds %d files; want 0 and %d", len(done), len(ks.Tokens), fit-5)
	}
	if _, err := h.c.Preserve(alice, "vm-two", files(fit-5, 5)); err != nil {
		t.Fatalf("the files that fit: %v", err)
	}
	// Declare counts the same way (sizes 0).
	mustCreate(t, h.c, alice, "vm-decl").Close()
	decl := make([]FileDecl, 2*fit)
	for i := range decl {
		decl[i] = FileDecl{Token: uint64(100 + i), Label: label}
	}
	wantCode(t, h.c.Declare(alice, "vm-decl", decl), CodeLimit)
	if s, _ := h.c.Get(alice, "vm-decl"); len(s.Files) != 0 {
		t.Fatalf("a refused declare recorded %d files", len(s.Files))
	}
}
