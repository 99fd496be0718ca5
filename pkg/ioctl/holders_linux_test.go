//go:build linux

package ioctl

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHoldersIn(t *testing.T) {
	proc := t.TempDir()
	mk := func(pid, comm string, links ...string) {
		os.MkdirAll(filepath.Join(proc, pid, "fd"), 0o755)
		os.WriteFile(filepath.Join(proc, pid, "comm"), []byte(comm+"\n"), 0o644)
		for i, l := range links {
			os.Symlink(l, filepath.Join(proc, pid, "fd", string(rune('3'+i))))
		}
	}
	mk("100", "luod", "/dev/null", DevicePath)
	mk("200", "bash", "/dev/pts/0")
	mk("self", "x", DevicePath) // not a pid
	hs := holdersIn(proc, DevicePath)
	if len(hs) != 1 || hs[0].PID != 100 || hs[0].Comm != "luod" {
		t.Fatalf("holders = %+v, want pid 100 (luod)", hs)
	}
}
