//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
		l = startLuod(t, e)
		res.ColdReady = l.ready
		say("cold boot: luod exec to READY %s ms", ms(l.ready))
		measurePreserveLuod(t, l, res)
	} else {
		k := e.stage - 2 // the update that brought us here
		if b, ok := blackout(t, e, rel); ok {
			res.Blackout = append(res.Blackout, b)
		}
		r := Retrieve{Release: rel, Sessions: carried[k], Files: carryFiles, FileSize: carrySize}
		r.Direct, r.Verified = retrieveDirect(t, e.stage-1, carried[k])
		if k+1 < len(carried) {
			raw = carryRaw(t, e.stage, carried[k+1])
		}
		l = startLuod(t, e)
		r.Ready = l.ready
		r.RSSKiB = l.rss(t)
		var n int
		r.Reclaim, n = reclaimLuod(t, l, e.stage-1, carried[k])
		r.Verified += n
		res.Retrieve = append(res.Retrieve, r)
		say("retrieve %d x %d: direct %s ms, luod ready %s ms + reclaim %s ms = %.2fx, rss %d KiB, %d files verified",
			r.Sessions, r.Files, ms(r.Direct), ms(r.Ready), ms(r.Reclaim), ratio(r.Luod(), r.Direct), r.RSSKiB, r.Verified)
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

func rawName(stage, i int) string  { return fmt.Sprintf("bench-raw-%d-%04d", stage, i) }
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
	for _, lay := range preserveLayouts {
		s, f := lay[0], lay[1]
		dev, err := ioctl.Open(ioctl.DevicePath)
		if err != nil {
			t.Fatal(err)
		}
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
		dev.Close()
		res.Preserve = append(res.Preserve, Preserve{Sessions: s, Files: f, FileSize: preserveSize, Direct: d})
		say("preserve direct %d x %d: %s ms", s, f, ms(d))
	}
}

