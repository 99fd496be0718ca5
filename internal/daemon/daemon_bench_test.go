//go:build linux

package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/systemd"
	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// The helpers of daemon_test.go take *testing.T; these are their
// testing.TB equivalents for benchmarks.

// benchChunk bounds the memfds alive at once (files of 1 MiB): b.N files
// are preserved in sessions of at most benchChunk files each, two full
// protocol batches of proto.MaxFDs, so memory and fds stay bounded
// whatever b.N is.
const benchChunk = 2 * proto.MaxFDs

const benchFileSize = 1 << 20

// quiet keeps luod's log out of the measurement.
func quiet(c *Config) { c.Log = slog.New(slog.DiscardHandler) }

// memfds makes n memfds of benchFileSize bytes each, data written (so
// pages exist, as guest RAM would).
func memfds(tb testing.TB, n int) []*os.File {
	tb.Helper()
	page := make([]byte, benchFileSize)
	for i := range page {
		page[i] = byte(i * 7)
	}
	fs := make([]*os.File, n)
	for i := range fs {
		fd, err := unix.MemfdCreate("bench", unix.MFD_CLOEXEC)
		if err != nil {
			closeAllFiles(fs[:i])
			tb.Fatal(err)
		}
		fs[i] = os.NewFile(uintptr(fd), "memfd")
		if _, err := fs[i].Write(page); err != nil {
			closeAllFiles(fs[:i+1])
			tb.Fatal(err)
		}
	}
	return fs
}

func closeAllFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// chunks splits n files into runs of at most benchChunk.
func chunks(n int) []int {
	var out []int
	for n > 0 {
		k := min(n, benchChunk)
		out = append(out, k)
		n -= k
	}
	return out
}

func tokens(n int) []uint64 {
	t := make([]uint64, n)
	for i := range t {
		t[i] = uint64(i + 1)
	}
	return t
}

// checkFake fails unless the fake kernel's only session is name, holding
// exactly want in order.
func checkFake(tb testing.TB, fake *ioctltest.Fake, name string, want []uint64) {
	tb.Helper()
	ss := fake.Sessions()
	var got *ioctltest.SessionState
	for i := range ss {
		if ss[i].Name == name {
			got = &ss[i]
		}
	}
	if got == nil {
		tb.Fatalf("kernel has no session %q (has %d sessions)", name, len(ss))
	}
	if !slices.Equal(got.Tokens, want) {
		tb.Fatalf("kernel session %q holds %d tokens, want %d (first %v, want %v)",
			name, len(got.Tokens), len(want), got.Tokens[:min(3, len(got.Tokens))], want[:min(3, len(want))])
	}
}

// BenchmarkHello is one protocol round trip: a Hello over the real
// SOCK_SEQPACKET socket to a luod on the fake kernel, sequentially.
func BenchmarkHello(b *testing.B) {
	fake := ioctltest.New()
	b.Cleanup(func() { fake.Close() })
	h := boot(b, b.TempDir(), fake, false, quiet)
	c := h.dial()
	cx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // all of b.N
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		res, err := c.Hello(cx)
		if err != nil {
			b.Fatal(err)
		}
		if res.Version != proto.Version || res.Daemon != Version {
			b.Fatalf("hello = %+v, want version %d, daemon %q", res, proto.Version, Version)
		}
	}
}

