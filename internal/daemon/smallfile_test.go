package daemon

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestSmallFile: readFile and writeFile do what os.ReadFile and
// os.WriteFile do, files larger than the first buffer included.
func TestSmallFile(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 1, 511, 512, 513, 70000} {
		p := filepath.Join(dir, "f")
		want := bytes.Repeat([]byte{'x', 'y', 'z'}, n)[:n]
		if err := writeFile(p, want, 0o640); err != nil {
			t.Fatal(err)
		}
		got, err := readFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: read back %d bytes, %v", n, len(got), err)
		}
		if b, _ := os.ReadFile(p); !bytes.Equal(b, want) {
			t.Fatalf("%d bytes: os.ReadFile sees %d bytes", n, len(b))
		}
	}
	if _, err := readFile(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	if b, err := readFile("/proc/sys/kernel/osrelease"); err != nil || len(b) == 0 {
		t.Errorf("/proc/sys/kernel/osrelease: %q, %v", b, err)
	}
}
