//go:build linux

package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"

	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/proto"
)

// The daemon's cases run inside the VM against the live luod of the demo's
// first boot (deploy/qemu/demo-stage.sh), on the real LUO kernel, before the
// demo's own upgrade. Each leaves luod as it found it.

func daemonEnv(t *testing.T) (sock, share string) {
	t.Helper()
	if os.Getenv("LUOD_VM") != "1" {
		t.Skip("the daemon's VM cases run only inside the VM harness (LUOD_VM=1)")
	}
	return proto.DefaultSocket, os.Getenv("LUOD_SHARE")
}

func tctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func dial(t *testing.T, sock string) *client.Client {
	t.Helper()
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatalf("dial luod: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func memfdOf(t *testing.T, data []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("vmtest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "vmtest")
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func isCode(err error, c proto.Code) bool { return errors.Is(err, &proto.Error{Code: c}) }

// loadNextKernel loads boot2's kernel through luod with its config, the
// initrd at path initrd unless that is "", and args.
func loadNextKernel(t *testing.T, c *client.Client, share, initrd string, args proto.LoadArgs) {
	t.Helper()
	open := func(path string) *os.File {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	var i *os.File
	if initrd != "" {
		i = open(initrd)
	}
	k, cfg := open(filepath.Join(share, "boot2", "vmlinuz")), open(filepath.Join(share, "boot2", "config"))
	res, err := c.Load(tctx(t, 2*time.Minute), k, i, cfg, args)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Logf("loaded %s: %s", res.Release, res.Kernel)
}

// childCmd is this test binary as another process (a workload), running
// only test, with LUOD_VMTEST_CHILD=mode in its environment and args.
func childCmd(t *testing.T, test, mode string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, append([]string{"-test.run", "^" + test + "$"}, args...)...)
	cmd.Env = append(os.Environ(), "LUOD_VMTEST_CHILD="+mode)
	return cmd
}

// startChild starts childCmd(test, mode), its stderr ours, and returns it
// with its stdout.
func startChild(t *testing.T, test, mode string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := childCmd(t, test, mode)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewReader(out)
}

// TestDaemon runs the daemon's cases on the real kernel.
func TestDaemon(t *testing.T) {
	sock, share := daemonEnv(t)
	admin := dial(t, sock)

	// A session of root's that every case must leave intact.
	keep := []byte(strings.Repeat("keep me across everything ", 40000))
	if _, err := admin.CreateSession(tctx(t, 10*time.Second), "vmtest-keep", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Preserve(tctx(t, 10*time.Second), "vmtest-keep", []client.FileToPreserve{{File: memfdOf(t, keep), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	intact := func(t *testing.T) {
		t.Helper()
		ss, err := admin.Sessions(tctx(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss {
			if s.Name == "vmtest-keep" {
				if s.State != proto.StateOpen || len(s.Files) != 1 || s.Files[0].Size != int64(len(keep)) {
					t.Errorf("vmtest-keep after the case: %+v", s)
				}
				return
			}
		}
		t.Errorf("vmtest-keep is gone")
	}

	t.Run("upgrade_without_kernel_refused", func(t *testing.T) {
		reliability(t, "upgrade without a loaded kernel", "VM: luoctl upgrade after unload", "no_kernel_loaded; the session kept by the suite intact (size)")
		admin.Unload(tctx(t, 10*time.Second))
		_, err := admin.Upgrade(tctx(t, 10*time.Second), proto.UpgradeArgs{}, nil)
		if !isCode(err, proto.CodeNoKernelLoaded) {
			t.Fatalf("upgrade without a loaded kernel = %v, want no_kernel_loaded", err)
		}
		intact(t)
	})

	t.Run("create_sessions", func(t *testing.T) {
		reliability(t, "many sessions created in one create_sessions request, two refused", "VM: client.CreateSessions of 20 sessions of one memfd, one whose name is taken, one whose second file is /dev/null (the kernel refuses PRESERVE_FD after its memfd went in)", "18 created with their sizes; exists for the taken name; bad_fd for the other, which the kernel dropped (not listed, its name free again); nothing else lost; the kept session intact")
		var req []client.SessionToCreate
		const rollback = 12 // its second file is no memfd
		for i := range 20 {
			data := []byte(strings.Repeat(fmt.Sprintf("batch %d ", i), 1000+i))
			name := fmt.Sprintf("vmtest-batch-%02d", i)
			if i == 7 {
				name = "vmtest-keep" // taken
			}
			files := []client.FileToPreserve{{File: memfdOf(t, data), Token: uint64(i + 1), Label: "ram"}}
			if i == rollback {
				devNull, err := os.Open("/dev/null")
				if err != nil {
					t.Fatal(err)
				}
				defer devNull.Close()
				files = append(files, client.FileToPreserve{File: devNull, Token: 100, Label: "not-a-memfd"})
			}
			req = append(req, client.SessionToCreate{Name: name, Labels: map[string]string{"i": fmt.Sprint(i)}, Files: files})
		}
		got, err := admin.CreateSessions(tctx(t, 30*time.Second), req)
		if err == nil || !strings.Contains(err.Error(), "2 of 20") {
			t.Fatalf("create_sessions = %v, want 2 of 20 not created", err)
		}
		ss, lerr := admin.Sessions(tctx(t, 10*time.Second))
		if lerr != nil {
			t.Fatal(lerr)
		}
		held := map[string]proto.SessionInfo{}
		for _, s := range ss {
			held[s.Name] = s
		}
		for i, r := range got {
			if i == 7 {
				if !isCode(r.Err, proto.CodeExists) {
					t.Errorf("taken name: %v, want exists", r.Err)
				}
				continue
			}
			if i == rollback {
				// All or nothing on the real kernel: the memfd went in,
				// /dev/null did not, luod closed its only fd of the
				// session and the kernel dropped it with the memfd.
				if _, ok := held[req[i].Name]; !isCode(r.Err, proto.CodeBadFD) || ok {
					t.Errorf("%s with /dev/null: %v, listed %v; want bad_fd and not listed", req[i].Name, r.Err, ok)
				}
				if again, err := admin.CreateSession(tctx(t, 10*time.Second), req[i].Name, nil); err != nil {
					t.Errorf("%s again after the refusal: %v, want its name free", req[i].Name, err)
				} else if again.Close(); admin.DeleteSession(tctx(t, 10*time.Second), req[i].Name) != nil {
					t.Errorf("delete %s after creating it again", req[i].Name)
				}
				continue
			}
			size := int64(len(fmt.Sprintf("batch %d ", i)) * (1000 + i))
			s, ok := held[req[i].Name]
			if r.Err != nil || len(r.Files) != 1 || r.Files[0].Size != size || !ok || len(s.Files) != 1 || s.Files[0].Size != size {
				t.Errorf("%s: %+v; luod lists %+v", req[i].Name, r, s)
			}
			if err := admin.DeleteSession(tctx(t, 10*time.Second), req[i].Name); err != nil {
				t.Errorf("delete %s: %v", req[i].Name, err)
			}
		}
		intact(t)
	})

	t.Run("failed_kexec_load_not_a_kernel", func(t *testing.T) {
		reliability(t, "kexec load refused: not a kernel (a shell script)", "VM: luoctl load of the demo script", "preflight_failed naming the file; the kept session intact")
		f, err := os.Open("/luod/demo-stage.sh")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = admin.Load(tctx(t, time.Minute), f, nil, nil, proto.LoadArgs{ReuseCmdline: true})
		if !isCode(err, proto.CodePreflightFailed) || !strings.Contains(err.Error(), "/luod/demo-stage.sh") {
			t.Fatalf("load of a shell script = %v, want preflight_failed naming the file", err)
		}
		t.Logf("refused: %v", err)
		intact(t)
	})

	bzImage, err := os.ReadFile(filepath.Join(share, "boot2", "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	loadBytes := func(t *testing.T, name string, b []byte) error {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = admin.Load(tctx(t, time.Minute), f, nil, nil, proto.LoadArgs{ReuseCmdline: true})
		if err != nil && !strings.Contains(err.Error(), p) {
			t.Errorf("the error does not name the file %s: %v", p, err)
		}
		return err
	}

	t.Run("failed_kexec_load_truncated_kernel", func(t *testing.T) {
		reliability(t, "kexec load refused: truncated bzImage (the kernel itself would take it)", "VM: luoctl load of the first 64 KiB of the 7.3 bzImage", "preflight_failed: truncated, naming the file; the kept session intact")
		// The kernel itself loads a truncated bzImage (and would die at
		// reboot): luod's preflight must refuse it from the header.
		err := loadBytes(t, "bzImage-truncated", bzImage[:64<<10])
		if !isCode(err, proto.CodePreflightFailed) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("load of a truncated kernel = %v, want preflight_failed: truncated", err)
		}
		t.Logf("refused: %v", err)
		intact(t)
	})

	t.Run("failed_kexec_load_kernel_refuses", func(t *testing.T) {
		reliability(t, "kexec load refused by the kernel's loader", "VM: a whole bzImage without XLF_KERNEL_64, through kexec_file_load", "kexec_failed with the kernel's ENOEXEC and its logged reason (XLF_KERNEL_64 not set), naming the file; the kept session intact")
		// A whole bzImage without XLF_KERNEL_64 passes the preflight; the
		// kernel's bzImage64 loader refuses it with ENOEXEC.
		b := append([]byte(nil), bzImage...)
		b[0x236] &^= 1
		err := loadBytes(t, "bzImage-not-64bit", b)
		if !isCode(err, proto.CodeKexecFailed) || !strings.Contains(err.Error(), "ENOEXEC") {
			t.Fatalf("load of a kernel the loader refuses = %v, want kexec_failed with ENOEXEC", err)
		}
		// The errno says little; the loader's own reason comes from the
		// kernel log, read by luod around the call.
		if !strings.Contains(err.Error(), "the kernel logged: kexec-bzImage64: Not a bzImage64. XLF_KERNEL_64 is not set.") {
			t.Fatalf("the refusal lacks the kernel's own reason: %v", err)
		}
		t.Logf("refused by the kernel: %v", err)
		intact(t)
	})

	t.Run("dry_run", func(t *testing.T) {
		loadNextKernel(t, admin, share, "", proto.LoadArgs{ReuseCmdline: true})
		var phases []string
		res, err := admin.Upgrade(tctx(t, time.Minute), proto.UpgradeArgs{DryRun: true}, func(p proto.ProgressEvent) { phases = append(phases, p.Phase) })
		if err != nil || !res.DryRun {
			t.Fatalf("dry run = %+v, %v", res, err)
		}
		if strings.Join(phases, ",") != "barrier,manifest" {
			t.Errorf("dry run phases %v, want barrier,manifest", phases)
		}
		st, err := admin.Status(tctx(t, 10*time.Second))
		if err != nil || st.UpgradePhase != "" || st.Loaded == nil {
			t.Fatalf("status after a dry run = %+v, %v", st, err)
		}
		intact(t)
	})

	t.Run("barrier_abort_then_upgrade_possible", func(t *testing.T) {
		reliability(t, "a subscriber that never answers the barrier", "VM: a client subscribes and ignores prepare; upgrade with a 1 s timeout", "aborted, the client told; the kept session intact; a later upgrade (dry run) passes")
		mute := dial(t, sock)
		if err := mute.Subscribe(tctx(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		_, err := admin.Upgrade(tctx(t, time.Minute), proto.UpgradeArgs{TimeoutMS: 1000}, nil)
		if !isCode(err, proto.CodeAborted) {
			t.Fatalf("upgrade with a client that never answers = %v, want aborted", err)
		}
		t.Logf("aborted: %v", err)
		select {
		case ev := <-mute.Events():
			if ev.Event != proto.EventPrepare {
				t.Errorf("first event %q, want prepare", ev.Event)
			}
		case <-time.After(5 * time.Second):
			t.Error("the mute client got no prepare event")
		}
		intact(t)
		mute.Close()
		time.Sleep(100 * time.Millisecond)
		if _, err := admin.Upgrade(tctx(t, time.Minute), proto.UpgradeArgs{DryRun: true}, nil); err != nil {
			t.Fatalf("upgrade after the mute client left: %v", err)
		}
	})

	t.Run("client_killed_during_barrier", func(t *testing.T) {
		reliability(t, "a client SIGKILLed during the barrier", "VM: a workload process gets prepare and is SIGKILLed before answering", "aborted at once (disconnected, not the 20 s timeout); the kept session intact; the demo then upgrades 7.2 -> 7.3 -> 7.3 with 256 MiB byte-exact")
		// A workload process that subscribes, gets "prepare" and is
		// SIGKILLed before answering: the upgrade aborts, nothing is lost.
		cmd, out := startChild(t, "TestSubscriberThatDies", "1")
		buf := make([]byte, 64)
		if n, _ := out.Read(buf); !strings.Contains(string(buf[:n]), "subscribed") {
			t.Fatalf("subscriber said %q", buf[:n])
		}
		done := make(chan error, 1)
		go func() {
			_, err := admin.Upgrade(context.Background(), proto.UpgradeArgs{TimeoutMS: 20000}, nil)
			done <- err
		}()
		if n, _ := out.Read(buf); !strings.Contains(string(buf[:n]), "prepare") {
			t.Fatalf("subscriber said %q, want prepare", buf[:n])
		}
		cmd.Process.Kill()
		cmd.Wait()
		select {
		case err := <-done:
			if !isCode(err, proto.CodeAborted) || !strings.Contains(err.Error(), "disconnected") {
				t.Fatalf("upgrade with a killed subscriber = %v, want aborted: disconnected", err)
			}
			t.Logf("aborted: %v", err)
		case <-time.After(15 * time.Second):
			t.Fatal("the upgrade did not abort when the subscriber died")
		}
		intact(t)
	})

	t.Run("two_upgrades_at_once", func(t *testing.T) {
		reliability(t, "two upgrades at once", "VM: a second upgrade while the first holds the barrier", "busy: upgrade in progress; the first completes; the kept session intact")
		slow := dial(t, sock)
		slow.Subscribe(tctx(t, 10*time.Second))
		first := make(chan error, 1)
		go func() {
			_, err := admin.Upgrade(context.Background(), proto.UpgradeArgs{TimeoutMS: 3000, DryRun: true}, nil)
			first <- err
		}()
		other := dial(t, sock)
		// Wait until the first upgrade holds the barrier.
		for i := 0; ; i++ {
			st, err := other.Status(tctx(t, 10*time.Second))
			if err == nil && st.UpgradePhase == proto.PhaseBarrier {
				break
			}
			if i > 100 {
				t.Fatalf("the first upgrade never reached the barrier: %+v, %v", st, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		_, err := other.Upgrade(tctx(t, 10*time.Second), proto.UpgradeArgs{DryRun: true}, nil)
		if !isCode(err, proto.CodeBusy) || !strings.Contains(err.Error(), "upgrade in progress") {
			t.Errorf("second upgrade = %v, want busy: upgrade in progress", err)
		}
		<-first
		intact(t)
	})

	t.Run("second_uid_denied", func(t *testing.T) {
		reliability(t, "a second uid reaching for root's session and admin operations", "VM: a uid 1000 process lists, deletes, reclaims root's session; status, upgrade, inspect", "not_found for the session, permission_denied for admin ops; its own session works; the kept session intact")
		cmd := childCmd(t, "TestAsOtherUID", "1", "-test.v")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 100}}
		out, err := cmd.CombinedOutput()
		t.Logf("uid 1000:\n%s", out)
		if err != nil {
			t.Fatalf("the uid 1000 client failed: %v", err)
		}
		intact(t)
	})

	if err := admin.DeleteSession(tctx(t, 10*time.Second), "vmtest-keep"); err != nil {
		t.Errorf("delete: %v", err)
	}
}

// TestAsOtherUID is the uid 1000 side of second_uid_denied.
func TestAsOtherUID(t *testing.T) {
	if os.Getenv("LUOD_VMTEST_CHILD") != "1" {
		t.Skip("run by TestDaemon as another uid")
	}
	if os.Getuid() != 1000 {
		t.Fatalf("running as uid %d, want 1000", os.Getuid())
	}
	c := dial(t, proto.DefaultSocket)
	ss, err := c.ListSessions(tctx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if s.Name == "vmtest-keep" {
			t.Errorf("uid 1000 sees root's session: %+v", s)
		}
	}
	if err := c.DeleteSession(tctx(t, 10*time.Second), "vmtest-keep"); !isCode(err, proto.CodeNotFound) {
		t.Errorf("uid 1000 deleting root's session = %v, want not_found", err)
	}
	if _, err := c.Reclaim(tctx(t, 10*time.Second), "vmtest-keep", false); !isCode(err, proto.CodeNotFound) {
		t.Errorf("uid 1000 reclaiming root's session = %v, want not_found", err)
	}
	for name, op := range map[string]func() error{
		"status": func() error { _, err := c.Status(tctx(t, 10*time.Second)); return err },
		"upgrade": func() error {
			_, err := c.Upgrade(tctx(t, 10*time.Second), proto.UpgradeArgs{DryRun: true}, nil)
			return err
		},
		"inspect": func() error { _, err := c.Inspect(tctx(t, 10*time.Second), ""); return err },
	} {
		if err := op(); !isCode(err, proto.CodePermissionDenied) {
			t.Errorf("uid 1000 %s = %v, want permission_denied", name, err)
		}
	}
	// Its own session works, and the connection went on after every refusal.
	if _, err := c.CreateSession(tctx(t, 10*time.Second), "uid1000-own", nil); err != nil {
		t.Fatalf("uid 1000 creating its own session: %v", err)
	}
	data := []byte("uid 1000's memory")
	if _, err := c.Preserve(tctx(t, 10*time.Second), "uid1000-own", []client.FileToPreserve{{File: memfdOf(t, data), Token: 5}}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSession(tctx(t, 10*time.Second), "uid1000-own"); err != nil {
		t.Fatal(err)
	}
}

// TestSubscriberThatDies is the workload of client_killed_during_barrier:
// it subscribes, reports "prepare" and waits to be killed.
func TestSubscriberThatDies(t *testing.T) {
	if os.Getenv("LUOD_VMTEST_CHILD") != "1" {
		t.Skip("run by TestDaemon")
	}
	c := dial(t, proto.DefaultSocket)
	if err := c.Subscribe(tctx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("subscribed\n")
	for ev := range c.Events() {
		if ev.Event == proto.EventPrepare {
			os.Stdout.WriteString("prepare\n")
			time.Sleep(time.Hour) // never answers; the parent kills us
		}
	}
}