// BenchmarkPreserve1MiB preserves b.N memfds of 1 MiB through luod:
// client.Preserve, in protocol batches of proto.MaxFDs files per message,
// into sessions of benchChunk files. Creating the files and sessions is
// not timed; checking that luod's custody and the kernel hold every token
// is not either.
func BenchmarkPreserve1MiB(b *testing.B) {
	fake := ioctltest.New()
	b.Cleanup(func() { fake.Close() })
	h := boot(b, b.TempDir(), fake, false, quiet)
	d, c := h.d, h.dial()
	cx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // all of b.N
	defer cancel()
	admin := session.Caller{Admin: true}
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	for i, n := range chunks(b.N) {
		name := fmt.Sprintf("bench-%d", i)
		s, err := c.CreateSession(cx, name, nil)
		if err != nil {
			b.Fatal(err)
		}
		s.Close() // luod holds the session
		files := memfds(b, n)
		want := tokens(n)
		req := make([]client.FileToPreserve, n)
		for j, f := range files {
			req[j] = client.FileToPreserve{File: f, Token: want[j], Label: fmt.Sprintf("ram-%d", j)}
		}

		b.StartTimer()
		got, err := c.Preserve(cx, name, req)
		b.StopTimer()
		if err != nil {
			closeAllFiles(files)
			b.Fatal(err)
		}

		if len(got) != n {
			b.Fatalf("preserve answered %d files, want %d", len(got), n)
		}
		for j, p := range got {
			if p.Token != want[j] || p.Size != benchFileSize {
				b.Fatalf("preserved file %d = %+v, want token %d size %d", j, p, want[j], benchFileSize)
			}
		}
		cs, err := d.custody.Get(admin, name)
		if err != nil {
			b.Fatal(err)
		}
		if len(cs.Files) != n {
			b.Fatalf("custody of %q has %d files, want %d", name, len(cs.Files), n)
		}
		for j, f := range cs.Files {
			if f.Token != want[j] || f.Size != benchFileSize {
				b.Fatalf("custody file %d = %+v, want token %d size %d", j, f, want[j], benchFileSize)
			}
		}
		checkFake(b, fake, name, want)

		if err := c.DeleteSession(cx, name); err != nil {
			b.Fatal(err)
		}
		closeAllFiles(files)
		// The fake kernel frees a dropped session's files at its next
		// call: let that be now, untimed, as the direct benchmark's
		// close is, rather than inside the next chunk's CreateSession.
		if ss := fake.Sessions(); len(ss) != 0 {
			b.Fatalf("kernel still has %d sessions after deleting %q", len(ss), name)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/file")
}

// BenchmarkPreserveDirect1MiB does what BenchmarkPreserve1MiB does, the
// PRESERVE_FD ioctls straight on the fake kernel through pkg/ioctl: the
// floor luod's cost is measured against.
func BenchmarkPreserveDirect1MiB(b *testing.B) {
	fake := ioctltest.New()
	b.Cleanup(func() { fake.Close() })
	dev, err := ioctl.OpenWith(fake, fake.Path())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dev.Close() })
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	for i, n := range chunks(b.N) {
		name := fmt.Sprintf("bench-%d", i)
		s, err := dev.CreateSession(name)
		if err != nil {
			b.Fatal(err)
		}
		files := memfds(b, n)
		want := tokens(n)

		b.StartTimer()
		for j, f := range files {
			if err := s.PreserveFD(int(f.Fd()), want[j]); err != nil {
				b.StopTimer()
				closeAllFiles(files)
				b.Fatal(err)
			}
		}
		b.StopTimer()

		checkFake(b, fake, name, want)
		s.Close() // the last fd of the session: the kernel unpreserves all
		closeAllFiles(files)
		if ss := fake.Sessions(); len(ss) != 0 {
			b.Fatalf("kernel still has %d sessions after closing %q", len(ss), name)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/file")
}

// benchSessions is how many sessions the per-session benchmarks hold at
// once: a hypervisor with 1000 VMs.
const benchSessions = 1000

// asUnderSystemd runs luod as the VM bench does (systemd's Type=notify):
// an fd store and status lines reaching a service manager's socket (a
// sink here that closes what it gets), its log written at info level.
func asUnderSystemd(tb testing.TB) func(*Config) {
	sock := tb.TempDir() + "/notify.sock"
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Bind(s, &unix.SockaddrUnix{Name: sock}); err != nil {
		tb.Fatal(err)
	}
	go func() {
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*proto.MaxFDs))
		for {
			_, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_CMSG_CLOEXEC)
			if err != nil {
				return
			}
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		}
	}()
	tb.Cleanup(func() { unix.Shutdown(s, unix.SHUT_RDWR); unix.Close(s) })
	tb.Setenv("NOTIFY_SOCKET", sock)
	return func(c *Config) {
		var n systemd.Notifier
		c.FDStore = n
		c.Status = func(s string) { n.Status(s) }
		c.Log = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
}

// BenchmarkSessions1000 creates benchSessions sessions one by one through
// a live luod run as under systemd, preserving one memfd of 64 KiB into
// each (create, then preserve: two requests a session), as VMs starting
// one after another would. It reports the time per session; deleting
// them is not timed.
func BenchmarkSessions1000(b *testing.B) { benchSessionsCreated(b, asUnderSystemd(b), oneByOne(false)) }

// BenchmarkSessions1000OneRequest is BenchmarkSessions1000 with the memfd
// carried by the create_session request itself (CreateSessionWithFiles):
// one request a session.
func BenchmarkSessions1000OneRequest(b *testing.B) {
	benchSessionsCreated(b, asUnderSystemd(b), oneByOne(true))
}

// BenchmarkSessions1000Batched is BenchmarkSessions1000 with the sessions
// created by CreateSessions: create_sessions requests of as many sessions
// as proto.MaxFDs files allow (253 sessions of one memfd), no session fd
// coming back.
func BenchmarkSessions1000Batched(b *testing.B) {
	benchSessionsCreated(b, asUnderSystemd(b), (*client.Client).CreateSessions)
}

