package systemd

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of fds luod keeps in systemd's fd store, the part of an FDNAME
// before the first '-'.
const (
	// KindSession is the fd of a LUO session luod holds, named by the
	// session ("session-vm-42"). luod's reserved session (pkg/session
	// ReservedName, "luod"), which carries the manifest memfd across a
	// kexec, is stored like any other: "session-luod".
	KindSession = "session"
	// KindManifest is a memfd holding luod's serialized custody table, for
	// a restart of luod within the same boot. It has no name part: the
	// FDNAME is just "manifest".
	KindManifest = "manifest"
)

// ListenerName is the FDNAME under which luod.socket passes its listening
// socket (FileDescriptorName=luod.socket; also systemd's default, the
// socket unit's name).
const ListenerName = "luod.socket"

// MaxFDNameLen is systemd's limit on an FDNAME (FDNAME_MAX).
const MaxFDNameLen = 255

// ErrInvalidFDName is matched (errors.Is) by every error about an FDNAME
// systemd would refuse or luod cannot decode.
var ErrInvalidFDName = errors.New("invalid fd name")

func fdNameErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidFDName}, args...)...)
}

// FDName builds the FDNAME of an fd of kind (KindSession, KindManifest)
// and, for a session, its name:
//
//	kind                  (name == "")
//	kind "-" escape(name)  otherwise
//
// escape keeps A-Z a-z 0-9 '.' '_' '-' and writes every other byte as '%'
// and two upper-case hex digits. Session names are 1 to 63 bytes of
// [A-Za-z0-9._:-], so in practice only ':' changes, to "%3A": "vm:42"
// becomes "session-vm%3A42", at most 8+3*63 = 197 bytes, well within
// MaxFDNameLen. Percent-encoding was chosen over base32 so that names stay
// readable in `systemd-analyze fdstore luod`.
//
// FDName does not validate; StoreFD and ParseFDName do (ValidateFDName).
func FDName(kind, name string) string {
	if name == "" {
		return kind
	}
	var b strings.Builder
	b.Grow(len(kind) + 1 + len(name))
	b.WriteString(kind)
	b.WriteByte('-')
	for i := 0; i < len(name); i++ {
		c := name[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		const hex = "0123456789ABCDEF"
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

func plain(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}

// ParseFDName is the inverse of FDName. It accepts only what FDName
// produces for a known kind — a session with a non-empty name, the
// manifest without one — so that every stored fd has exactly one name:
// lower-case hex, an escaped byte that needs none, or a truncated escape
// are errors matching ErrInvalidFDName. Names that are not luod's (such as
// ListenerName) are errors too.
func ParseFDName(s string) (kind, name string, err error) {
	if err := ValidateFDName(s); err != nil {
		return "", "", err
	}
	kind, enc, hasName := strings.Cut(s, "-")
	switch kind {
	case KindSession:
		if !hasName || enc == "" {
			return "", "", fdNameErrorf("%q: a session fd needs a session name", s)
		}
	case KindManifest:
		if hasName {
			return "", "", fdNameErrorf("%q: the manifest fd takes no name", s)
		}
		return kind, "", nil
	default:
		return "", "", fdNameErrorf("%q: not an fd luod stores", s)
	}
	b := make([]byte, 0, len(enc))
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if c != '%' {
			if !plain(c) {
				return "", "", fdNameErrorf("%q: byte %q must be escaped", s, c)
			}
			b = append(b, c)
			continue
		}
		if i+2 >= len(enc) {
			return "", "", fdNameErrorf("%q: truncated escape", s)
		}
		hi, ok1 := unhex(enc[i+1])
		lo, ok2 := unhex(enc[i+2])
		if !ok1 || !ok2 {
			return "", "", fdNameErrorf("%q: bad escape %q (upper-case hex expected)", s, enc[i:i+3])
		}
		if plain(hi<<4 | lo) {
			return "", "", fdNameErrorf("%q: %q needs no escape", s, enc[i:i+3])
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return kind, string(b), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// ValidateFDName checks s against systemd's rule for an FDNAME
// (fdname_is_valid): at most MaxFDNameLen bytes, printable ASCII (no
// control characters, nothing above 126), no ':'. systemd also accepts the
// empty name but then stores the fd as "stored"; luod never uses it.
func ValidateFDName(s string) error {
	switch {
	case s == "":
		return fdNameErrorf("empty name")
	case len(s) > MaxFDNameLen:
		return fdNameErrorf("%.32q… is %d bytes, at most %d", s, len(s), MaxFDNameLen)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < ' ' || c > '~':
			return fdNameErrorf("%q: control or non-ASCII byte at %d", s, i)
		case c == ':':
			return fdNameErrorf("%q: ':' at %d (it separates $LISTEN_FDNAMES)", s, i)
		}
	}
	return nil
}
