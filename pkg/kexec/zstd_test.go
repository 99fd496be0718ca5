package kexec

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The files in testdata/zstd were made by the zstd command from newc cpio
// archives: level19.zst (700 KB of text, compressed and RLE blocks, with a
// checksum), nocheck.zst (the same, level 1, --no-check) and
// raw-block.zst (30 KB of random bytes: a raw block).
func zstdFiles(t *testing.T) map[string][]byte {
	t.Helper()
	paths, _ := filepath.Glob("testdata/zstd/*.zst")
	if len(paths) == 0 {
		t.Fatal("no testdata/zstd/*.zst")
	}
	out := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = b
	}
	return out
}

// TestVerifyZstd: every whole frame is walked to its end, every frame cut
// short anywhere is refused as truncated, and what follows a frame is
// walked as the kernel's unpacker would.
func TestVerifyZstd(t *testing.T) {
	early := cpioArchive(map[string]string{"kernel/x86/microcode/AuthenticAMD.bin": "ucode"})
	for name, z := range zstdFiles(t) {
		t.Run(name, func(t *testing.T) {
			br := bufio.NewReader(bytes.NewReader(append(append([]byte{}, z...), "after"...)))
			if err := verifyZstd(br); err != nil {
				t.Fatalf("verifyZstd: %v", err)
			}
			if rest, _ := br.Peek(8); string(rest) != "after" {
				t.Fatalf("left the reader at %q, want just past the frame", rest)
			}
			for n := 0; n < len(z); n++ {
				err := verifyZstd(bufio.NewReader(bytes.NewReader(z[:n])))
				if !errors.Is(err, ErrBadInitrd) || !strings.Contains(err.Error(), "truncated") {
					t.Fatalf("frame cut to %d of %d bytes: %v, want truncated", n, len(z), err)
				}
			}
			// As an initrd: Debian's layout (an early cpio, then the
			// compressed one), two frames back to back, padding after.
			for _, b := range [][]byte{z, append(append([]byte{}, early...), z...), append(append(append([]byte{}, z...), z...), 0, 0, 0, 0)} {
				note, err := verifyInitrd(bytes.NewReader(b))
				if err != nil || note != "" {
					t.Fatalf("verifyInitrd = %q, %v", note, err)
				}
			}
			for _, tc := range []struct {
				name string
				b    []byte
				want string
			}{
				{"cut after the early cpio", append(append([]byte{}, early...), z[:len(z)/2]...), "truncated"},
				{"garbage after the frame", append(append([]byte{}, z...), "junk"...), "invalid magic"},
				// The kernel's unpacker knows no skippable frame.
				{"skippable frame after it", append(append([]byte{}, z...), 0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0), "invalid magic"},
			} {
				if _, err := verifyInitrd(bytes.NewReader(tc.b)); !errors.Is(err, ErrBadInitrd) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
				}
			}
		})
	}
}

func blockHeader(last bool, typ, size int) []byte {
	h := size<<3 | typ<<1
	if last {
		h |= 1
	}
	return []byte{byte(h), byte(h >> 8), byte(h >> 16)}
}

// TestVerifyZstdHeaders: frame and block headers that cannot be.
func TestVerifyZstdHeaders(t *testing.T) {
	magic := []byte{0x28, 0xb5, 0x2f, 0xfd}
	frame := func(fhd byte, rest ...byte) []byte { return append(append(append([]byte{}, magic...), fhd), rest...) }
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		// Single segment, 1-byte content size 0, one last raw block of 0 bytes.
		{"empty frame", frame(0x20, 0, 0x01, 0, 0), ""},
		{"reserved header bit", frame(0x28, 0, 0x01, 0, 0), "reserved bit"},
		{"reserved block type", frame(0x20, 0, 0x07, 0, 0), "reserved block type"},
		{"block too large", frame(0x20, append([]byte{0}, blockHeader(true, 0, zstdMaxBlock+1)...)...), "more than a block holds"},
		{"RLE block: one byte", frame(0x20, 0, 0x03|8<<3, 0, 0, 'x'), ""},
		{"checksum missing", frame(0x24, 0, 0x01, 0, 0), "truncated"},
		{"checksum there", frame(0x24, 0, 0x01, 0, 0, 1, 2, 3, 4), ""},
		{"window descriptor and 8-byte size", frame(0xc0, 0x58, 1, 2, 3, 4, 5, 6, 7, 8, 0x01, 0, 0), ""},
		{"not the last block, then nothing", frame(0x20, 0, 0x00, 0, 0), "truncated"},
	} {
		err := verifyZstd(bufio.NewReader(bytes.NewReader(tc.b)))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (!errors.Is(err, ErrBadInitrd) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// FuzzVerifyInitrd feeds the initrd walker arbitrary bytes (seeded with
// cpio, gzip and the zstd files): it must never panic, and whatever it
// refuses it refuses as ErrBadInitrd.
func FuzzVerifyInitrd(f *testing.F) {
	main := cpioArchive(map[string]string{"init": "#!/bin/sh\n"})
	f.Add(main)
	f.Add(gzipped(main))
	paths, _ := filepath.Glob("testdata/zstd/*.zst")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil && len(b) < 4096 {
			f.Add(append(append([]byte{}, main...), b...))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := verifyInitrd(bytes.NewReader(b)); err != nil && !errors.Is(err, ErrBadInitrd) {
			t.Fatalf("verifyInitrd: %v, not ErrBadInitrd", err)
		}
	})
}
