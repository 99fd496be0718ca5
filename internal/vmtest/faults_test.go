//go:build linux

package vmtest

import (
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/kexec"
	"github.com/luod/luod/pkg/proto"
)

// The fault cases of deploy/qemu/faults.sh (make vm-faults): luod runs as
// a plain service (deploy/qemu/luod-svc.sh, no systemd, so no fd store)
// with its state directory on the host share, LUOD_STATE_DIR, so that the
// third boot, a second QEMU run, finds what the second left.
//
//	boot 1 (7.2, cold): the faults, then the real kexec
//	boot 2 (7.3): every session reclaimed byte-exact; two left open,
//	               then the machine powers off
//	boot 3 (7.3, cold boot on the same share): those two named lost

const (
	loadClients  = 1000
	loadFileSize = 64 << 10
	// Bounds on luod while it serves loadClients clients, each with a
	// session and a preserved memfd: per client its connection and its
	// session fd, and a little; resident memory well under the VM's.
	loadFDsPerClient = 2
	loadFDSlack      = 64
	loadMaxHWMKiB    = 256 << 10
	metricsURL       = "http://127.0.0.1:9478/metrics"
)

// faultFiles are the sessions whose data the faults must not touch, with
// their sizes and pattern seeds; boot 2 reclaims each byte-exact.
var faultFiles = map[string]struct {
	size int
	seed byte
}{
	"faults-keep": {4 << 20, 10}, // made before every fault of boot 1
	"quit-vmm":    {16 << 20, 20},
	"faults-full": {64 << 10, 30}, // made while the state directory is full
	"faults-ro":   {64 << 10, 31}, // and read-only
}

// wideFiles is how many memfds the session "faults-wide" holds: more
// than one answer carries (proto.MaxFDs), so that boot 2 can only have
// it back file by file through its own session fd.
const wideFiles = proto.MaxFDs + 47

// wideData is the content of file j (token j+1) of "faults-wide": a
// size of its own, so that the sizes luod lists are checked too.
func wideData(j int) []byte {
	return bytes.Repeat([]byte{byte(j), byte(j >> 8), 'w'}, 1365+j)
}

// wideNeighbours are reclaimed with "faults-wide" in one call, one on
// each side of it.
var wideNeighbours = []string{"faults-wide-before", "faults-wide-after"}

// faultState is what boot 1 leaves for boot 2 in the share.
type faultState struct {
	Digests map[string]string `json:"digests"`
	Load    loadStats         `json:"load"`
}

type loadStats struct {
	Clients   int   `json:"clients"`
	SetupMS   int64 `json:"setup_ms"`
	FDsBefore int   `json:"fds_before"`
	FDsAt     int   `json:"fds_at_load"`
	RSSKiB    int   `json:"rss_kib"`
	HWMKiB    int   `json:"hwm_kib"`
}

func statePath(share string) string { return filepath.Join(share, "state", "faults.json") }

// TestFaults is one boot of the fault run.
func TestFaults(t *testing.T) {
	e := getEnv(t)
	if os.Getenv("LUOD_STATE_DIR") == "" {
		t.Fatal("LUOD_STATE_DIR is not set: run by deploy/qemu/faults.sh")
	}
	t.Logf("fault boot %d on kernel %s", e.stage, release(t))
	switch e.stage {
	case 1:
		faultsBeforeKexec(t, e)
	case 2:
		faultsAfterKexec(t, e)
	case 3:
		faultsColdBoot(t, e)
	default:
		t.Fatalf("no fault boot %d", e.stage)
	}
}

// luodSvc runs deploy/qemu/luod-svc.sh (start, kill).
func luodSvc(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("sh", append([]string{"./luod-svc.sh"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("luod-svc.sh %v: %v\n%s", args, err, out)
	}
}

func luodPID(t *testing.T) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(b)) == "luod" {
			return pid
		}
	}
	t.Fatal("no luod process")
	return 0
}

