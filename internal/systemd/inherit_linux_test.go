//go:build linux

package systemd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// inheritReport is what the child process saw, for the parent to check.
type inheritReport struct {
	Listeners []string          // names
	Seqpacket []bool            // each listener is a listening SOCK_SEQPACKET socket
	Sessions  map[string]string // session name -> content
	Manifest  *string
	Other     []string
	Cloexec   bool   // every fd close-on-exec
	Env       string // LISTEN_* left in the environment
	Err       string
}

const helperEnv = "LUOD_SYSTEMD_TEST_HELPER"

// TestInheritedHelper is the child: started by runInherited with fds at 3…
// and LISTEN_* in its environment, it calls TakeInherited and reports on
// stdout.
func TestInheritedHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "inherit" {
		t.Skip("helper process of TestTakeInherited")
	}
	in, err := TakeInherited()
	r := inheritReport{Sessions: map[string]string{}, Cloexec: true}
	if err != nil {
		r.Err = err.Error()
	}
	for _, f := range in.Listeners {
		r.Listeners = append(r.Listeners, f.Name())
		typ, _ := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
		acc, _ := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		r.Seqpacket = append(r.Seqpacket, typ == unix.SOCK_SEQPACKET && acc == 1)
	}
	for name, f := range in.Sessions {
		b := make([]byte, 256)
		n, err := f.ReadAt(b, 0)
		if n == 0 && err != nil {
			r.Sessions[name] = "error: " + err.Error()
			continue
		}
		r.Sessions[name] = string(b[:n])
	}
	if in.Manifest != nil {
		s := readAt0(t, in.Manifest)
		r.Manifest = &s
	}
	for _, f := range in.Other {
		r.Other = append(r.Other, f.Name())
	}
	for _, f := range inheritedFiles(in) {
		if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
			r.Cloexec = false
		}
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LISTEN_") {
			r.Env += kv + " "
		}
	}
	b, _ := json.Marshal(r)
	fmt.Printf("\nREPORT %s\n", b)
}

