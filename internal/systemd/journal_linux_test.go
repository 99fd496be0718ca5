//go:build linux

package systemd

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// stderrStream is what systemd would put into $JOURNAL_STREAM if fd 2 were
// its stream to journald.
func stderrStream(t *testing.T) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		t.Skipf("fstat stderr: %v", err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func fakeJournal(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "socket")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return path
}

func setJournalSocket(t *testing.T, path string) {
	old := journalSocket
	journalSocket = path
	t.Cleanup(func() { journalSocket = old })
}

func TestNewLoggerFallsBack(t *testing.T) {
	stream := stderrStream(t)
	live := fakeJournal(t)
	for _, tc := range []struct {
		name, stream, socket string
	}{
		{"no JOURNAL_STREAM", "", live},
		{"JOURNAL_STREAM of another file", "1:1", live},
		{"JOURNAL_STREAM malformed", "junk", live},
		{"journald not listening", stream, filepath.Join(filepath.Dir(live), "missing")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", tc.stream)
			setJournalSocket(t, tc.socket)
			if l, ok := NewLogger(slog.LevelInfo); ok || l != nil {
				t.Errorf("NewLogger = %v, %v; want nil, false", l, ok)
			}
		})
	}
}

func TestNewLoggerJournal(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", stderrStream(t))
	setJournalSocket(t, fakeJournal(t))
	l, ok := NewLogger(slog.LevelDebug)
	if !ok || l == nil {
		t.Fatal("NewLogger with stderr on the journal and journald listening = false")
	}
	if !l.Enabled(t.Context(), slog.LevelDebug) {
		t.Error("the level given is not applied")
	}
	// Not logging: slog-journal writes to the real journald socket, whose
	// path it fixes; the field names are journalField's, tested apart.
}
