package proto

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateSessionName(t *testing.T) {
	for _, name := range []string{"a", "vm-42", "0", "A.b_c:d-e", strings.Repeat("x", 63), "lu", "Luod-x", "xluod", "systemd-vm", "Systemd"} {
		if err := ValidateSessionName(name); err != nil {
			t.Errorf("ValidateSessionName(%q) = %v, want nil", name, err)
		}
	}
	for _, tc := range []struct{ name, want string }{
		{"", "empty"},
		{strings.Repeat("x", 64), "64 bytes long, at most 63"},
		{"luod", "reserved"},
		{"luod-manifest", "reserved"},
		{"systemd", "systemd's own"},
		{"-vm", `byte 0x2d ('-') at position 0 is not allowed first`},
		{".vm", `position 0`},
		{"vm 42", "byte 0x20 at position 2 is not allowed"},
		{"vm/42", `byte 0x2f ('/') at position 2`},
		{"vm\x00", "byte 0x00 at position 2"},
		{"vm\xff", "byte 0xff at position 2"},
		{"vé", "position 1"},
	} {
		err := ValidateSessionName(tc.name)
		if err == nil {
			t.Errorf("ValidateSessionName(%q) = nil, want error", tc.name)
			continue
		}
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateSessionName(%q) = %v, not an invalid_name error", tc.name, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateSessionName(%q) = %q, want it to contain %q", tc.name, err, tc.want)
		}
	}
}