// BenchmarkSessions1000NoFDStore is BenchmarkSessions1000 without an fd
// store: each change is appended to record.log in the state directory.
func BenchmarkSessions1000NoFDStore(b *testing.B) {
	benchSessionsCreated(b, func(c *Config) {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}, oneByOne(false))
}

// createSessions is how a benchmark has the sessions created: one
// CreatedSession each, in order, as CreateSessions answers.
type createSessions func(c *client.Client, cx context.Context, sessions []client.SessionToCreate) ([]client.CreatedSession, error)

// oneByOne creates the sessions one after another: CreateSession, then
// Preserve, or, if oneRequest, CreateSessionWithFiles. The session fds
// coming back are closed; luod holds the sessions.
func oneByOne(oneRequest bool) createSessions {
	return func(c *client.Client, cx context.Context, sessions []client.SessionToCreate) ([]client.CreatedSession, error) {
		out := make([]client.CreatedSession, len(sessions))
		for i, s := range sessions {
			var cs *client.Session
			var err error
			if oneRequest {
				cs, out[i].Files, err = c.CreateSessionWithFiles(cx, s.Name, s.Labels, s.Files)
				if cs != nil {
					cs.Close()
				}
			} else if cs, err = c.CreateSession(cx, s.Name, s.Labels); err == nil {
				cs.Close()
				out[i].Files, err = c.Preserve(cx, s.Name, s.Files)
			}
			if err != nil {
				return nil, fmt.Errorf("session %s: %w", s.Name, err)
			}
		}
		return out, nil
	}
}

// benchSessionsCreated has create make benchSessions sessions of one memfd
// of 64 KiB each, b.N times, through a live luod booted with mod, and
// reports the time per session; checking and deleting them is not timed.
func benchSessionsCreated(b *testing.B, mod func(*Config), create createSessions) {
	fake := ioctltest.New()
	b.Cleanup(func() { fake.Close() })
	h := boot(b, b.TempDir(), fake, false, mod)
	c := h.dial()
	cx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	data := make([]byte, 64<<10)
	req := make([]client.SessionToCreate, benchSessions)
	for i := range req {
		name := fmt.Sprintf("vm-%04d", i)
		req[i] = client.SessionToCreate{Name: name, Labels: map[string]string{"vm": name},
			Files: []client.FileToPreserve{{File: memfd(b, data), Token: 1, Label: "ram"}}}
	}
	b.ReportAllocs()
	for b.Loop() {
		got, err := create(c, cx, req)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		for i, r := range got {
			if r.Err != nil || len(r.Files) != 1 || r.Files[0].Size != int64(len(data)) {
				b.Fatalf("%s: %+v", req[i].Name, r)
			}
		}
		if st := h.d.custody.Snapshot(); st.Open != benchSessions {
			b.Fatalf("luod holds %d open sessions, want %d", st.Open, benchSessions)
		}
		for i := range req {
			if err := c.DeleteSession(cx, req[i].Name); err != nil {
				b.Fatal(err)
			}
		}
		fake.Sessions() // the fake frees the dropped sessions now, untimed
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchSessions), "ns/session")
}

// BenchmarkManifestPhase1000 is upgrade's manifest phase, the workloads
// paused, with benchSessions sessions of 10 files held: freeze, the
// manifest into luod's reserved session, the readable copy on disk (the
// sync(2) left out: the kernel's flush, not luod's work), unfreeze.
func BenchmarkManifestPhase1000(b *testing.B) {
	fake := ioctltest.New()
	b.Cleanup(func() { fake.Close() })
	h := boot(b, b.TempDir(), fake, false, quiet)
	c := h.dial()
	cx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for i := range benchSessions {
		name := fmt.Sprintf("vm-%04d", i)
		if _, err := c.CreateSession(cx, name, map[string]string{"vm": name}); err != nil {
			b.Fatal(err)
		}
		decl := make([]proto.FileSpec, 10)
		for j := range decl {
			decl[j] = proto.FileSpec{Token: uint64(j + 1), Label: fmt.Sprintf("ram-%d", j)}
		}
		if err := c.Declare(cx, name, decl); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		m, unfreeze, err := h.d.writeManifest()
		if err != nil {
			b.Fatal(err)
		}
		unfreeze()
		if len(m.Sessions) != benchSessions {
			b.Fatalf("manifest of %d sessions, want %d", len(m.Sessions), benchSessions)
		}
	}
}

// reclaimSessions and reclaimFiles are the VM bench's (b) layout: 100
// sessions of 10 files carried over a live update.
const reclaimSessions, reclaimFiles = 100, 10

