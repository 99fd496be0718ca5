//go:build linux

package vmtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/klog"
	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/kexec"
	"github.com/luod/luod/pkg/kho"
)

// memfdSpec is one preserved memfd of the scenario.
type memfdSpec struct {
	Session string
	Token   uint64
	Size    int
	Seed    byte
	Seals   int // seals added after writing
}

// The three sessions of the issue: a small memfd, 64 MiB of a pattern, and
// one sealed against writes.
var specs = []memfdSpec{
	{Session: "vmtest-small", Token: 0x1001, Size: 4 << 10, Seed: 1},
	{Session: "vmtest-big", Token: 0x2002, Size: 64 << 20, Seed: 2},
	{Session: "vmtest-sealed", Token: 0x3003, Size: 4 << 10, Seed: 3, Seals: unix.F_SEAL_WRITE},
}

// pattern fills b deterministically from seed and stage, so that data of
// one stage cannot pass for another's.
func pattern(b []byte, seed byte, stage int) {
	x := uint32(seed)<<24 | uint32(stage)<<16 | 0x9e37
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
}

func digest(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// state is what a stage leaves for the next in the share.
type state struct {
	Stage   int               `json:"stage"`
	Release string            `json:"release"`
	OutLUO  uint64            `json:"out_liveupdate_number"`
	OutABI  string            `json:"out_abi"`
	Digests map[string]string `json:"digests"`
}

type env struct {
	stage int
	share string
}

func getEnv(t *testing.T) env {
	if os.Getenv("LUOD_VM") != "1" {
		t.Skip("the cross-kexec scenario runs only inside the VM harness (LUOD_VM=1)")
	}
	st, err := strconv.Atoi(os.Getenv("LUOD_STAGE"))
	if err != nil || st < 1 {
		t.Fatalf("LUOD_STAGE=%q: want a stage number >= 1", os.Getenv("LUOD_STAGE"))
	}
	share := os.Getenv("LUOD_SHARE")
	if share == "" {
		t.Fatal("LUOD_SHARE is not set")
	}
	return env{stage: st, share: share}
}

func release(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

func readTrim(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestStage is one boot of the scenario.
func TestStage(t *testing.T) {
	e := getEnv(t)
	t.Logf("stage %d on kernel %s", e.stage, release(t))

	dev, err := ioctl.Open(ioctl.DevicePath)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer dev.Close()

	if e.stage == 1 {
		t.Run("cold_boot_has_no_handover", func(t *testing.T) { checkColdBoot(t, dev) })
	} else {
		prev := loadState(t, e, e.stage-1)
		t.Run("handover_decoded_and_matches_kernel_log", func(t *testing.T) { checkHandover(t, e, prev) })
		t.Run("sessions_retrieved_byte_exact", func(t *testing.T) { checkRetrieve(t, dev, prev) })
	}
	if t.Failed() {
		return
	}

	next := filepath.Join(e.share, fmt.Sprintf("boot%d", e.stage+1))
	if _, err := os.Stat(filepath.Join(next, "vmlinuz")); err != nil {
		fmt.Printf("LUOD-VM: stage %d is the last stage\n", e.stage)
		return
	}

	var sessions []*ioctl.Session
	t.Run("preserve_sessions", func(t *testing.T) { sessions = preserve(t, e, dev) })
	if t.Failed() {
		return
	}
	t.Run("kexec_load_next_kernel", func(t *testing.T) { loadNext(t, e, next) })
	if t.Failed() {
		return
	}
	fmt.Printf("LUOD-VM: stage %d: kexec into %s with %d sessions\n", e.stage, readTrim(t, filepath.Join(next, "release")), len(sessions))
	os.Stdout.Sync()
	unix.Sync() // the state for the next stage is on the share
	err = kexec.Reboot()
	t.Fatalf("reboot returned: %v", err)
}

func checkColdBoot(t *testing.T, dev *ioctl.Device) {
	_, err := kho.ReadDir(kho.DefaultDir)
	if !errors.Is(err, kho.ErrNoHandover) {
		t.Errorf("ReadDir(%s) on a cold boot = %v, want ErrNoHandover", kho.DefaultDir, err)
	}
	log, err := klog.Read()
	if err != nil {
		t.Fatal(err)
	}
	if h := klog.Parse(log); h.HasLiveUpdate || h.HasExecFrom {
		t.Errorf("kernel log reports a handover on a cold boot: %+v", h)
	}
	for _, s := range specs {
		_, err := dev.RetrieveSession(s.Session)
		if !errors.Is(err, unix.ENOENT) {
			t.Errorf("RetrieveSession(%q) on a cold boot = %v, want ENOENT", s.Session, err)
		}
	}
}

func loadState(t *testing.T, e env, stage int) state {
	var s state
	b, err := os.ReadFile(filepath.Join(e.share, "state", fmt.Sprintf("stage%d.json", stage)))
	if err != nil {
		t.Fatalf("state of stage %d: %v", stage, err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("state of stage %d: %v", stage, err)
	}
	return s
}

func saveState(t *testing.T, e env, s state) {
	dir := filepath.Join(e.share, "state")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("stage%d.json", s.Stage)), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkHandover(t *testing.T, e env, prev state) {
	h, err := kho.ReadDir(kho.DefaultDir)
	if err != nil {
		t.Fatalf("ReadDir(%s): %v", kho.DefaultDir, err)
	}
	// Keep a copy in the share: a saved copy must decode the same way.
	saved := filepath.Join(e.share, "state", fmt.Sprintf("kho-in-stage%d", e.stage))
	if err := kho.Save(kho.DefaultDir, saved); err != nil {
		t.Errorf("Save: %v", err)
	} else if h2, err := kho.ReadDir(saved); err != nil {
		t.Errorf("ReadDir(saved copy): %v", err)
	} else if a, b := mustJSON(t, h), mustJSON(t, h2); a != b {
		t.Errorf("saved copy decodes differently:\n live:  %s\n saved: %s", a, b)
	}
	t.Logf("handover: %s", mustJSON(t, h))

	if h.Root == nil || h.Root.Compatible != "kho-v4" {
		t.Errorf("KHO root = %+v, want compatible kho-v4", h.Root)
	}
	if h.Root != nil {
		for _, name := range []string{"LUO", "kexec-metadata"} {
			found := false
			for _, st := range h.Root.Subtrees {
				if st.Name != name {
					continue
				}
				found = true
				// debugfs blobs stat as size 0: read them to count.
				b, err := os.ReadFile(filepath.Join(kho.DefaultDir, "sub_fdts", name))
				if err != nil {
					t.Errorf("subtree %s: %v", name, err)
				} else if uint64(len(b)) != st.BlobSize {
					t.Errorf("subtree %s: blob-size %d, debugfs file has %d bytes", name, st.BlobSize, len(b))
				}
			}
			if !found {
				t.Errorf("KHO root has no %s subtree", name)
			}
		}
	}

	log, err := klog.Read()
	if err != nil {
		t.Fatal(err)
	}
	kl := klog.Parse(log)
	want := uint64(e.stage - 1)
	if !kl.HasLiveUpdate || kl.LiveUpdateNumber != want {
		t.Errorf("kernel log: liveupdate number %d (found %v), want %d", kl.LiveUpdateNumber, kl.HasLiveUpdate, want)
	}
	// The previous kernel's outgoing blob (saved by the previous stage
	// from live memory) is luo-v5 and named this number in advance.
	if prev.OutABI != "luo-v5" || prev.OutLUO != want {
		t.Errorf("previous kernel's outgoing LUO blob: %s number %d, want luo-v5 number %d", prev.OutABI, prev.OutLUO, want)
	}
	// The incoming blob in debugfs points at memory the kernel has already
	// freed: luo_early_startup() reads struct luo_ser and then calls
	// kho_restore_free() on it, but kho_in_debugfs_init() keeps exposing
	// the address. It decodes only while that page happens not to have
	// been reused. A blob that decodes must agree; one that does not must
	// be reported as of no known ABI, naming what was found.
	switch {
	case h.LUOErr != nil && errors.Is(h.LUOErr, kho.ErrUnknownABI):
		t.Logf("incoming LUO blob no longer holds struct luo_ser (page freed by the kernel after boot); decoder says: %v", h.LUOErr)
	case h.LUOErr != nil:
		t.Errorf("incoming LUO blob: %v", h.LUOErr)
	case h.LUO == nil:
		t.Errorf("no LUO subtree came over")
	case h.LUO.ABI != "luo-v5" || h.LUO.LiveUpdateNumber != want:
		t.Errorf("incoming LUO blob: %s number %d, want luo-v5 number %d", h.LUO.ABI, h.LUO.LiveUpdateNumber, want)
	default:
		t.Logf("incoming LUO blob still intact: luo-v5, liveupdate number %d", h.LUO.LiveUpdateNumber)
	}
	if kl.LiveUpdateNumber == prev.OutLUO {
		t.Logf("liveupdate number %d: kernel log and the previous kernel's outgoing blob agree", kl.LiveUpdateNumber)
	}

	if h.KexecMetadataErr != nil {
		t.Errorf("kexec-metadata: %v", h.KexecMetadataErr)
	} else if h.KexecMetadata == nil {
		t.Errorf("no kexec-metadata came over")
	} else {
		m := h.KexecMetadata
		if m.PreviousRelease != prev.Release || !kl.HasExecFrom || kl.PreviousRelease != m.PreviousRelease {
			t.Errorf("previous release: decoded %q, kernel log %q, previous stage ran %q: must agree",
				m.PreviousRelease, kl.PreviousRelease, prev.Release)
		}
		if uint64(m.KexecCount) != want || kl.KexecCount != m.KexecCount {
			t.Errorf("kexec count: decoded %d, kernel log %d, want %d", m.KexecCount, kl.KexecCount, want)
		}
		t.Logf("previous release %s, kexec count %d: decoded blob and kernel log agree", m.PreviousRelease, m.KexecCount)
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func checkRetrieve(t *testing.T, dev *ioctl.Device, prev state) {
	buf := make([]byte, 64<<20)
	for _, s := range specs {
		sess, err := dev.RetrieveSession(s.Session)
		if err != nil {
			t.Errorf("RetrieveSession(%q): %v", s.Session, err)
			continue
		}
		if name, err := sess.GetName(); err != nil || name != s.Session {
			t.Errorf("GetName = %q, %v; want %q", name, err, s.Session)
		}
		if _, err := dev.RetrieveSession(s.Session); !errors.Is(err, unix.EINVAL) {
			t.Errorf("second RetrieveSession(%q) = %v, want EINVAL", s.Session, err)
		}
		f, err := sess.RetrieveFD(s.Token)
		if err != nil {
			t.Errorf("RetrieveFD(%q, %#x): %v", s.Session, s.Token, err)
			sess.Close()
			continue
		}
		fi, err := f.Stat()
		if err != nil || fi.Size() != int64(s.Size) {
			t.Errorf("%s: size %v (%v), want %d", s.Session, fi.Size(), err, s.Size)
		}
		n, err := f.ReadAt(buf[:s.Size], 0)
		if err != nil || n != s.Size {
			t.Errorf("%s: read %d bytes: %v", s.Session, n, err)
		} else if got, want := digest(buf[:s.Size]), prev.Digests[s.Session]; got != want {
			t.Errorf("%s: contents sha256 %s, preserved %s", s.Session, got, want)
		} else {
			t.Logf("%s: %d bytes byte-exact (sha256 %s…)", s.Session, s.Size, got[:16])
		}
		seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
		if err != nil {
			t.Errorf("%s: F_GET_SEALS: %v", s.Session, err)
		} else if seals&s.Seals != s.Seals {
			t.Errorf("%s: seals %#x, want %#x set", s.Session, seals, s.Seals)
		}
		if s.Seals&unix.F_SEAL_WRITE != 0 {
			if _, err := f.WriteAt([]byte{0}, 0); !errors.Is(err, unix.EPERM) {
				t.Errorf("%s: write to a F_SEAL_WRITE memfd = %v, want EPERM", s.Session, err)
			}
		}
		if err := sess.Finish(); err != nil {
			t.Errorf("Finish(%q): %v", s.Session, err)
		}
		f.Close()
		sess.Close()
	}
}

func preserve(t *testing.T, e env, dev *ioctl.Device) []*ioctl.Session {
	st := state{Stage: e.stage, Release: release(t), Digests: map[string]string{}}
	var out []*ioctl.Session
	for _, s := range specs {
		sess, err := dev.CreateSession(s.Session)
		if err != nil {
			t.Fatalf("CreateSession(%q): %v", s.Session, err)
		}
		out = append(out, sess)
		flags := unix.MFD_CLOEXEC
		if s.Seals != 0 {
			flags |= unix.MFD_ALLOW_SEALING
		}
		fd, err := unix.MemfdCreate(s.Session, flags)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), s.Session)
		data := make([]byte, s.Size)
		pattern(data, s.Seed, e.stage)
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if s.Seals != 0 {
			if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, s.Seals); err != nil {
				t.Fatalf("F_ADD_SEALS: %v", err)
			}
		}
		if err := sess.PreserveFD(fd, s.Token); err != nil {
			t.Fatalf("PreserveFD: %v", err)
		}
		st.Digests[s.Session] = digest(data)
		// The session holds the memfd now; our fd may go.
		f.Close()
	}
	// The outgoing LUO blob already carries the number the next kernel
	// will report.
	out2, err := os.ReadFile("/sys/kernel/debug/kho/out/sub_fdts/LUO")
	if err != nil {
		t.Fatalf("outgoing LUO blob: %v", err)
	}
	l, err := kho.DecodeLUO(out2)
	if err != nil {
		t.Fatalf("outgoing LUO blob: %v", err)
	}
	st.OutLUO, st.OutABI = l.LiveUpdateNumber, l.ABI
	if st.OutLUO != uint64(e.stage) {
		t.Errorf("outgoing liveupdate number %d, want %d", st.OutLUO, e.stage)
	}
	saveState(t, e, st)
	return out
}

var stageRe = regexp.MustCompile(`luod\.stage=\d+`)

func loadNext(t *testing.T, e env, next string) {
	cmdline := readTrim(t, "/proc/cmdline")
	if !stageRe.MatchString(cmdline) {
		t.Fatalf("/proc/cmdline has no luod.stage=: %q", cmdline)
	}
	cmdline = stageRe.ReplaceAllString(cmdline, fmt.Sprintf("luod.stage=%d", e.stage+1))
	if err := kexec.Load(filepath.Join(next, "vmlinuz"), filepath.Join(e.share, "initrd.img"), cmdline); err != nil {
		t.Fatalf("kexec load: %v", err)
	}
	if ok, err := kexec.Loaded(); err != nil || !ok {
		t.Fatalf("kexec_loaded = %v, %v after a successful load", ok, err)
	}
}
