package systemd

import (
	"fmt"
	"strconv"
	"strings"
)

// systemd versions that change what the fd store can do for luod.
const (
	// FDStoreKexecVersion is the first systemd whose kexec.target carries
	// fd stores, LUO sessions included, across a kexec through the Live
	// Update Orchestrator (systemd pull request 41683). From it on luod
	// may take the orderly path: store every session, StartKexecTarget,
	// and let systemd shut down and kexec.
	FDStoreKexecVersion = 261
)

// parseVersion reads systemd's major version from the first line of
// `systemctl --version` ("systemd 252 (252.38-1~deb12u1)", "systemd 261~rc1
// (…)") or from the manager's Version property ("252.38-1~deb12u1"): the
// leading decimal digits, after an optional "systemd ".
func parseVersion(s string) (int, error) {
	line, _, _ := strings.Cut(s, "\n")
	v := strings.TrimPrefix(strings.TrimSpace(line), "systemd ")
	v = strings.Trim(v, `"`)
	n := 0
	for n < len(v) && '0' <= v[n] && v[n] <= '9' {
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("no systemd version in %q", line)
	}
	ver, err := strconv.Atoi(v[:n])
	if err != nil {
		return 0, fmt.Errorf("systemd version in %q: %w", line, err)
	}
	return ver, nil
}