// BenchmarkReclaim100 is the far side of a live update on the fake
// kernel: luod, run as under systemd, has recovered reclaimSessions
// sessions of reclaimFiles memfds each, and a client reclaims them all
// with finish, one request a session, as the VM bench does. The update
// itself (create, preserve, upgrade, recovery) is not timed.
func BenchmarkReclaim100(b *testing.B) { benchReclaim(b, false) }

// BenchmarkReclaim100Sessions is BenchmarkReclaim100 with the sessions
// reclaimed by ReclaimSessions: as many a request as 253 fds allow.
func BenchmarkReclaim100Sessions(b *testing.B) { benchReclaim(b, true) }

func benchReclaim(b *testing.B, batched bool) {
	names := make([]string, reclaimSessions)
	for i := range names {
		names[i] = fmt.Sprintf("vm-%04d", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		h := carried(b)
		c := h.dial()
		b.StartTimer()
		all := make([][]client.ReclaimedFile, len(names))
		if batched {
			var err error
			if all, err = c.ReclaimSessions(context.Background(), names, true); err != nil {
				b.Fatal(err)
			}
		} else {
			for i, name := range names {
				rf, err := c.Reclaim(context.Background(), name, true)
				if err != nil {
					b.Fatal(err)
				}
				all[i] = rf
			}
		}
		got := 0
		for _, rf := range all {
			for _, f := range rf {
				f.File.Close()
			}
			got += len(rf)
		}
		b.StopTimer()
		if got != reclaimSessions*reclaimFiles {
			b.Fatalf("reclaimed %d files, want %d", got, reclaimSessions*reclaimFiles)
		}
		h.stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*reclaimSessions), "ns/session")
}

// carried runs a live update on a new fake kernel with reclaimSessions
// sessions of reclaimFiles memfds of 64 KiB, and returns the luod of the
// new boot, recovered and serving as under systemd.
func carried(tb testing.TB) *host {
	fake := ioctltest.New()
	tb.Cleanup(func() { fake.Close() })
	dir := tb.TempDir()
	h := boot(tb, dir, fake, false, quiet)
	c := h.dial()
	cx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	data := make([]byte, 64<<10)
	for i := range reclaimSessions {
		files := make([]client.FileToPreserve, reclaimFiles)
		for j := range files {
			files[j] = client.FileToPreserve{File: memfd(tb, data), Token: uint64(j + 1), Label: fmt.Sprintf("ram-%d", j)}
		}
		s, _, err := c.CreateSessionWithFiles(cx, fmt.Sprintf("vm-%04d", i), nil, files)
		if err != nil {
			tb.Fatal(err)
		}
		s.Close()
		for _, f := range files {
			f.File.Close()
		}
	}
	h.kexec(tb, c, dir)
	h.stop()
	return boot(tb, dir, fake, true, asUnderSystemd(tb))
}

// TestReclaimSessions reclaims 100 sessions of 10 files, after a request
// that stops at a session not found. The 990 fds take several answers:
// one past proto.MaxFDs could not be sent at all.
func TestReclaimSessions(t *testing.T) {
	h := carried(t)
	c := h.dial()
	got, err := c.ReclaimSessions(ctx(t), []string{"vm-0000", "vm-none", "vm-0001"}, true)
	if !isCode(err, proto.CodeNotFound) || len(got) != 3 || len(got[0]) != reclaimFiles || got[1] != nil || got[2] != nil {
		t.Fatalf("reclaim of vm-0000, vm-none, vm-0001 = %d sessions, %v; want vm-0000's files and not_found", len(got), err)
	}
	names := make([]string, reclaimSessions-1)
	for i := range names {
		names[i] = fmt.Sprintf("vm-%04d", i+1)
	}
	got, err = c.ReclaimSessions(ctx(t), names, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, rf := range got {
		if len(rf) != reclaimFiles {
			t.Fatalf("%s: %d files, want %d", names[i], len(rf), reclaimFiles)
		}
		for j, f := range rf {
			if f.Token != uint64(j+1) || f.Size != 64<<10 {
				t.Fatalf("%s: file %d is token %d of %d bytes", names[i], j, f.Token, f.Size)
			}
			if fi, err := f.File.Stat(); err != nil || fi.Size() != 64<<10 {
				t.Fatalf("%s: token %d: stat = %v, %v", names[i], f.Token, fi, err)
			}
			f.File.Close()
		}
	}
	if st := h.d.custody.Snapshot(); st.Finished != reclaimSessions {
		t.Fatalf("custody after the reclaims = %+v, want %d finished", st, reclaimSessions)
	}
}
