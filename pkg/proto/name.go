package proto

import (
	"fmt"
	"strings"
)

// MaxSessionNameLen is the longest session name: the kernel's
// LIVEUPDATE_SESSION_NAME_LENGTH less its NUL.
const MaxSessionNameLen = 63

// SystemdSession is the LUO session systemd (>= 261) keeps its fd stores
// in across a kexec; a stored session fd of that name is skipped by it.
const SystemdSession = "systemd"

// ValidateSessionName checks the protocol's rule for session names: 1 to
// MaxSessionNameLen bytes of A-Z a-z 0-9 . _ : -, the first a letter or
// digit, not starting with ReservedPrefix (case-sensitive), not
// SystemdSession. The kernel
// itself accepts any bytes but NUL; the rule keeps names safe to log, to
// use in file names and on command lines. A broken rule is an *Error with
// CodeInvalidName whose message names the offending byte and position.
func ValidateSessionName(name string) error {
	switch {
	case name == "":
		return Errorf(CodeInvalidName, "session name is empty")
	case len(name) > MaxSessionNameLen:
		return Errorf(CodeInvalidName, "session name %.20q… is %d bytes long, at most %d", name, len(name), MaxSessionNameLen)
	case strings.HasPrefix(name, ReservedPrefix):
		return Errorf(CodeInvalidName, "session name %q starts with %q, which is reserved for luod", name, ReservedPrefix)
	case name == SystemdSession:
		return Errorf(CodeInvalidName, "session name %q is systemd's own: on the orderly upgrade path systemd would skip a stored session of that name", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if alnum(c) || i > 0 && (c == '.' || c == '_' || c == ':' || c == '-') {
			continue
		}
		what := "is not allowed"
		if i == 0 {
			what = "is not allowed first: start with a letter or digit"
		}
		return Errorf(CodeInvalidName, "session name %q: byte %s at position %d %s (allowed: A-Z a-z 0-9 . _ : -)", name, byteName(c), i, what)
	}
	return nil
}

func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func byteName(c byte) string {
	if c >= 0x21 && c < 0x7f {
		return fmt.Sprintf("%#02x (%q)", c, rune(c))
	}
	return fmt.Sprintf("%#02x", c)
}
