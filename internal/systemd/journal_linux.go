//go:build linux

package systemd

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	slogjournal "github.com/systemd/slog-journal"
	"golang.org/x/sys/unix"
)

// journalSocket is journald's native protocol socket; slog-journal sends
// there (its path is fixed), luod only checks that it answers. A variable
// for tests.
var journalSocket = "/run/systemd/journal/socket"

// NewLogger returns a logger writing to the journal in its native
// protocol, so that every attribute becomes a field of its own (see
// journalField for the names: SESSION, UID, TOKEN, PHASE, …) and the level
// becomes PRIORITY, when luod runs as a systemd service whose stderr goes
// to the journal and journald is reachable. Otherwise it returns false and
// luod logs text or JSON to stderr as configured.
//
// "Runs under systemd with stderr to the journal" is what $JOURNAL_STREAM
// says: systemd sets it to the device and inode of the stream it connected
// to stdout/stderr, and, as systemd.exec(5) asks, it counts only if it
// still matches fd 2 (a child that inherited the variable with stderr
// redirected does not qualify). "Reachable" means a datagram socket
// connects to /run/systemd/journal/socket.
//
// level may be nil: then slog-journal's level applies, info, or debug when
// systemd sets $DEBUG_INVOCATION (RestartMode=debug). The journal's
// SYSLOG_IDENTIFIER is the base name of the executable, "luod".
func NewLogger(level slog.Leveler) (*slog.Logger, bool) {
	if !stderrIsJournal() || !journalReachable() {
		return nil, false
	}
	h, err := slogjournal.NewHandler(&slogjournal.Options{
		Level:        level,
		ReplaceAttr:  func(_ []string, a slog.Attr) slog.Attr { a.Key = journalField(a.Key); return a },
		ReplaceGroup: journalField,
	})
	if err != nil {
		return nil, false
	}
	return slog.New(h), true
}

// stderrIsJournal reports whether $JOURNAL_STREAM ("<dev>:<ino>") names
// the file on fd 2.
func stderrIsJournal() bool {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" {
		return false
	}
	d, i, ok := strings.Cut(v, ":")
	dev, err1 := strconv.ParseUint(d, 10, 64)
	ino, err2 := strconv.ParseUint(i, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && uint64(st.Ino) == ino
}

func journalReachable() bool {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: journalSocket, Net: "unixgram"})
	if err != nil {
		return false
	}
	c.Close()
	return true
}
