package systemd

import (
	"errors"
	"strings"
	"testing"
)

func TestFDNameRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		kind, name, want string
	}{
		{KindSession, "vm-42", "session-vm-42"},
		{KindSession, "vm:42", "session-vm%3A42"},
		{KindSession, "a.b_c-d:e:f", "session-a.b_c-d%3Ae%3Af"},
		{KindSession, "luod", "session-luod"},
		{KindSession, "0", "session-0"},
		{KindManifest, "", "manifest"},
		// 63 bytes, the longest session name, all ':': the worst case.
		{KindSession, strings.Repeat(":", 63), "session-" + strings.Repeat("%3A", 63)},
		{KindSession, strings.Repeat("x", 63), "session-" + strings.Repeat("x", 63)},
	} {
		got := FDName(tc.kind, tc.name)
		if got != tc.want {
			t.Errorf("FDName(%q, %q) = %q, want %q", tc.kind, tc.name, got, tc.want)
		}
		if err := ValidateFDName(got); err != nil {
			t.Errorf("FDName(%q, %q) = %q is not a valid FDNAME: %v", tc.kind, tc.name, got, err)
		}
		kind, name, err := ParseFDName(got)
		if err != nil || kind != tc.kind || name != tc.name {
			t.Errorf("ParseFDName(%q) = %q, %q, %v; want %q, %q", got, kind, name, err, tc.kind, tc.name)
		}
	}
	if n := len(FDName(KindSession, strings.Repeat(":", 63))); n != 197 || n > MaxFDNameLen {
		t.Errorf("longest session FDNAME is %d bytes, want 197 (<= %d)", n, MaxFDNameLen)
	}
}

func TestParseFDNameRejects(t *testing.T) {
	for _, s := range []string{
		"",
		ListenerName,        // systemd's, not a stored fd
		"LISTEN_FD_3",       // unnamed
		"stored",            // systemd's default for FDSTORE without FDNAME
		"session",           // no name
		"session-",          // empty name
		"session-vm%3a42",   // lower-case hex: FDName never writes it
		"session-%41",       // 'A' needs no escape
		"session-vm%3",      // truncated
		"session-vm%",       // truncated
		"session-vm%GG",     // not hex
		"session-vm 42",     // ' ' must be escaped
		"session-vm:42",     // ':' is not a valid FDNAME at all
		"manifest-x",        // the manifest takes no name
		"sessions-vm",       // unknown kind
		"session-vm\n",      // control character
		"session-" + "\x7f", // DEL
		"session-" + "é",    // non-ASCII
		"session-" + strings.Repeat("x", MaxFDNameLen-7), // 256 bytes
	} {
		kind, name, err := ParseFDName(s)
		if err == nil {
			t.Errorf("ParseFDName(%q) = %q, %q, nil; want an error", s, kind, name)
		} else if !errors.Is(err, ErrInvalidFDName) {
			t.Errorf("ParseFDName(%q) error %v does not match ErrInvalidFDName", s, err)
		}
	}
}

func TestValidateFDName(t *testing.T) {
	if err := ValidateFDName(strings.Repeat("x", MaxFDNameLen)); err != nil {
		t.Errorf("255 bytes: %v", err)
	}
	for _, s := range []string{"", strings.Repeat("x", MaxFDNameLen+1), "a:b", "a\tb", "a\x00b", "\x7f"} {
		if err := ValidateFDName(s); !errors.Is(err, ErrInvalidFDName) {
			t.Errorf("ValidateFDName(%q) = %v, want ErrInvalidFDName", s, err)
		}
	}
}

// FuzzParseFDName: whatever ParseFDName accepts is a valid FDNAME that
// FDName writes back byte for byte, and every session name FDName encodes
// parses back.
func FuzzParseFDName(f *testing.F) {
	for _, s := range []string{"session-vm%3A42", "manifest", "session-luod", "session-%41", "luod.socket", "vm:42", "a.b_c-d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if kind, name, err := ParseFDName(s); err == nil {
			if err := ValidateFDName(s); err != nil {
				t.Fatalf("ParseFDName accepted %q, which systemd refuses: %v", s, err)
			}
			if back := FDName(kind, name); back != s {
				t.Fatalf("ParseFDName(%q) = %q, %q; FDName gives back %q", s, kind, name, back)
			}
		}
		if s == "" || len(s) > 63 {
			return
		}
		enc := FDName(KindSession, s)
		if err := ValidateFDName(enc); err != nil {
			t.Fatalf("FDName(session, %q) = %q is invalid: %v", s, enc, err)
		}
		if kind, name, err := ParseFDName(enc); err != nil || kind != KindSession || name != s {
			t.Fatalf("ParseFDName(FDName(session, %q)) = %q, %q, %v", s, kind, name, err)
		}
	})
}