func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// procKiB reads a VmRSS-style field of /proc/PID/status.
func procKiB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// luodLog is what luod logged so far (luod-svc.sh keeps it).
func luodLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/tmp/luod.log")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitLog waits until luod's log after offset from matches re.
func waitLog(t *testing.T, from int, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(15 * time.Second); ; {
		l := luodLog(t)
		if m := rx.FindString(l[from:]); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("luod did not log /%s/; its log since:\n%s", re, l[from:])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metrics returns luod's metrics lines that start with name. The
// endpoint is luod-exporter's, which luod starts once ready (and again
// after a restart): a page is taken once the exporter listens and says
// luod answered it (luod_up 1).
func metrics(t *testing.T, name string) []string {
	t.Helper()
	var page string
	hc := &http.Client{Timeout: 5 * time.Second}
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := hc.Get(metricsURL)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if page = string(b); strings.Contains(page, "\nluod_up 1\n") {
				break
			}
			err = fmt.Errorf("luod_up is not 1: luod did not answer the exporter")
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var out []string
	for _, l := range strings.Split(page, "\n") {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			out = append(out, l)
		}
	}
	return out
}

func wantMetric(t *testing.T, line string) {
	t.Helper()
	name, _, _ := strings.Cut(line, " ")
	name, _, _ = strings.Cut(name, "{")
	got := metrics(t, name)
	series, want, _ := strings.Cut(line, " ")
	for _, l := range got {
		// Values compare as numbers: the exposition writes 8.650752e+07.
		ls, v, _ := strings.Cut(l, " ")
		a, err1 := strconv.ParseFloat(v, 64)
		b, err2 := strconv.ParseFloat(want, 64)
		if ls == series && err1 == nil && err2 == nil && a == b {
			return
		}
	}
	t.Errorf("metrics: no %q among %q", line, got)
}

// waitDiskCopy waits until luod's manifest copy on disk names every one of
// names: luod writes it in the background, coalescing bursts.
func waitDiskCopy(t *testing.T, names ...string) {
	t.Helper()
	p := filepath.Join(os.Getenv("LUOD_STATE_DIR"), "manifest.json")
	for deadline := time.Now().Add(15 * time.Second); ; {
		b, _ := os.ReadFile(p)
		all := true
		for _, n := range names {
			all = all && strings.Contains(string(b), `"`+n+`"`)
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("luod's manifest copy %s never named %v:\n%s", p, names, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// preserveNew creates session name with one memfd of size bytes of the
// seed's pattern, in one create_session request, and returns the data's
// digest. The memfd and the session fd are closed again: luod alone holds
// the session.
func preserveNew(t *testing.T, c *client.Client, name string, size int, seed byte) string {
	t.Helper()
	b := make([]byte, size)
	pattern(b, seed, 1)
	f := memfdOf(t, b)
	defer f.Close()
	// One request: the file rides with create_session (the demo's
	// workload shows the two-step create + preserve).
	s, got, err := c.CreateSessionWithFiles(tctx(t, 30*time.Second), name, nil, []client.FileToPreserve{{File: f, Token: 1}})
	if err != nil {
		t.Fatalf("create %s with its file: %v", name, err)
	}
	s.Close()
	if len(got) != 1 || got[0].Size != int64(size) {
		t.Fatalf("create %s with its file: preserved %+v, want one file of %d bytes", name, got, size)
	}
	return digest(b)
}

// reclaimData reclaims (and finishes) session name through c and returns
// the contents of its one file, which must be size bytes.
func reclaimData(ctx context.Context, c *client.Client, name string, size int) ([]byte, error) {
	files, err := c.Reclaim(ctx, name, true)
	if err != nil {
		return nil, fmt.Errorf("reclaim %s: %w", name, err)
	}
	defer func() {
		for _, f := range files {
			f.File.Close()
		}
	}()
	if len(files) != 1 || files[0].Size != int64(size) {
		return nil, fmt.Errorf("reclaim %s: %+v, want one file of %d bytes", name, files, size)
	}
	b := make([]byte, size)
	if _, err := files[0].File.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

// reclaimDigest is reclaimData's digest.
func reclaimDigest(t *testing.T, c *client.Client, name string, size int) string {
	t.Helper()
	b, err := reclaimData(tctx(t, time.Minute), c, name, size)
	if err != nil {
		t.Fatal(err)
	}
	return digest(b)
}

// sessionSizes sums up what luod holds, from its metrics: sessions and
// files by state, and the preserved bytes.
func sessionSizes(t *testing.T) string {
	t.Helper()
	var out []string
	for _, name := range []string{"luod_sessions", "luod_session_files", "luod_preserved_bytes"} {
		out = append(out, metrics(t, name)...)
	}
	return strings.Join(out, "; ")
}

func sameSizes(t *testing.T, what string, before, after string) {
	t.Helper()
	if before != after {
		t.Errorf("sessions changed %s:\nbefore %v\nafter  %v", what, before, after)
	}
}

func faultsBeforeKexec(t *testing.T, e env) {
	sock := proto.DefaultSocket
	st := faultState{Digests: map[string]string{}}
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("luod_killed_without_fd_store", func(t *testing.T) {
		reliability(t, "luod SIGKILLed without an fd store (init without systemd)",
			"VM: 2 sessions held by luod alone (their clients gone), SIGKILL right after the last answer, luod restarted in the same boot",
			"the restarted luod names both lost, the newest too, from its record log on disk: luoctl status, log (session LOST), metrics")
		c := dial(t, sock)
		preserveNew(t, c, "killed-a", 64<<10, 1)
		preserveNew(t, c, "killed-b", 64<<10, 2)
		c.Close()
		// No wait for the lazy manifest copy: the record log got each
		// change before its answer.
		from := len(luodLog(t))
		luodSvc(t, "kill")
		// The restarted luod fails its first reboot call: the case
		// reboot_fails_fault_switch below.
		luodSvc(t, "start", "--test.fault-reboot=1")
		s, err := dial(t, sock).Status(tctx(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(s.LostSessions, ",") != "killed-a,killed-b" || s.Continuity != proto.ContinuityFresh {
			t.Errorf("status after the restart: lost %v, continuity %s; want killed-a,killed-b lost, fresh", s.LostSessions, s.Continuity)
		}
		for _, n := range []string{"killed-a", "killed-b"} {
			waitLog(t, from, `session LOST.*session=`+n)
		}
		// The names came from the record log, not the lazy manifest copy.
		waitLog(t, from, `read what the last luod wrote down" file=\S*record\.log sessions=2`)
		wantMetric(t, "luod_sessions_lost 2")
	})

	admin := dial(t, sock)
	st.Digests["faults-keep"] = preserveNew(t, admin, "faults-keep", faultFiles["faults-keep"].size, faultFiles["faults-keep"].seed)

	step("client_quits_after_preserve", func(t *testing.T) {
		cmd, out := startChild(t, "TestFaultChild", "checkpoint")
		line, _ := out.ReadString('\n')
		if err := cmd.Wait(); err != nil {
			t.Fatalf("the checkpointing client: %v (said %q)", err, line)
		}
		d, ok := strings.CutPrefix(strings.TrimSpace(line), "preserved ")
		if !ok {
			t.Fatalf("the checkpointing client said %q", line)
		}
		st.Digests["quit-vmm"] = d
		s, err := admin.Status(tctx(t, 10*time.Second))
		if err != nil || s.Sessions.Open != 2 {
			t.Fatalf("status after the client quit: %+v, %v; want 2 open sessions (faults-keep, quit-vmm)", s, err)
		}
	})

	step("load_refused", func(t *testing.T) {
		reliability(t, "kexec_file_load refused: truncated initrd (gzip, zstd), kernel over 256 MiB, initrd over 2 GiB",
			"VM: luoctl load of each, with sessions held",
			"preflight_failed naming the file and the reason; nothing loaded; every session intact (sizes)")
		before := sessionSizes(t)
		tmp := t.TempDir()
		kernel := filepath.Join(e.share, "boot2", "vmlinuz")
		initrd, err := os.ReadFile(filepath.Join(e.share, "initrd.img"))
		if err != nil {
			t.Fatal(err)
		}
		write := func(name string, b []byte, size int64) string {
			p := filepath.Join(tmp, name)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if size > 0 {
				if err := os.Truncate(p, size); err != nil { // sparse
					t.Fatal(err)
				}
			}
			return p
		}
		kb, err := os.ReadFile(kernel)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ kernel, initrd, named, why string }{
			{kernel, write("initrd-truncated.img", initrd[:len(initrd)/2], 0), "initrd-truncated.img", "truncated"},
			// The whole initrd, then a zstd frame (Debian's default
			// compression) cut short: its block says 1000 bytes, 10 follow.
			{kernel, write("initrd-zstd-cut.img", append(append([]byte{}, initrd...),
				0x28, 0xb5, 0x2f, 0xfd, 0x20, 0, 0x45, 0x1f, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9), 0),
				"initrd-zstd-cut.img", "the zstd frame ends early"},
			{write("vmlinuz-huge", kb, kexec.MaxKernelSize+1), "", "vmlinuz-huge", "over luod's limit"},
			{kernel, write("initrd-huge.img", initrd[:4096], kexec.MaxInitrdSize+1), "initrd-huge.img", "over luod's limit"},
		} {
			k, err := os.Open(tc.kernel)
			if err != nil {
				t.Fatal(err)
			}
			var i *os.File
			if tc.initrd != "" {
				if i, err = os.Open(tc.initrd); err != nil {
					t.Fatal(err)
				}
			}
			_, err = admin.Load(tctx(t, time.Minute), k, i, nil, proto.LoadArgs{ReuseCmdline: true})
			k.Close()
			if i != nil {
				i.Close()
			}
			if !isCode(err, proto.CodePreflightFailed) || !strings.Contains(err.Error(), tc.named) || !strings.Contains(err.Error(), tc.why) {
				t.Errorf("load of %s = %v, want preflight_failed naming it: %s", tc.named, err, tc.why)
				continue
			}
			t.Logf("refused: %v", err)
		}
		s, err := admin.Status(tctx(t, 10*time.Second))
		if err != nil || s.Loaded != nil {
			t.Errorf("status after refused loads: %+v, %v; want nothing loaded", s, err)
		}
		sameSizes(t, "by refused loads", before, sessionSizes(t))
	})

	step("load_1000_clients", func(t *testing.T) {
		pid := luodPID(t)
		st.Load.Clients = loadClients
		st.Load.FDsBefore = fdCount(t, pid)
		t0 := time.Now()
		// The clients stay: they answer the barriers of the dry run, the
		// failed reboot and the real kexec below.
		_, out := startChild(t, "TestFaultChild", "load")
		line, _ := out.ReadString('\n')
		if strings.TrimSpace(line) != "ready" {
			t.Fatalf("the load clients said %q", line)
		}
		st.Load.SetupMS = time.Since(t0).Milliseconds()
		st.Load.FDsAt = fdCount(t, pid)
		st.Load.RSSKiB = procKiB(t, pid, "VmRSS")
		st.Load.HWMKiB = procKiB(t, pid, "VmHWM")
		t.Logf("%d clients served in %d ms; luod: %d fds (%d before), VmRSS %d KiB, VmHWM %d KiB",
			loadClients, st.Load.SetupMS, st.Load.FDsAt, st.Load.FDsBefore, st.Load.RSSKiB, st.Load.HWMKiB)
		// faults-keep and quit-vmm, and one session of one file each.
		wantMetric(t, fmt.Sprintf(`luod_sessions{state="open"} %d`, loadClients+2))
		// More than one answer's worth: the admin listing comes in pages.
		if all, err := dial(t, sock).Sessions(tctx(t, time.Minute)); err != nil || len(all) != loadClients+2 {
			t.Errorf("admin sessions with %d clients: %d listed, %v; want %d", loadClients, len(all), err, loadClients+2)
		}
		wantMetric(t, fmt.Sprintf(`luod_session_files{state="open"} %d`, loadClients+2))
		wantMetric(t, fmt.Sprintf("luod_preserved_bytes %d", loadClients*loadFileSize+(4<<20)+(16<<20)))
		if max := st.Load.FDsBefore + loadFDsPerClient*loadClients + loadFDSlack; st.Load.FDsAt > max {
			t.Errorf("luod holds %d fds with %d clients, want at most %d", st.Load.FDsAt, loadClients, max)
		}
		if st.Load.HWMKiB > loadMaxHWMKiB {
			t.Errorf("luod's VmHWM %d KiB, want at most %d", st.Load.HWMKiB, loadMaxHWMKiB)
		}
		wantMetric(t, fmt.Sprintf("luod_clients_subscribed %d", loadClients))
	})

	// The harness's initrd and this command line pointing at stage 2:
	// what the real kexec boots.
	step("wide_session", func(t *testing.T) {
		files := make([]client.FileToPreserve, wideFiles)
		for j := range files {
			f := memfdOf(t, wideData(j))
			defer f.Close()
			files[j] = client.FileToPreserve{File: f, Token: uint64(j + 1), Label: "ram"}
		}
		s, got, err := admin.CreateSessionWithFiles(tctx(t, time.Minute), "faults-wide", nil, files)
		if err != nil {
			t.Fatalf("create faults-wide with %d files: %v", wideFiles, err)
		}
		s.Close()
		if len(got) != wideFiles {
			t.Fatalf("faults-wide: %d files preserved, want %d", len(got), wideFiles)
		}
		// Its neighbours in boot 2's reclaim_sessions.
		for i, name := range wideNeighbours {
			st.Digests[name] = preserveNew(t, admin, name, 64<<10, byte(40+i))
		}
	})

	step("load_next_kernel", func(t *testing.T) {
		cmdline := stageRe.ReplaceAllString(readTrim(t, "/proc/cmdline"), "luod.stage=2")
		loadNextKernel(t, admin, e.share, filepath.Join(e.share, "initrd.img"), proto.LoadArgs{Cmdline: cmdline})
	})

	step("state_dir_full_then_read_only", func(t *testing.T) {
		dir := os.Getenv("LUOD_STATE_DIR")
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16k"); err != nil {
			t.Fatalf("mount a tiny tmpfs on %s: %v", dir, err)
		}
		fill, err := os.Create(filepath.Join(dir, "filler"))
		if err != nil {
			t.Fatal(err)
		}
		for err == nil {
			_, err = fill.Write(make([]byte, 4096))
		}
		fill.Close()
		if !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("filling %s: %v, want ENOSPC", dir, err)
		}
		from := len(luodLog(t))
		st.Digests["faults-full"] = preserveNew(t, admin, "faults-full", faultFiles["faults-full"].size, faultFiles["faults-full"].seed)
		t.Logf("full: %s", waitLog(t, from, `level=WARN msg="cannot write the manifest copy".*no space left on device`))

		if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount %s read-only: %v", dir, err)
		}
		from = len(luodLog(t))
		st.Digests["faults-ro"] = preserveNew(t, admin, "faults-ro", faultFiles["faults-ro"].size, faultFiles["faults-ro"].seed)
		t.Logf("read-only: %s", waitLog(t, from, `level=WARN msg="cannot write the manifest copy".*read-only file system`))

		// The manifest phase, with 1000 clients at the barrier: the copy
		// cannot be written, the in-memory manifest is.
		from = len(luodLog(t))
		if _, err := admin.Upgrade(tctx(t, 3*time.Minute), proto.UpgradeArgs{DryRun: true, TimeoutMS: 120000}, nil); err != nil {
			t.Fatalf("dry run with a read-only state directory: %v", err)
		}
		waitLog(t, from, `cannot write the manifest copy; the in-memory manifest still crosses the kexec`)
		waitLog(t, from, `dry run finished.*sessions=100[0-9]`)
	})

	step("reboot_fails_fault_switch", func(t *testing.T) {
		reliability(t, "reboot(2) fails (test fault switch --test.fault-reboot)",
			fmt.Sprintf("VM: luoctl upgrade with %d subscribed clients; the switch fails the first reboot call with EIO", loadClients),
			"kexec_failed naming every session intact; sessions unchanged (sizes), upgrade phase cleared, kernel still loaded; the next upgrade is this run's real kexec, whose sessions boot 2 reclaims byte-exact")
		before := sessionSizes(t)
		from := len(luodLog(t))
		_, err := admin.Upgrade(tctx(t, 3*time.Minute), proto.UpgradeArgs{TimeoutMS: 120000}, nil)
		if !isCode(err, proto.CodeKexecFailed) || !strings.Contains(err.Error(), "every session is intact") {
			t.Fatalf("upgrade with the failing reboot = %v, want kexec_failed: every session is intact", err)
		}
		t.Logf("refused: %v", err)
		waitLog(t, from, `reboot failed; back to normal with every session intact`)
		s, err := admin.Status(tctx(t, 10*time.Second))
		if err != nil || s.UpgradePhase != "" || s.Loaded == nil {
			t.Fatalf("status after the failed reboot: %+v, %v", s, err)
		}
		sameSizes(t, "by the failed reboot", before, sessionSizes(t))
		wantMetric(t, `luod_upgrades_total{result="failed"} 1`)
	})

	// The real kexec, as the same luod's next upgrade.
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(statePath(e.share), b, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("LUOD-VM: fault boot 1: upgrading into boot2: %s\n", sessionSizes(t))
	os.Stdout.Sync()
	unix.Sync()
	_, err := admin.Upgrade(context.Background(), proto.UpgradeArgs{TimeoutMS: 120000}, nil)
	if !errors.Is(err, client.ErrRebooting) {
		t.Fatalf("the real upgrade = %v, want the kexec", err)
	}
	time.Sleep(time.Minute)
	t.Fatal("still running a minute after luod committed the kexec")
}

func faultsAfterKexec(t *testing.T, e env) {
	var st faultState
	b, err := os.ReadFile(statePath(e.share))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	admin := dial(t, proto.DefaultSocket)
	s, err := admin.Status(tctx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status: liveupdate #%d %s, %d incoming, lost %v", s.LiveUpdateNumber, s.Continuity, s.Sessions.Incoming, s.LostSessions)
	if s.Continuity != proto.ContinuityOK || s.LiveUpdateNumber != 1 || len(s.LostSessions) != 0 ||
		s.Sessions.Incoming != loadClients+len(faultFiles)+1+len(wideNeighbours) {
		t.Fatalf("status after the kexec: %+v; want continuity ok, #1, %d incoming, none lost", s, loadClients+len(faultFiles)+1+len(wideNeighbours))
	}
	byteExact := func(t *testing.T, name string) {
		t.Helper()
		f := faultFiles[name]
		if got := reclaimDigest(t, admin, name, f.size); got != st.Digests[name] {
			t.Errorf("%s: sha256 %s after the kexec, %s before", name, got, st.Digests[name])
		}
	}

	t.Run("pause_note_carried", func(t *testing.T) {
		reliability(t, "luod's share of the pause carried across the kexec",
			"VM: the page luod writes its reboot line's figures into before reboot(2), preserved in its reserved session after the manifest",
			"the new luod logs them at recovery: the update, the sessions in the manifest, since_ready and its parts, the manifest kept from before the barrier")
		m := regexp.MustCompile(`msg="the last update's pause, as the previous luod measured it" pause="([^"]*)"`).FindStringSubmatch(luodLog(t))
		if m == nil {
			t.Fatalf("the new luod logged no note of the last pause:\n%s", luodLog(t))
		}
		note := map[string]string{}
		for _, kv := range strings.Fields(m[1]) {
			k, v, _ := strings.Cut(kv, "=")
			note[k] = v
		}
		since, err := time.ParseDuration(note["since_ready"])
		for _, k := range []string{"upgrade", "manifest_prewritten", "manifest", "sync", "woke", "events"} {
			if note[k] == "" {
				err = fmt.Errorf("no %s", k)
			}
		}
		if n, _ := strconv.Atoi(note["sessions"]); err != nil || since <= 0 || n == 0 || note["release"] != release(t) {
			t.Fatalf("pause note %q: since_ready %v (%v), %s sessions, for release %s (running %s)", m[1], since, err, note["sessions"], note["release"], release(t))
		}
		t.Logf("the pause that brought this kernel, as luod noted it: %s", m[1])
	})

	t.Run("load_1000_clients", func(t *testing.T) {
		reliability(t, fmt.Sprintf("%d concurrent clients, each a session and a %d KiB memfd", loadClients, loadFileSize>>10),
			fmt.Sprintf("VM: %d connections at once (RLIMIT_NOFILE raised), each creates, preserves, subscribes and answers the barriers of a dry run, a failed reboot and the kexec", loadClients),
			fmt.Sprintf("all served in %d ms; luod at %d clients: %d fds (%d before, bound +%d per client), VmHWM %d MiB (bound %d MiB); after the kexec all %d reclaimed byte-exact by %d concurrent clients",
				st.Load.SetupMS, loadClients, st.Load.FDsAt, st.Load.FDsBefore, loadFDsPerClient, st.Load.HWMKiB>>10, loadMaxHWMKiB>>10, loadClients, loadClients))
		var wg sync.WaitGroup
		var bad atomic.Int32
		var first sync.Once
		t0 := time.Now()
		for i := range loadClients {
			wg.Go(func() {
				if err := reclaimLoad(i); err != nil {
					bad.Add(1)
					first.Do(func() { t.Errorf("load-%04d: %v", i, err) })
				}
			})
		}
		wg.Wait()
		t.Logf("%d sessions reclaimed by %d concurrent clients in %v, %d failed", loadClients, loadClients, time.Since(t0), bad.Load())
		if bad.Load() != 0 {
			t.Errorf("%d of %d load sessions not reclaimed byte-exact", bad.Load(), loadClients)
		}
	})

	t.Run("wide_session_file_by_file", func(t *testing.T) {
		reliability(t, fmt.Sprintf("a session of %d memfds, more than one answer carries (%d fds)", wideFiles, proto.MaxFDs),
			"VM: preserved through luod before the kexec; after it, client.ReclaimSessions of it between two other sessions",
			"luod refuses its reclaim untouched; pkg/client takes it through its own session fd (retrieve_session, RETRIEVE_FD on the real kernel, finish_session): every file byte-exact, of the size luod lists (frozen since PRESERVE_FD), each fd close-on-exec as the kernel installs it; luod lists it finished; the sessions around it reclaimed in the same call")
		names := []string{wideNeighbours[0], "faults-wide", wideNeighbours[1]}
		got, err := admin.ReclaimSessions(tctx(t, 2*time.Minute), names, true)
		if err != nil {
			t.Fatalf("reclaim_sessions %v: %v", names, err)
		}
		for i, name := range wideNeighbours {
			rf := got[2*i]
			if len(rf) != 1 {
				t.Fatalf("%s: %d files", name, len(rf))
			}
			b, err := io.ReadAll(io.NewSectionReader(rf[0].File, 0, 1<<30))
			rf[0].File.Close()
			if err != nil || digest(b) != st.Digests[name] {
				t.Errorf("%s: %d bytes, %v; not the bytes preserved", name, len(b), err)
			}
		}
		wide := got[1]
		if len(wide) != wideFiles {
			t.Fatalf("faults-wide: %d files back, want %d", len(wide), wideFiles)
		}
		for j, f := range wide {
			want := wideData(j)
			var fst unix.Stat_t
			serr := unix.Fstat(int(f.File.Fd()), &fst)
			flags, ferr := unix.FcntlInt(f.File.Fd(), unix.F_GETFD, 0)
			b, err := io.ReadAll(io.NewSectionReader(f.File, 0, 1<<20))
			f.File.Close()
			switch {
			case err != nil || serr != nil || ferr != nil:
				t.Fatalf("faults-wide token %d: read %v, fstat %v, F_GETFD %v", f.Token, err, serr, ferr)
			case f.Token != uint64(j+1) || !bytes.Equal(b, want):
				t.Fatalf("faults-wide file %d: token %d, %d bytes; not the %d preserved", j, f.Token, len(b), len(want))
			case f.Size != int64(len(want)) || fst.Size != f.Size:
				t.Fatalf("faults-wide token %d: luod lists %d bytes, the file has %d, %d were preserved", f.Token, f.Size, fst.Size, len(want))
			case flags&unix.FD_CLOEXEC == 0:
				t.Fatalf("faults-wide token %d: RETRIEVE_FD's fd is not close-on-exec (flags %#x)", f.Token, flags)
			}
		}
		ss, err := admin.Sessions(tctx(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss {
			if s.Name == "faults-wide" && s.State != proto.StateFinished {
				t.Errorf("faults-wide is %s after the reclaim, want finished", s.State)
			}
		}
	})

	t.Run("client_quits_after_preserve", func(t *testing.T) {
		reliability(t, "a client exits after preserving (a VMM that checkpoints and quits)",
			"VM: a process creates a session, preserves 16 MiB and exits before the kexec; after it, a new process of the workload reclaims",
			"16 MiB byte-exact (sha256) after the kexec, reclaimed and finished by the restarted client")
		cmd, out := startChild(t, "TestFaultChild", "restore")
		line, _ := out.ReadString('\n')
		if err := cmd.Wait(); err != nil {
			t.Fatalf("the restarted client: %v (said %q)", err, line)
		}
		if got := strings.TrimSpace(line); got != "reclaimed "+st.Digests["quit-vmm"] {
			t.Fatalf("the restarted client said %q, want reclaimed %s", got, st.Digests["quit-vmm"])
		}
	})

	t.Run("state_dir_full_then_read_only", func(t *testing.T) {
		reliability(t, "state directory full (16 KiB tmpfs), then read-only",
			"VM: sessions preserved while the manifest copy cannot be written (ENOSPC, then EROFS); a dry run and the kexec with the directory read-only",
			"a warning for each failed write (ENOSPC, EROFS, the manifest phase); after the kexec continuity ok and both sessions byte-exact: the in-memory manifest crossed")
		byteExact(t, "faults-full")
		byteExact(t, "faults-ro")
	})

	t.Run("sessions_through_every_fault", func(t *testing.T) {
		reliability(t, "a session through every fault of boot 1",
			"VM: 4 MiB preserved before the kill, refused loads, 1000 clients, full and read-only state directory, failed reboot",
			"4 MiB byte-exact (sha256) after the kexec")
		byteExact(t, "faults-keep")
	})

	t.Run("cold_boot_prepare", func(t *testing.T) {
		preserveNew(t, admin, "cold-a", 64<<10, 40)
		preserveNew(t, admin, "cold-b", 64<<10, 41)
		waitDiskCopy(t, "cold-a", "cold-b")
		unix.Sync()
		fmt.Println("LUOD-VM: fault boot 2: cold-a and cold-b open; powering off (no kexec)")
	})
}

// reclaimLoad is one of the load clients after the kexec: its own
// connection, reclaim and finish, the data checked.
func reclaimLoad(i int) error {
	c, err := client.Dial(proto.DefaultSocket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	got, err := reclaimData(ctx, c, fmt.Sprintf("load-%04d", i), loadFileSize)
	if err != nil {
		return err
	}
	want := make([]byte, loadFileSize)
	loadPattern(want, i)
	if string(got) != string(want) {
		return errors.New("data differs")
	}
	return nil
}

// loadPattern is load client i's data: distinct per client.
func loadPattern(b []byte, i int) { pattern(b, byte(i), 100+i>>8) }

func faultsColdBoot(t *testing.T, e env) {
	reliability(t, "cold boot where a kexec was expected",
		"VM: powered off with 2 sessions open, a second QEMU run on the same share (the same state directory)",
		"continuity cold_boot; both sessions named lost in luoctl status, the log (session LOST) and metrics (luod_sessions_lost 2, luod_session_lost_info per name)")
	s, err := dial(t, proto.DefaultSocket).Status(tctx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status: liveupdate #%d %s, lost %v", s.LiveUpdateNumber, s.Continuity, s.LostSessions)
	if s.Continuity != proto.ContinuityColdBoot || strings.Join(s.LostSessions, ",") != "cold-a,cold-b" {
		t.Errorf("status of the cold boot: continuity %s, lost %v; want cold_boot, cold-a,cold-b", s.Continuity, s.LostSessions)
	}
	for _, n := range []string{"cold-a", "cold-b"} {
		waitLog(t, 0, `session LOST.*session=`+n)
		wantMetric(t, fmt.Sprintf(`luod_session_lost_info{session=%q,uid="0"} 1`, n))
	}
	wantMetric(t, "luod_sessions_lost 2")
	wantMetric(t, `luod_boot_continuity{continuity="cold_boot"} 1`)
}

// TestFaultChild is a workload process of the fault cases, by
// LUOD_VMTEST_CHILD: "checkpoint" preserves quit-vmm and exits,
// "restore" reclaims it after the kexec, "load" is the load clients.
func TestFaultChild(t *testing.T) {
	mode := os.Getenv("LUOD_VMTEST_CHILD")
	switch mode {
	case "checkpoint":
		c := dial(t, proto.DefaultSocket)
		f := faultFiles["quit-vmm"]
		d := preserveNew(t, c, "quit-vmm", f.size, f.seed)
		fmt.Println("preserved " + d)
	case "restore":
		c := dial(t, proto.DefaultSocket)
		fmt.Println("reclaimed " + reclaimDigest(t, c, "quit-vmm", faultFiles["quit-vmm"].size))
	case "load":
		loadClientsServe(t)
	default:
		t.Skip("run by TestFaults as a workload process")
	}
}

// loadClientsServe connects loadClients clients at once, each with a
// session and a preserved memfd, subscribed; says "ready" and then
// answers every barrier until the kexec ends it.
func loadClientsServe(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan error, loadClients)
	clients := make([]*client.Client, loadClients)
	for i := range loadClients {
		wg.Go(func() {
			err := func() error {
				c, err := client.Dial(proto.DefaultSocket)
				if err != nil {
					return err
				}
				clients[i] = c
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				name := fmt.Sprintf("load-%04d", i)
				s, err := c.CreateSession(ctx, name, nil)
				if err != nil {
					return err
				}
				s.Close()
				b := make([]byte, loadFileSize)
				loadPattern(b, i)
				fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
				if err != nil {
					return err
				}
				f := os.NewFile(uintptr(fd), name)
				defer f.Close()
				if _, err := f.Write(b); err != nil {
					return err
				}
				if _, err := c.Preserve(ctx, name, []client.FileToPreserve{{File: f, Token: 1}}); err != nil {
					return err
				}
				return c.Subscribe(ctx)
			}()
			if err != nil {
				errs <- fmt.Errorf("load client %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, c := range clients {
		go func() {
			for ev := range c.Events() {
				if ev.Event == proto.EventPrepare {
					var p proto.PrepareEvent
					json.Unmarshal(ev.Data, &p)
					c.Ready(context.Background(), p.Upgrade)
				}
			}
		}()
	}
	fmt.Println("ready")
	select {} // until the kexec
}
