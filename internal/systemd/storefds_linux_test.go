//go:build linux

package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/mmsg"
)

// received is one datagram as systemd got it: its text and the inode of
// the one fd it carried.
type received struct {
	msg string
	ino uint64
	n   int // fds carried
}

// drain reads n datagrams from sd while the sender sends (a datagram
// socket's queue holds few), closing the fds as systemd would keep them.
func drain(t *testing.T, sd *net.UnixConn, n int) <-chan []received {
	t.Helper()
	out := make(chan []received, 1)
	go func() {
		var got []received
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*8))
		for len(got) < n {
			k, oobn, _, _, err := sd.ReadMsgUnix(buf, oob)
			if err != nil {
				break
			}
			r := received{msg: string(buf[:k])}
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					continue
				}
				for _, fd := range fds {
					var st unix.Stat_t
					if unix.Fstat(fd, &st) == nil {
						r.ino = st.Ino
					}
					unix.Close(fd)
					r.n++
				}
			}
			got = append(got, r)
		}
		out <- got
	}()
	return out
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestStoreFDs: a batch reaches systemd as the same messages, in the same
// order, each with its own file, as StoreFD one by one would send them,
// past one sendmmsg(2)'s 1024 messages too.
func TestStoreFDs(t *testing.T) {
	for _, n := range []int{1, 3, mmsg.MaxBatch + 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ensureNofile(t, uint64(2*n+64))
			sd := fakeSystemd(t, n == 3)
			files := make([]NamedFile, n)
			for i := range files {
				files[i] = NamedFile{Name: FDName(KindSession, fmt.Sprintf("vm:%d", i)), File: memfd(t, "x")}
			}
			done := drain(t, sd, n)
			sent, err := Notifier{}.StoreFDs(files)
			if err != nil || sent != n {
				t.Fatalf("StoreFDs: %d sent, %v; want %d", sent, err, n)
			}
			got := <-done
			if len(got) != n {
				t.Fatalf("systemd got %d messages, want %d", len(got), n)
			}
			for i, r := range got {
				want := "FDSTORE=1\nFDNAME=" + files[i].Name
				if r.msg != want || r.n != 1 || r.ino != inode(t, files[i].File) {
					t.Fatalf("message %d: %q with %d fds (inode %d), want %q with the file of inode %d",
						i, r.msg, r.n, r.ino, want, inode(t, files[i].File))
				}
			}
			// luod's files stay open.
			for _, f := range files {
				if _, err := f.File.Stat(); err != nil {
					t.Fatalf("%s after StoreFDs: %v", f.Name, err)
				}
			}
		})
	}
}

// TestStoreFDsRefusesBadNames: one bad name sends nothing.
func TestStoreFDsRefusesBadNames(t *testing.T) {
	fakeSystemd(t, false)
	files := []NamedFile{{Name: FDName(KindSession, "ok"), File: memfd(t, "x")}, {Name: "bad:name", File: memfd(t, "y")}}
	sent, err := Notifier{}.StoreFDs(files)
	var e *Error
	if sent != 0 || !errors.As(err, &e) || e.FDName != "bad:name" {
		t.Fatalf("StoreFDs with a bad name: %d sent, %v; want nothing sent and the name in the error", sent, err)
	}
	if _, err := (Notifier{}).StoreFDs([]NamedFile{{Name: FDName(KindSession, "nil")}}); err == nil {
		t.Error("a nil file was accepted")
	}
}

// TestStoreFDsRedials: systemd re-executed itself (a new socket at the
// same address) since the last message: the batch goes to the new one.
func TestStoreFDsRedials(t *testing.T) {
	sd := fakeSystemd(t, false)
	if err := (Notifier{}).StoreFD(FDName(KindSession, "first"), memfd(t, "a")); err != nil {
		t.Fatal(err)
	}
	recv(t, sd)
	sd2 := reexecSystemd(t, sd)
	files := []NamedFile{{Name: FDName(KindSession, "a"), File: memfd(t, "a")}, {Name: FDName(KindSession, "b"), File: memfd(t, "b")}}
	done := drain(t, sd2, 2)
	if sent, err := (Notifier{}).StoreFDs(files); err != nil || sent != 2 {
		t.Fatalf("StoreFDs after systemd's re-exec: %d sent, %v", sent, err)
	}
	got := <-done
	if len(got) != 2 || !strings.HasSuffix(got[1].msg, "FDNAME=session-b") {
		t.Fatalf("the new socket got %+v", got)
	}
}

// TestStoreFDsNoSystemd: without $NOTIFY_SOCKET nothing is sent and
// nothing fails.
func TestStoreFDsNoSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := (Notifier{}).StoreFDs([]NamedFile{{Name: FDName(KindSession, "a"), File: memfd(t, "a")}}); err != nil || sent != 1 {
		t.Fatalf("StoreFDs without systemd: %d, %v", sent, err)
	}
}

// ensureNofile raises RLIMIT_NOFILE to at least n for the test.
func ensureNofile(t *testing.T, n uint64) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	old := lim
	lim.Cur = min(max(n, lim.Cur), lim.Max)
	if lim.Cur < n {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d this test needs", lim.Max, n)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
}

// TestRemoveFDs: a batch of removals reaches systemd as RemoveFD one by
// one would send them, without fds.
func TestRemoveFDs(t *testing.T) {
	sd := fakeSystemd(t, false)
	names := []string{FDName(KindSession, "a"), FDName(KindSession, "b"), FDName(KindSession, "c")}
	done := drain(t, sd, len(names))
	if sent, err := (Notifier{}).RemoveFDs(names); err != nil || sent != len(names) {
		t.Fatalf("RemoveFDs: %d sent, %v", sent, err)
	}
	got := <-done
	if len(got) != len(names) {
		t.Fatalf("systemd got %d messages, want %d", len(got), len(names))
	}
	for i, r := range got {
		if want := "FDSTOREREMOVE=1\nFDNAME=" + names[i]; r.msg != want || r.n != 0 {
			t.Errorf("message %d: %q with %d fds, want %q without", i, r.msg, r.n, want)
		}
	}
	if sent, err := (Notifier{}).RemoveFDs([]string{names[0], "bad:name"}); sent != 0 || err == nil {
		t.Errorf("RemoveFDs with a bad name: %d sent, %v; want nothing sent", sent, err)
	}
}

// TestEmptyBatches: nothing to store or remove sends nothing and cannot
// fail, even with a $NOTIFY_SOCKET luod could not use (whose error would
// have to name a file).
func TestEmptyBatches(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "relative/socket")
	if sent, err := (Notifier{}).StoreFDs(nil); sent != 0 || err != nil {
		t.Fatalf("StoreFDs(nil) = %d, %v", sent, err)
	}
	if sent, err := (Notifier{}).RemoveFDs(nil); sent != 0 || err != nil {
		t.Fatalf("RemoveFDs(nil) = %d, %v", sent, err)
	}
}
