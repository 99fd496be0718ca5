package systemd

import (
	"regexp"
	"strings"
	"testing"
)

func TestJournalField(t *testing.T) {
	for key, want := range map[string]string{
		"session":               "SESSION",
		"uid":                   "UID",
		"token":                 "TOKEN",
		"phase":                 "PHASE",
		"err":                   "ERR",
		"liveupdate_number":     "LIVEUPDATE_NUMBER",
		"retry-in":              "RETRY_IN",
		"kho.dir":               "KHO_DIR",
		"_PID":                  "PID",
		"__x":                   "X",
		"9lives":                "F_9LIVES",
		"":                      "F_",
		"_":                     "F_",
		"message":               "LUOD_MESSAGE",
		"priority":              "LUOD_PRIORITY",
		"code_file":             "LUOD_CODE_FILE",
		"syslog_identifier":     "LUOD_SYSLOG_IDENTIFIER",
		"unit":                  "LUOD_UNIT",
		"Grüße":                 "GR____E", // ü and ß are two bytes each
		strings.Repeat("a", 80): strings.Repeat("A", 64),
	} {
		if got := journalField(key); got != want {
			t.Errorf("journalField(%q) = %q, want %q", key, got, want)
		}
	}
}

func FuzzJournalField(f *testing.F) {
	valid := regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)
	for _, s := range []string{"session", "_x", "9", "message", "a-b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if got := journalField(key); !valid.MatchString(got) || len(got) > 64 {
			t.Fatalf("journalField(%q) = %q, which journald drops", key, got)
		}
	})
}
