package systemd

import "strings"

// maxJournalFieldLen is journald's limit on a field name (64 bytes).
const maxJournalFieldLen = 64

// handlerFields are the journal fields the journal handler writes itself,
// plus well-known fields journalctl gives a meaning to; an attribute of the
// same name gets the prefix "LUOD_" instead of shadowing or duplicating
// them.
var handlerFields = map[string]bool{
	"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true,
	"CODE_FILE": true, "CODE_LINE": true, "CODE_FUNC": true,
	"SYSLOG_IDENTIFIER": true, "SYSLOG_TIMESTAMP": true, "SYSLOG_FACILITY": true,
	"SYSLOG_PID": true, "SYSLOG_RAW": true, "ERRNO": true, "TID": true,
	"INVOCATION_ID": true, "USER_INVOCATION_ID": true, "UNIT": true, "USER_UNIT": true,
	"DOCUMENTATION": true,
}

// journalField maps an slog attribute key (or group name) to a journal
// field name. journald accepts only ^[A-Z_][A-Z0-9_]*$ of at most 64
// bytes and silently drops every other field, and names starting with '_'
// are its own trusted fields, which it also drops from clients.
// github.com/systemd/slog-journal (v0.1.2) passes keys through unchanged,
// so luod's lower-case keys would all vanish without this mapping:
//
//   - ASCII letters are upper-cased, every other byte outside [A-Z0-9_]
//     becomes '_' (so a non-ASCII letter becomes one '_' per byte);
//   - leading '_' are removed; a name then empty or starting with a digit
//     gets the prefix "F_";
//   - a name the handler writes itself (MESSAGE, PRIORITY, CODE_*,
//     SYSLOG_*) or journalctl interprets (MESSAGE_ID, ERRNO, UNIT, …) gets
//     the prefix "LUOD_";
//   - the result is cut to 64 bytes.
//
// So luod's attributes become: session → SESSION, uid → UID, token →
// TOKEN, phase → PHASE, upgrade → UPGRADE, err → ERR, liveupdate_number →
// LIVEUPDATE_NUMBER, previous_release → PREVIOUS_RELEASE; a group "kho"
// with key "dir" → KHO_DIR. `journalctl -u luod SESSION=vm-42` then finds
// every line about one session.
func journalField(key string) string {
	b := []byte(key)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z':
			b[i] = c - 'a' + 'A'
		case 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_':
		default:
			b[i] = '_'
		}
	}
	s := strings.TrimLeft(string(b), "_")
	switch {
	case s == "" || s[0] >= '0' && s[0] <= '9':
		s = "F_" + s
	case handlerFields[s]:
		s = "LUOD_" + s
	}
	if len(s) > maxJournalFieldLen {
		s = s[:maxJournalFieldLen]
	}
	return s
}
