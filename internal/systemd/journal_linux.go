//go:build linux

package systemd

import (
	"log/slog"
	"net"

	"github.com/coreos/go-systemd/v22/journal"
	slogjournal "github.com/systemd/slog-journal"
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

// stderrIsJournal reports whether fd 2 is the journal stream
// $JOURNAL_STREAM names (go-systemd's check).
func stderrIsJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

func journalReachable() bool {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: journalSocket, Net: "unixgram"})
	if err != nil {
		return false
	}
	c.Close()
	return true
}