// runInherited starts the test binary as TestInheritedHelper with files at
// fds 3, 4, … (ExtraFiles), LISTEN_FDS and LISTEN_FDNAMES, through
// `sh -c 'LISTEN_PID=$$ exec …'`: the shell's pid is the one the exec'd
// binary keeps, so LISTEN_PID names the child exactly as systemd sets it.
// fds 3… of the test process itself may be in use, hence the child.
func runInherited(t *testing.T, listenPID string, files []*os.File, names []string, nfds int) inheritReport {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to start the child with LISTEN_PID of its own")
	}
	if listenPID == "" {
		listenPID = "$$"
	}
	cmd := exec.Command(sh, "-c", `LISTEN_PID=`+listenPID+` exec "$0" -test.run='^TestInheritedHelper$' -test.count=1`, os.Args[0])
	cmd.Env = append(os.Environ(),
		helperEnv+"=inherit",
		fmt.Sprintf("LISTEN_FDS=%d", nfds),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
	)
	cmd.ExtraFiles = files
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s\n%s", err, out, stderr.Bytes())
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if j, ok := strings.CutPrefix(sc.Text(), "REPORT "); ok {
			var r inheritReport
			if err := json.Unmarshal([]byte(j), &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
	t.Fatalf("child sent no report:\n%s\n%s", out, stderr.Bytes())
	return inheritReport{}
}

func seqpacketListener(t *testing.T) *os.File {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: filepath.Join(dir, "liveupdate.sock"), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestTakeInherited(t *testing.T) {
	files := []*os.File{
		seqpacketListener(t),
		memfd(t, "vm-1 guest RAM"),
		memfd(t, "vm:2 guest RAM"),
		memfd(t, "luod's manifest session"),
		memfd(t, `{"format":"luod-manifest-v1"}`),
		memfd(t, "left by another luod"),
		memfd(t, "second fd of vm-1"),
		memfd(t, "unnamed"),
	}
	names := []string{
		ListenerName,
		FDName(KindSession, "vm-1"),
		FDName(KindSession, "vm:2"),
		FDName(KindSession, "luod"),
		FDName(KindManifest, ""),
		"cache-v0",
		FDName(KindSession, "vm-1"),
		"", // systemd's LISTEN_FDNAMES has an entry for every fd; go-systemd names an empty one LISTEN_FD_<n>
	}
	r := runInherited(t, "", files, names, len(files))
	if r.Err != "" {
		t.Errorf("TakeInherited error: %s", r.Err)
	}
	if !slices.Equal(r.Listeners, []string{ListenerName}) || !slices.Equal(r.Seqpacket, []bool{true}) {
		t.Errorf("listeners %v (seqpacket %v), want [%s] listening", r.Listeners, r.Seqpacket, ListenerName)
	}
	wantSessions := map[string]string{"vm-1": "vm-1 guest RAM", "vm:2": "vm:2 guest RAM", "luod": "luod's manifest session"}
	if len(r.Sessions) != len(wantSessions) {
		t.Errorf("sessions %v, want %v", r.Sessions, wantSessions)
	}
	for name, want := range wantSessions {
		if got := r.Sessions[name]; got != want {
			t.Errorf("session %q reads %q, want %q", name, got, want)
		}
	}
	if r.Manifest == nil || *r.Manifest != `{"format":"luod-manifest-v1"}` {
		t.Errorf("manifest %v", r.Manifest)
	}
	if want := []string{"cache-v0", "session-vm-1", "LISTEN_FD_10"}; !slices.Equal(r.Other, want) {
		t.Errorf("other %v, want %v", r.Other, want)
	}
	if !r.Cloexec {
		t.Error("inherited fds are not close-on-exec")
	}
	if r.Env != "" {
		t.Errorf("LISTEN_* still set after TakeInherited: %s", r.Env)
	}
}

// Variables meant for another process (LISTEN_PID is not ours) are
// ignored, as sd_listen_fds does, and unset all the same.
func TestTakeInheritedOtherPID(t *testing.T) {
	r := runInherited(t, "1", []*os.File{memfd(t, "x")}, []string{FDName(KindManifest, "")}, 1)
	if len(r.Listeners)+len(r.Sessions)+len(r.Other) != 0 || r.Manifest != nil || r.Err != "" {
		t.Errorf("took %+v for LISTEN_PID=1", r)
	}
	if r.Env != "" {
		t.Errorf("LISTEN_* still set: %s", r.Env)
	}
}

// LISTEN_FDS counting more fds than are open: the open ones are taken,
// the missing ones are reported. (The child's Go runtime may already have
// reused the first gaps, as it would under a manager that lied; systemd
// never does.)
func TestTakeInheritedMissingFD(t *testing.T) {
	names := []string{"manifest"}
	for i := range 11 {
		names = append(names, fmt.Sprintf("session-gone%d", i))
	}
	r := runInherited(t, "", []*os.File{memfd(t, "m")}, names, len(names))
	if r.Manifest == nil || *r.Manifest != "m" {
		t.Errorf("manifest %v, want taken", r.Manifest)
	}
	if !strings.Contains(r.Err, "systemd: LISTEN_FDS session-gone10: ") {
		t.Errorf("error %q; want the missing fds reported", r.Err)
	}
}

func TestTakeInheritedNothing(t *testing.T) {
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	in, err := TakeInherited()
	if err != nil || len(inheritedFiles(in)) != 0 {
		t.Errorf("TakeInherited without systemd = %+v, %v", in, err)
	}
}

// inheritedFiles returns every file of in, listeners first, sessions
// sorted by name, the manifest, then the others.
func inheritedFiles(in Inherited) []*os.File {
	fs := append([]*os.File(nil), in.Listeners...)
	for _, name := range slices.Sorted(maps.Keys(in.Sessions)) {
		fs = append(fs, in.Sessions[name])
	}
	if in.Manifest != nil {
		fs = append(fs, in.Manifest)
	}
	return append(fs, in.Other...)
}
