//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/proto"
)

// The plan of a bench run, one boot after another: boot 1 measures
// preserving, then every live update carries carried[k] sessions of
// carryFiles memfds of carrySize bytes twice (raw and through luod), and
// the boot after it measures retrieving them.
var (
	preserveLayouts = [][2]int{{10, 1}, {100, 1}, {1000, 1}, {1, 1000}} // sessions, files
	carried         = []int{10, 100, 1000}
)

const (
	preserveSize = 1 << 20
	carryFiles   = 10
	carrySize    = 64 << 10
	luodSocket   = "/run/luod/luod.sock"
	notifySocket = "/run/bench-notify.sock"
)

type env struct {
	stage int
	share string // the host share
	dir   string // share/bench: results and luod's logs
}

func getEnv(t *testing.T) env {
	if os.Getenv("LUOD_VM") != "1" {
		t.Skip("the bench runs only inside the VM harness (LUOD_VM=1, make bench)")
	}
	st, err := strconv.Atoi(os.Getenv("LUOD_STAGE"))
	if err != nil || st < 1 {
		t.Fatalf("LUOD_STAGE=%q: want a stage number >= 1", os.Getenv("LUOD_STAGE"))
	}
	share := os.Getenv("LUOD_SHARE")
	dir := filepath.Join(share, "bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return env{stage: st, share: share, dir: dir}
}

// say prints one line the host script keeps.
func say(format string, args ...any) { fmt.Printf("LUOD-BENCH: "+format+"\n", args...) }

// TestBench is one boot of the bench run.
func TestBench(t *testing.T) {
	e := getEnv(t)
	var lim unix.Rlimit
	lim.Cur, lim.Max = 1<<16, 1<<16
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// luod's metrics endpoint listens on 127.0.0.1; the VM's init leaves
	// lo down.
	if err := loopbackUp(); err != nil {
		t.Fatal(err)
	}
	// The bench stands in for systemd, whose PID 1 raises the datagram
	// queue of unix sockets to 512 at boot (bump_unix_max_dgram_qlen),
	// before it makes $NOTIFY_SOCKET: at the kernel's default (10) a
	// service sending more fd-store messages at once than the queue holds
	// waits for the manager to read each one, which no systemd host does.
	if err := raiseDgramQueue(512); err != nil {
		t.Fatal(err)
	}
	res := &Results{}
	if e.stage == 1 {
		res.Accel = readTrim(filepath.Join(e.share, "accel"))
		res.CPU = cpuModel()
		res.MemKiB = memTotal()
	} else {
		b, err := os.ReadFile(filepath.Join(e.dir, "results.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, res); err != nil {
			t.Fatal(err)
		}
	}
	rel := release()
	say("stage %d on %s", e.stage, rel)

	var raw []*ioctl.Session // the raw holder's sessions for the next update
	var l *luod
	if e.stage == 1 {
		measurePreserveDirect(t, res)
		raw = carryRaw(t, e.stage, carried[0])
		res.ColdMinimal, _, _ = retrieveMinimal(t, e, startAlone, 0, 0)
		l = startLuod(t, e, "preserve")
		res.ColdReady = l.ready
		say("cold boot: luod exec to READY %s ms, the direct program's exec to READY with nothing to do %s ms",
			ms(l.ready), ms(res.ColdMinimal))
		measurePreserveLuod(t, l, res)
		// The direct layouts once more, now that luod has run them: the
		// kernel may have slowed (or warmed) in between, and a figure
		// taken on each side of luod's shows it. luod holds the device,
		// so it is stopped for this and started again for the carry.
		l.stop()
		measurePreserveDirectAgain(t, res)
		l = startLuod(t, e, "")
	} else {
		k := e.stage - 2 // the update that brought us here
		r := Retrieve{Release: rel, Sessions: carried[k], Files: carryFiles, FileSize: carrySize}
		// The direct program before luod (the device has one opener),
		// then its start alone. Each is the first run of its binary in
		// this boot, as luod's is: under TCG a binary's first run pays
		// the translation of its code, hundreds of ms, and a second run
		// of the same file does not.
		r.Minimal, r.Direct, r.Verified = retrieveMinimal(t, e, direct, e.stage-1, carried[k])
		r.MinimalStart, _, _ = retrieveMinimal(t, e, startAlone, 0, 0)
		if k+1 < len(carried) {
			raw = carryRaw(t, e.stage, carried[k+1])
		}
		l = startLuod(t, e, "")
		r.Ready = l.ready
		if b, ok := blackout(t, e, rel); ok {
			res.Blackout = append(res.Blackout, b)
		}
		r.RSSKiB, r.RSSFileKiB, r.PeakKiB = l.rss(t)
		var n int
		r.Reclaim, n = reclaimLuod(t, l, e.stage-1, carried[k])
		r.Verified += n
		r.ExporterRSSKiB, r.ExporterRSSFileKiB = l.exporterRSS(t)
		res.Retrieve = append(res.Retrieve, r)
		say("retrieve %d x %d: direct program exec to READY %s ms (start alone %s ms, loop %s ms); luod exec to READY %s ms (%.2fx), + reclaim %s ms = %s ms (%.2fx), rss %d KiB (exporter %d KiB), %d files verified",
			r.Sessions, r.Files, ms(r.Minimal), ms(r.MinimalStart), ms(r.Direct), ms(r.Ready), ratio(r.Ready, r.Minimal),
			ms(r.Reclaim), ms(r.Luod()), ratio(r.Luod(), r.Minimal), r.RSSKiB, r.ExporterRSSKiB, r.Verified)
		if k+1 == len(carried) {
			finish(t, e, res, l)
			return
		}
	}
	carryLuod(t, l, e.stage, carried[e.stage-1])
	save(t, e, res)
	upgrade(t, e, l)
	// The raw holder's sessions stay open until the kexec, which upgrade
	// waits for.
	runtime.KeepAlive(raw)
}

func save(t *testing.T, e env, res *Results) {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "results.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func finish(t *testing.T, e env, res *Results, l *luod) {
	l.stop()
	save(t, e, res)
	md := res.Markdown()
	if err := os.WriteFile(filepath.Join(e.dir, "report.md"), []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(md), "\n") {
		say("| %s", strings.TrimPrefix(line, "| "))
	}
	say("done")
}

// ---- data

// fill writes the pattern of (kind, stage, session, token) into b.
func fill(b []byte, kind byte, stage, sess int, token uint64) {
	x := uint64(kind)<<56 ^ uint64(stage)<<48 ^ uint64(sess)<<24 ^ token ^ 0x9e3779b97f4a7c15
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i], b[i+1], b[i+2], b[i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
		b[i+4], b[i+5], b[i+6], b[i+7] = byte(x>>32), byte(x>>40), byte(x>>48), byte(x>>56)
	}
}

func memfd(t *testing.T, data []byte) *os.File {
	fd, err := unix.MemfdCreate("bench", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd:bench")
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	return f
}

// check fails unless f holds exactly the pattern of (kind, stage, sess, token).
func check(t *testing.T, f *os.File, want, got []byte, kind byte, stage, sess int, token uint64) {
	fill(want, kind, stage, sess, token)
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(want)) {
		t.Fatalf("%c session %d token %d: size %d, want %d", kind, sess, token, fi.Size(), len(want))
	}
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatalf("%c session %d token %d: %v", kind, sess, token, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%c session %d token %d: data differs from what was preserved", kind, sess, token)
	}
}

func rawPrefix(stage int) string   { return fmt.Sprintf("bench-raw-%d-", stage) }
func rawName(stage, i int) string  { return fmt.Sprintf("%s%04d", rawPrefix(stage), i) }
func luodName(stage, i int) string { return fmt.Sprintf("bench-luod-%d-%04d", stage, i) }

// ---- preserve

func preserveFiles(t *testing.T) []*os.File {
	files := make([]*os.File, 1000)
	buf := make([]byte, preserveSize)
	for i := range files {
		fill(buf, 'p', 1, 0, uint64(i))
		files[i] = memfd(t, buf)
	}
	return files
}

var pfiles []*os.File

func measurePreserveDirect(t *testing.T, res *Results) {
	pfiles = preserveFiles(t)
	warmPreserve(t)
	for _, lay := range preserveLayouts {
		d := preserveDirect(t, lay[0], lay[1])
		res.Preserve = append(res.Preserve, Preserve{Sessions: lay[0], Files: lay[1], FileSize: preserveSize, Direct: d})
		say("preserve direct %d x %d: %s ms", lay[0], lay[1], ms(d))
	}
}

func measurePreserveDirectAgain(t *testing.T, res *Results) {
	for k, lay := range preserveLayouts {
		p := &res.Preserve[k]
		p.DirectAfter = preserveDirect(t, lay[0], lay[1])
		say("preserve direct %d x %d after luod: %s ms (before luod %s ms)", lay[0], lay[1], ms(p.DirectAfter), ms(p.Direct))
	}
	for _, f := range pfiles {
		f.Close()
	}
	pfiles = nil
}

// preserveDirect creates s sessions of f of the preserve files each with
// the ioctls straight on the device, and returns the time it took; then
// it drops them.
func preserveDirect(t *testing.T, s, f int) time.Duration {
	dev, err := ioctl.Open(ioctl.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	ss := make([]*ioctl.Session, s)
	t0 := time.Now()
	for i := range s {
		if ss[i], err = dev.CreateSession(fmt.Sprintf("bench-p-%04d", i)); err != nil {
			t.Fatal(err)
		}
		for j := range f {
			if err := ss[i].PreserveFD(int(pfiles[i*f+j].Fd()), uint64(j+1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	d := time.Since(t0)
	for _, x := range ss {
		x.Close() // the last fd: the kernel drops the session and unpreserves
	}
	return d
}

func warmPreserve(t *testing.T) {
	dev, err := ioctl.Open(ioctl.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	s, err := dev.CreateSession("bench-warm")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for i, f := range pfiles {
		if err := s.PreserveFD(int(f.Fd()), uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	say("warm-up: %d files preserved for the first time in %s ms (untimed)", len(pfiles), ms(time.Since(t0)))
	s.Close() // the last fd: the kernel drops the session and unpreserves
}

func measurePreserveLuod(t *testing.T, l *luod, res *Results) {
	for k, lay := range preserveLayouts {
		s, f := lay[0], lay[1]
		p := &res.Preserve[k]
		// Batched as the protocol allows (create_sessions: many sessions
		// and up to proto.MaxFDs files a request; a session of more files
		// goes by create_session and preserve): the figure (a) is judged by.
		p.Luod = preserveThroughLuod(t, l, s, f, true)
		p.RSSKiB, p.RSSFileKiB, p.PeakKiB = l.rss(t)
		p.ExporterRSSKiB, p.ExporterRSSFileKiB = l.exporterRSS(t)
		deletePreserved(t, l, s)
		// One request a session, as independent workloads would each ask.
		if s > 1 {
			p.OneByOne = preserveThroughLuod(t, l, s, f, false)
			deletePreserved(t, l, s)
		}
		say("preserve luod %d x %d: %s ms (direct %s ms, %.2fx; one request a session %s ms), rss %d KiB (exporter %d KiB)",
			s, f, ms(p.Luod), ms(p.Direct), ratio(p.Luod, p.Direct), ms(p.OneByOne), p.RSSKiB, p.ExporterRSSKiB)
	}
}

// preserveThroughLuod has luod create s sessions of f of the preserve
// files each, batched (CreateSessions) or one create_session request a
// session, checks every file came back preserved with its size and that
// luod holds s open sessions, and returns the time of the requests.
func preserveThroughLuod(t *testing.T, l *luod, s, f int, batched bool) time.Duration {
	ctx := context.Background()
	reqs := make([]client.SessionToCreate, s)
	for i := range reqs {
		reqs[i].Name = fmt.Sprintf("bench-p-%04d", i)
		reqs[i].Files = make([]client.FileToPreserve, f)
		for j := range f {
			reqs[i].Files[j] = client.FileToPreserve{File: pfiles[i*f+j], Token: uint64(j + 1), Label: fmt.Sprintf("ram-%d", j)}
		}
	}
	got := make([][]proto.PreservedFile, s)
	t0 := time.Now()
	if batched {
		created, err := l.c.CreateSessions(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range created {
			got[i] = c.Files
		}
	} else {
		for i, r := range reqs {
			cs, files, err := l.c.CreateSessionWithFiles(ctx, r.Name, nil, r.Files)
			if err != nil {
				t.Fatal(err)
			}
			cs.Close() // luod holds the session
			got[i] = files
		}
	}
	d := time.Since(t0)
	// luod answers each file with the size it found.
	for i, files := range got {
		if len(files) != f {
			t.Fatalf("session %s: luod preserved %d files, want %d", reqs[i].Name, len(files), f)
		}
		for j, g := range files {
			if g.Token != uint64(j+1) || g.Size != preserveSize {
				t.Fatalf("session %s: file %d preserved as %+v", reqs[i].Name, j, g)
			}
		}
	}
	st, err := l.c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sessions.Open != s {
		t.Fatalf("luod holds %d open sessions, want %d", st.Sessions.Open, s)
	}
	return d
}

func deletePreserved(t *testing.T, l *luod, s int) {
	for i := range s {
		if err := l.c.DeleteSession(context.Background(), fmt.Sprintf("bench-p-%04d", i)); err != nil {
			t.Fatal(err)
		}
	}
}

// ---- carry across the kexec

// carryRaw preserves n sessions of carryFiles memfds directly, as a raw
// holder would, and keeps the session fds open.
func carryRaw(t *testing.T, stage, n int) []*ioctl.Session {
	dev, err := ioctl.Open(ioctl.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	buf := make([]byte, carrySize)
	out := make([]*ioctl.Session, n)
	for i := range n {
		if out[i], err = dev.CreateSession(rawName(stage, i)); err != nil {
			t.Fatal(err)
		}
		for j := range carryFiles {
			fill(buf, 'r', stage, i, uint64(j+1))
			f := memfd(t, buf)
			if err := out[i].PreserveFD(int(f.Fd()), uint64(j+1)); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	return out
}

// carryLuod preserves n sessions of carryFiles memfds through luod.
func carryLuod(t *testing.T, l *luod, stage, n int) {
	ctx := context.Background()
	buf := make([]byte, carrySize)
	for i := range n {
		name := luodName(stage, i)
		req := make([]client.FileToPreserve, carryFiles)
		for j := range req {
			fill(buf, 'l', stage, i, uint64(j+1))
			req[j] = client.FileToPreserve{File: memfd(t, buf), Token: uint64(j + 1), Label: fmt.Sprintf("ram-%d", j)}
		}
		cs, _, err := l.c.CreateSessionWithFiles(ctx, name, map[string]string{"bench": "carry"}, req)
		if err != nil {
			t.Fatal(err)
		}
		cs.Close()
		for _, r := range req {
			r.File.Close()
		}
	}
}

// ---- retrieve

// The direct program, and a copy of it (bench.sh) for its start alone:
// separate files, so that each run is the first of its code in the boot.
const (
	direct     = "directretrieve"
	startAlone = "directretrieve-start"
)

// retrieveMinimal runs the direct program bin (internal/bench/directretrieve)
// on the n raw sessions carried from stage from, as luod is run, and
// checks every file it hands back byte-exact. It returns the program's
// exec to READY=1 (all retrieved and finished), its loop alone, and the
// files verified. n 0 is the program's own start: the device opened and
// closed, nothing retrieved.
func retrieveMinimal(t *testing.T, e env, bin string, from, n int) (ready, loop time.Duration, verified int) {
	p := start(t, e, bin, []string{rawPrefix(from), strconv.Itoa(n), strconv.Itoa(carryFiles)},
		fmt.Sprintf("%s-%d-%d.log", bin, e.stage, n), true)
	defer p.sink.Close()
	m := regexp.MustCompile(`LOOP_NS=(\d+)`).FindStringSubmatch(p.readyLine)
	if m == nil {
		t.Fatalf("directretrieve: no LOOP_NS= in %q", p.readyLine)
	}
	ns, _ := strconv.ParseInt(m[1], 10, 64)
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	want, got := make([]byte, carrySize), make([]byte, carrySize)
	seen := make([]bool, n)
	done := false
	for msgs := p.fds; msgs != nil; {
		select {
		case err := <-exited:
			// Everything it sent is queued before its exit: keep reading.
			if err != nil {
				t.Fatalf("directretrieve %d sessions: %v", n, err)
			}
			exited = nil
		case msg, ok := <-msgs:
			if !ok {
				msgs = nil
				break
			}
			if strings.HasPrefix(msg.text, "BENCH-DONE") {
				done = true
				continue
			}
			i, err := strconv.Atoi(strings.TrimPrefix(msg.text, "BENCH-FDS="))
			if err != nil || i < 0 || i >= n || seen[i] || len(msg.fds) != carryFiles {
				t.Fatalf("directretrieve sent %q with %d fds", msg.text, len(msg.fds))
			}
			seen[i] = true
			for j, fd := range msg.fds {
				f := os.NewFile(uintptr(fd), "retrieved")
				check(t, f, want, got, 'r', from, i, uint64(j+1))
				f.Close()
				verified++
			}
		}
	}
	if !done {
		t.Fatal("directretrieve: no BENCH-DONE")
	}
	if exited != nil {
		if err := <-exited; err != nil {
			t.Fatalf("directretrieve %d sessions: %v", n, err)
		}
	}
	if verified != n*carryFiles {
		t.Fatalf("directretrieve handed back %d files, want %d", verified, n*carryFiles)
	}
	<-p.relayed
	say("retrieve direct (minimal program) %d x %d: exec to READY %s ms, its loop %s ms, %d files byte-exact",
		n, carryFiles, ms(p.ready), ms(time.Duration(ns)), verified)
	return p.ready, time.Duration(ns), verified
}

func reclaimLuod(t *testing.T, l *luod, from, n int) (time.Duration, int) {
	ctx := context.Background()
	names := make([]string, n)
	for i := range names {
		names[i] = luodName(from, i)
	}
	t0 := time.Now()
	got, err := l.c.ReclaimSessions(ctx, names, true)
	d := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	want, buf := make([]byte, carrySize), make([]byte, carrySize)
	var verified int
	for i, rf := range got {
		if len(rf) != carryFiles {
			t.Fatalf("session %s: %d files reclaimed, want %d", luodName(from, i), len(rf), carryFiles)
		}
		for j, f := range rf {
			if f.Token != uint64(j+1) {
				t.Fatalf("session %s: file %d has token %d", luodName(from, i), j, f.Token)
			}
			check(t, f.File, want, buf, 'l', from, i, f.Token)
			f.File.Close()
			verified++
		}
	}
	return d, verified
}

// ---- luod and the direct program, started alike

type luod struct {
	*proc
	c *client.Client
}

// proc is a program the bench started as systemd would start a Type=notify
// service ($NOTIFY_SOCKET), its output relayed through a pipe to a log in
// the share, timed from its exec to its READY=1.
type proc struct {
	cmd   *exec.Cmd
	ready time.Duration
	sink  *os.File
	// readyLine is the datagram that said READY=1; fds receives the
	// datagrams after it that carry fds, closed when the program exits.
	readyLine string
	fds       chan fdMsg
	relayed   chan struct{} // closed when the log relay ends
}

type fdMsg struct {
	text string
	fds  []int
}

// start runs ./name with args, as systemd would run a Type=notify
// service: $NOTIFY_SOCKET (a store that takes fds, for luod's fd store),
// stdout and stderr into a pipe (as into journald's socket) that a relay
// copies to logName in the share. It times the exec to READY=1. With keep,
// fds sent after READY=1 are passed on (proc.fds); otherwise they are
// closed, as by a store that is never read back.
func start(t *testing.T, e env, name string, args []string, logName string, keep bool) *proc {
	os.Remove(notifySocket)
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(s, &unix.SockaddrUnix{Name: notifySocket}); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	// systemd's notify socket has an 8 MiB receive buffer.
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		t.Fatal(err)
	}
	p := &proc{sink: os.NewFile(uintptr(s), notifySocket), fds: make(chan fdMsg, 64), relayed: make(chan struct{})}
	readyAt := make(chan readyMsg, 1)
	go notifySink(s, readyAt, p.fds, keep)

	log, err := os.OpenFile(filepath.Join(e.dir, logName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command("./"+name, args...)
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifySocket)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	t0 := time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() {
		defer close(p.relayed)
		defer log.Close()
		r := bufio.NewReader(pr)
		for {
			line, err := r.ReadBytes('\n')
			log.Write(line)
			if err != nil {
				return
			}
		}
	}()
	exited := make(chan error, 1)
	go func() {
		<-p.relayed // the program's output is all in, or it is still running
		exited <- nil
	}()
	select {
	case m := <-readyAt:
		p.ready, p.readyLine = m.at.Sub(t0), m.text
	case <-exited:
		p.cmd.Wait()
		b, _ := os.ReadFile(filepath.Join(e.dir, logName))
		t.Fatalf("%s exited before READY=1 (%v): %s", name, p.cmd.ProcessState, b)
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s sent no READY=1 within 2 minutes", name)
	}
	return p
}

// startLuod runs luod (see start) and connects to it. Its log and CPU
// profile (stopped at the upgrade request), to see where luod's time goes
// in the VM, go to the share as luod-STAGE[-TAG]: the untagged one is the
// luod that runs the upgrade, whose reboot line the next boot reads.
func startLuod(t *testing.T, e env, tag string) *luod {
	os.MkdirAll("/run/luod", 0o755)
	os.MkdirAll("/var/lib/luod", 0o755)
	name := fmt.Sprintf("luod-%d", e.stage)
	if tag != "" {
		name += "-" + tag
	}
	// luod's metrics endpoint on, as by default: luod starts its exporter
	// once READY, and the exporter's memory counts in (d).
	p := start(t, e, "luod", []string{"--socket.path", luodSocket,
		"--reclaim.grace", "1h", "--limits.sessions-per-uid", "4096",
		"--debug.cpuprofile", filepath.Join(e.dir, name+".cpu.pprof")},
		name+".log", false)
	c, err := client.Dial(luodSocket)
	if err != nil {
		t.Fatal(err)
	}
	return &luod{proc: p, c: c}
}

type readyMsg struct {
	at   time.Time
	text string
}

// notifySink is the service manager's end of $NOTIFY_SOCKET: it notes
// READY=1, and passes on (keep) or closes the fds that come after it. It
// closes fds when the socket is closed.
func notifySink(s int, readyAt chan<- readyMsg, fds chan<- fdMsg, keep bool) {
	defer close(fds)
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*proto.MaxFDs)+unix.CmsgSpace(unix.SizeofUcred))
	sent := false
	for {
		n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		var got []int
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if f, err := unix.ParseUnixRights(&m); err == nil {
					got = append(got, f...)
				}
			}
		}
		text := string(buf[:n])
		if !sent && strings.Contains(text, "READY=1") {
			readyAt <- readyMsg{time.Now(), text}
			sent = true
		}
		if keep && (len(got) > 0 || strings.HasPrefix(text, "BENCH-DONE")) {
			fds <- fdMsg{text, got}
			if strings.HasPrefix(text, "BENCH-DONE") {
				return
			}
			continue
		}
		for _, fd := range got {
			unix.Close(fd)
		}
	}
}

// settle is how long luod is left alone before its memory is read: its
// disk writer runs 500 ms after the last change (diskQuiet), writes the
// disk copy and gives the free heap back to the kernel (trimMemory), as
// it does after every burst of work. What is read is then what luod
// holds while it idles with these sessions, the days between updates;
// its peak (VmHWM) is read too.
const settle = 2500 * time.Millisecond

// rss is luod's VmRSS, the file-backed part of it and its peak since its
// start (VmHWM), in KiB, read once luod has settled.
func (l *luod) rss(t *testing.T) (rss, file, peak int64) {
	time.Sleep(settle)
	return vmRSS(t, l.cmd.Process.Pid)
}

// exporterRSS scrapes luod's metrics endpoint (waiting, as the exporter
// starts once luod is READY, until luod answered it: luod_up 1) and
// returns the VmRSS of the exporter serving it, luod's child, and the
// file-backed part of it.
func (l *luod) exporterRSS(t *testing.T) (int64, int64) {
	hc := &http.Client{Timeout: 10 * time.Second}
	for deadline := time.Now().Add(time.Minute); ; {
		resp, err := hc.Get("http://127.0.0.1:9478/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), "\nluod_up 1\n") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("luod's metrics endpoint: no page with luod_up 1 after a minute (last error %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, s := range stats {
		b, err := os.ReadFile(s)
		// pid (comm) state ppid ...
		_, rest, ok := strings.Cut(string(b), "(luod-exporter) ")
		if err != nil || !ok {
			continue
		}
		var state string
		var ppid int
		if _, err := fmt.Sscan(rest, &state, &ppid); err != nil || ppid != l.cmd.Process.Pid || state == "Z" {
			continue // not luod's, or one that exited and is not reaped yet
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(s)))
		rss, file, _ := vmRSS(t, pid)
		return rss, file
	}
	t.Fatalf("no luod-exporter child of luod (pid %d)", l.cmd.Process.Pid)
	return 0, 0
}

// raiseDgramQueue sets net.unix.max_dgram_qlen to at least n, for the
// unix sockets made from now on.
func raiseDgramQueue(n int) error {
	const path = "/proc/sys/net/unix/max_dgram_qlen"
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v >= n {
		return nil
	}
	return os.WriteFile(path, []byte(strconv.Itoa(n)), 0o644)
}

// loopbackUp sets lo up, as the VM's init does not.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: SIOCGIFFLAGS: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: SIOCSIFFLAGS: %w", err)
	}
	return nil
}

// vmRSS reads a process's VmRSS, its file-backed part and its peak, in
// KiB. The file-backed part is pages of mapped files, above all the
// process's own binary, which count as RssFile on a disk and as RssShmem
// on the guest's initramfs (tmpfs); both are the file's cache, shared,
// not the process's own memory (RssAnon). The peak is VmHWM: the most
// VmRSS was since the process started.
func vmRSS(t *testing.T, pid int) (rss, file, peak int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		var to *int64
		switch k {
		case "VmRSS":
			to = &rss
		case "VmHWM":
			to = &peak
		case "RssFile", "RssShmem":
			to = &file
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/status: %s: %v", pid, line, err)
		}
		*to += n
		found++
	}
	if found != 4 {
		t.Fatalf("no VmRSS, VmHWM, RssFile or RssShmem in /proc/%d/status", pid)
	}
	return rss, file, peak
}

func (l *luod) stop() {
	l.c.Close()
	l.cmd.Process.Signal(syscall.SIGTERM)
	l.cmd.Wait()
	l.sink.Close()
}

// upgrade loads the next boot's kernel and has luod run the live update,
// a subscribed client answering ready at once. It does not return.
func upgrade(t *testing.T, e env, l *luod) {
	ctx := context.Background()
	next := filepath.Join(e.share, fmt.Sprintf("boot%d", e.stage+1))
	kernel, err := os.Open(filepath.Join(next, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := os.Open(filepath.Join(e.share, "initrd.img"))
	if err != nil {
		t.Fatal(err)
	}
	cmdline := regexp.MustCompile(`luod\.stage=[0-9]+`).ReplaceAllString(readTrim("/proc/cmdline"), fmt.Sprintf("luod.stage=%d", e.stage+1))
	if _, err := l.c.Load(ctx, kernel, initrd, nil, proto.LoadArgs{Cmdline: cmdline}); err != nil {
		t.Fatal(err)
	}
	w, err := client.Dial(luodSocket)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range w.Events() {
			if ev.Event == proto.EventPrepare {
				var p proto.PrepareEvent
				ev.Decode(&p)
				w.Ready(ctx, p.Upgrade)
			}
		}
	}()
	say("upgrading into boot %d", e.stage+1)
	_, err = l.c.Upgrade(ctx, proto.UpgradeArgs{TimeoutMS: 60000}, nil)
	if !errors.Is(err, client.ErrRebooting) {
		t.Fatalf("upgrade: %v", err)
	}
	time.Sleep(2 * time.Minute)
	t.Fatal("no kexec")
}

// blackout reads luod's share of the pause that brought this boot, as the
// previous luod noted it in its reserved session's pause page before
// reboot(2) and this boot's luod logs it at recovery. The previous luod's
// reboot line says the same, when the relay got it to the share: it is
// luod's last write before reboot(2), and the relay's copy of it (a 9p
// write, which the kexec's device shutdown cuts) loses that race at times.
func blackout(t *testing.T, e env, rel string) (Blackout, bool) {
	logFile := filepath.Join(e.dir, fmt.Sprintf("luod-%d.log", e.stage))
	var note string
	for deadline := time.Now().Add(10 * time.Second); note == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(logFile) // the relay may still be writing it
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, pauseLine) {
				note = l
			}
		}
	}
	if note == "" {
		t.Errorf("luod logged no %q line at recovery: the previous luod's pause note did not come over", pauseLine)
		return Blackout{}, false
	}
	b, err := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("luod-%d.log", e.stage-1)))
	if err != nil {
		t.Fatal(err)
	}
	var reboot string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "calling reboot") {
			reboot = l
		}
	}
	field := func(line, key string) string {
		m := regexp.MustCompile(` ` + key + `=([^\s"]+)`).FindStringSubmatch(line)
		if m == nil {
			return ""
		}
		return m[1]
	}
	dur := func(key string) time.Duration {
		v := field(note, key)
		if v == "" {
			t.Errorf("no %s= in %q", key, note)
			return 0
		}
		if reboot != "" && field(reboot, key) != v {
			t.Errorf("%s: %s in the pause note, %s in the reboot line", key, v, field(reboot, key))
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%s: %v", key, v, err)
		}
		return d
	}
	n, _ := strconv.Atoi(field(note, "sessions"))
	x := Blackout{From: regexp.MustCompile(`\S+`).FindString(readTrim(filepath.Join(e.share, fmt.Sprintf("boot%d/release", e.stage-1)))),
		To: rel, Sessions: n, SinceReady: dur("since_ready"), Manifest: dur("manifest"), Sync: dur("sync"),
		Woke: dur("woke"), Events: dur("events"),
		Prewritten: field(note, "manifest_prewritten") == "true"}
	// Nothing changes during the bench's barrier: the pause must have
	// kept the manifest written before it, or its figure is not the one
	// docs/performance.md explains.
	if !x.Prewritten {
		t.Errorf("luod's pause note does not say manifest_prewritten=true: %s", note)
	}
	how := "its reboot line agrees"
	if reboot == "" {
		how = "its reboot line lost the race with the kexec to the share"
	}
	say("blackout %s -> %s: last ready to reboot(2) %s ms, sync %s ms, manifest phase %s ms (from luod's pause note; %s)",
		x.From, x.To, ms(x.SinceReady), ms(x.Sync), ms(x.Manifest), how)
	return x, true
}

// pauseLine marks the line in which luod reports the pause that brought
// its boot.
const pauseLine = "the last update's pause"

// ---- the machine

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func release() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}

func cpuModel() string {
	for _, l := range strings.Split(readTrim("/proc/cpuinfo"), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown"
}

func memTotal() int64 {
	for _, l := range strings.Split(readTrim("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
