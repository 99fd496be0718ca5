//go:build linux

package session

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMemfd(t *testing.T) {
	m := sampleManifest()
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	f, err := sealedMemfd(b)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if seals != manifestSeals {
		t.Fatalf("seals %#x, want %#x", seals, manifestSeals)
	}
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("wrote into a sealed manifest")
	}
	got, err := ReadMemfd(f) // the position is at the end: ReadMemfd must not care
	if err != nil {
		t.Fatal(err)
	}
	back, _ := got.Encode()
	if !bytes.Equal(b, back) {
		t.Fatalf("memfd round trip:\n%s\n%s", b, back)
	}
}
