package systemd

import "testing"

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]int{
		"systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT +SELINUX": 252,
		"systemd 261~rc1 (261~rc1-1)":                          261,
		"systemd 257 (257.4-1-arch)":                           257,
		"systemd 249\n":                                        249,
		"252.38-1~deb12u1":                                     252,
		`"261.1-1"`:                                            261,
	} {
		if got, err := parseVersion(in); err != nil || got != want {
			t.Errorf("parseVersion(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "systemd", "systemd (252)", "\n252", "elogind 252"} {
		if got, err := parseVersion(in); err == nil {
			t.Errorf("parseVersion(%q) = %d, want an error", in, got)
		}
	}
}