func measurePreserveLuod(t *testing.T, l *luod, res *Results) {
	ctx := context.Background()
	for k, lay := range preserveLayouts {
		s, f := lay[0], lay[1]
		t0 := time.Now()
		for i := range s {
			name := fmt.Sprintf("bench-p-%04d", i)
			req := make([]client.FileToPreserve, f)
			for j := range f {
				req[j] = client.FileToPreserve{File: pfiles[i*f+j], Token: uint64(j + 1), Label: fmt.Sprintf("ram-%d", j)}
			}
			// The files ride with create_session (one request a session
			// of up to 253 files), the rest as preserve requests.
			cs, got, err := l.c.CreateSessionWithFiles(ctx, name, nil, req)
			if err != nil {
				t.Fatal(err)
			}
			cs.Close() // luod holds the session
			// luod answers each file with the size it found.
			if len(got) != f {
				t.Fatalf("session %s: luod preserved %d files, want %d", name, len(got), f)
			}
			for j, g := range got {
				if g.Token != uint64(j+1) || g.Size != preserveSize {
					t.Fatalf("session %s: file %d preserved as %+v", name, j, g)
				}
			}
		}
		d := time.Since(t0)
		p := &res.Preserve[k]
		p.Luod, p.RSSKiB = d, l.rss(t)
		st, err := l.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Sessions.Open != s {
			t.Fatalf("luod holds %d open sessions, want %d", st.Sessions.Open, s)
		}
		for i := range s {
			if err := l.c.DeleteSession(ctx, fmt.Sprintf("bench-p-%04d", i)); err != nil {
				t.Fatal(err)
			}
		}
		say("preserve luod %d x %d: %s ms (direct %s ms, %.2fx), rss %d KiB", s, f, ms(d), ms(p.Direct), ratio(d, p.Direct), p.RSSKiB)
	}
	for _, f := range pfiles {
		f.Close()
	}
	pfiles = nil
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

func retrieveDirect(t *testing.T, from, n int) (time.Duration, int) {
	dev, err := ioctl.Open(ioctl.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	files := make([]*os.File, 0, n*carryFiles)
	t0 := time.Now()
	for i := range n {
		s, err := dev.RetrieveSession(rawName(from, i))
		if err != nil {
			t.Fatal(err)
		}
		for j := range carryFiles {
			f, err := s.RetrieveFD(uint64(j + 1))
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
		if err := s.Finish(); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	d := time.Since(t0)
	want, got := make([]byte, carrySize), make([]byte, carrySize)
	for k, f := range files {
		check(t, f, want, got, 'r', from, k/carryFiles, uint64(k%carryFiles+1))
		f.Close()
	}
	say("retrieve direct %d x %d: %s ms, %d files byte-exact", n, carryFiles, ms(d), len(files))
	return d, len(files)
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

// ---- luod

type luod struct {
	cmd   *exec.Cmd
	c     *client.Client
	ready time.Duration
	sink  *os.File
}

// startLuod runs luod as systemd would (Type=notify: $NOTIFY_SOCKET, its
// fd store included), its log in the share, and times its exec to READY=1.
func startLuod(t *testing.T, e env) *luod {
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
	sink := os.NewFile(uintptr(s), notifySocket)
	readyAt := make(chan time.Time, 1)
	go notifySink(s, readyAt)

	os.MkdirAll("/run/luod", 0o755)
	os.MkdirAll("/var/lib/luod", 0o755)
	log, err := os.OpenFile(filepath.Join(e.dir, fmt.Sprintf("luod-%d.log", e.stage)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// Its CPU profile goes to the share too (stopped at the upgrade
	// request), to see where luod's time goes in the VM.
	cmd := exec.Command("./luod", "--socket.path", luodSocket, "--web.listen-address", "",
		"--reclaim.grace", "1h", "--limits.sessions-per-uid", "4096",
		"--debug.cpuprofile", filepath.Join(e.dir, fmt.Sprintf("luod-%d.cpu.pprof", e.stage)))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifySocket)
	// luod writes its log into a pipe, as into journald's socket; a relay
	// copies it to the share, where the next boot reads the reboot line.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() {
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
	var ready time.Duration
	select {
	case at := <-readyAt:
		ready = at.Sub(t0)
	case <-time.After(2 * time.Minute):
		t.Fatal("luod sent no READY=1 within 2 minutes")
	}
	c, err := client.Dial(luodSocket)
	if err != nil {
		t.Fatal(err)
	}
	return &luod{cmd: cmd, c: c, ready: ready, sink: sink}
}

// notifySink is the service manager's end of $NOTIFY_SOCKET: it notes
// READY=1 and closes the fds luod stores, as a store that is never read
// back.
func notifySink(s int, readyAt chan<- time.Time) {
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
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if fds, err := unix.ParseUnixRights(&m); err == nil {
					for _, fd := range fds {
						unix.Close(fd)
					}
				}
			}
		}
		if !sent && bytes.Contains(buf[:n], []byte("READY=1")) {
			readyAt <- time.Now()
			sent = true
		}
	}
}

func (l *luod) rss(t *testing.T) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", l.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in luod's status")
	return 0
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

// blackout reads luod's share of the last update's pause from the
// previous boot's luod log (written to the share before the reboot).
func blackout(t *testing.T, e env, rel string) (Blackout, bool) {
	b, err := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("luod-%d.log", e.stage-1)))
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "calling reboot") {
			line = l
		}
	}
	if line == "" {
		// The relay lost the race with the kexec: no figure, not a
		// wrong one.
		say("blackout %d -> %d: luod's reboot line did not reach the share before the kexec", e.stage-1, e.stage)
		return Blackout{}, false
	}
	dur := func(key string) time.Duration {
		m := regexp.MustCompile(` ` + key + `=(\S+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no %s= in %q", key, line)
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("%s=%s: %v", key, m[1], err)
		}
		return d
	}
	n, _ := strconv.Atoi(regexp.MustCompile(` sessions=(\d+)`).FindStringSubmatch(line + " sessions=0")[1])
	x := Blackout{From: regexp.MustCompile(`\S+`).FindString(readTrim(filepath.Join(e.share, fmt.Sprintf("boot%d/release", e.stage-1)))),
		To: rel, Sessions: n, SinceReady: dur("since_ready"), Manifest: dur("manifest"), Sync: dur("sync")}
	say("blackout %s -> %s: last ready to reboot(2) %s ms, sync %s ms, manifest phase %s ms",
		x.From, x.To, ms(x.SinceReady), ms(x.Sync), ms(x.Manifest))
	return x, true
}

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
