package kexec

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func bzImage(release string) []byte {
	b := make([]byte, 0x1000)
	copy(b[0:], "MZ")
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f)
	binary.LittleEndian.PutUint16(b[0x20e:], 0x600)
	copy(b[0x800:], release+" (builder@host) #1 SMP\x00")
	b[0x1f1] = 3                                   // setup_sects: 4 sectors with the boot sector
	binary.LittleEndian.PutUint32(b[0x1f4:], 0x80) // syssize: 2 KiB of payload
	return b
}

func arm64Image() []byte {
	b := make([]byte, 0x1000)
	binary.LittleEndian.PutUint64(b[0x10:], 0x2000) // image_size
	copy(b[0x38:], "ARM\x64")
	return b
}

// arm64Banner is an arm64 Image of size bytes whose linux_banner for
// release sits at off, after a printk format that looks like one.
func arm64Banner(size, off int, release string) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint64(b[0x10:], uint64(size))
	copy(b[0x38:], "ARM\x64")
	copy(b[0x100:], "Linux version %s\x00")
	copy(b[off:], "Linux version "+release+" (builder@host) (gcc) #1 SMP\x00")
	return b
}

func TestInspect(t *testing.T) {
	zboot := make([]byte, 0x100)
	copy(zboot, "MZ\x00\x00zimg")
	for _, tc := range []struct {
		name    string
		data    []byte
		arch    string
		format  string
		release string
		err     error
	}{
		{"bzImage", bzImage("7.3.4-luod"), "amd64", "bzImage", "7.3.4-luod", nil},
		{"arm64 Image", arm64Image(), "arm64", "Image", "", nil},
		{"arm64 Image with banner", arm64Banner(0x3000, 0x2000, "7.2.13"), "arm64", "Image", "7.2.13", nil},
		{"arm64 banner across a read chunk", arm64Banner(3<<20, 1<<20-20, "7.3.4-arm64"), "arm64", "Image", "7.3.4-arm64", nil},
		{"arm64 zboot", zboot, "arm64", "zboot", "", nil},
		{"arm64 Image older than 3.17", func() []byte { b := arm64Image(); b[0x11] = 0; return b }(), "", "", "", ErrNotKernel},
		{"gzipped arm64 Image", []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}, "", "", "", ErrNotKernel},
		{"text file", []byte("#!/bin/sh\necho not a kernel\n"), "", "", "", ErrNotKernel},
		{"truncated bzImage", bzImage("7.3.4")[:0x900], "", "", "", ErrNotKernel},
		{"empty", nil, "", "", "", ErrNotKernel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Inspect(bytes.NewReader(tc.data), int64(len(tc.data)))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Inspect = %v, %v; want %v", img, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Arch != tc.arch || img.Format != tc.format || img.Release != tc.release {
				t.Errorf("Inspect = %+v, want %s %s %q", img, tc.arch, tc.format, tc.release)
			}
		})
	}
}

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestInspectFileSHA256: the digest covers the whole file, whether the
// header was enough or the banner scan stopped part way.
func TestInspectFileSHA256(t *testing.T) {
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"bzImage":         bzImage("7.3.4-luod"),
		"arm64 banner":    arm64Banner(3<<20, 1<<20-20, "7.3.4-arm64"),
		"arm64 no banner": arm64Banner(3<<20, 0x100, "x"),
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := InspectFile(mustOpen(t, p))
		if err != nil {
			t.Fatal(err)
		}
		if img.SHA256 != sha256Hex(b) {
			t.Errorf("%s: SHA256 %s, want %s", name, img.SHA256, sha256Hex(b))
		}
	}
}

// TestInspectFileNoHash: the same image as InspectFile's, no digest, and
// a file that is not regular refused alike.
func TestInspectFileNoHash(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(p, bzImage("7.3.4-luod"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := InspectFileNoHash(mustOpen(t, p))
	if err != nil {
		t.Fatal(err)
	}
	if img.Release != "7.3.4-luod" || img.SHA256 != "" {
		t.Errorf("InspectFileNoHash = %+v, want release 7.3.4-luod and no digest", img)
	}
	for _, inspect := range []func(*os.File) (*Image, error){InspectFile, InspectFileNoHash} {
		if _, err := inspect(mustOpen(t, dir)); !errors.Is(err, ErrNotKernel) || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("inspecting a directory = %v, want ErrNotKernel, not a regular file", err)
		}
	}
}

func TestInspectTooLarge(t *testing.T) {
	b := bzImage("7.2")
	_, err := Inspect(bytes.NewReader(b), MaxKernelSize+1)
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("Inspect of an oversized image = %v, want a limit error", err)
	}
}

func TestCheckArch(t *testing.T) {
	img := &Image{Arch: "amd64", Format: "bzImage"}
	if err := img.CheckArch("amd64"); err != nil {
		t.Error(err)
	}
	err := img.CheckArch("arm64")
	if !errors.Is(err, ErrWrongArch) || !strings.Contains(err.Error(), "bzImage") {
		t.Errorf("CheckArch(arm64) = %v, want ErrWrongArch naming the bzImage", err)
	}
	arm := &Image{Arch: "arm64", Format: "Image"}
	if err := arm.CheckArch("amd64"); !errors.Is(err, ErrWrongArch) {
		t.Errorf("arm64 Image on amd64: %v, want ErrWrongArch", err)
	}
	if err := arm.CheckArch("arm64"); err != nil {
		t.Errorf("arm64 Image on arm64: %v", err)
	}
	zboot := &Image{Arch: "arm64", Format: "zboot"}
	if err := zboot.CheckArch("arm64"); !errors.Is(err, ErrNotLoadable) || !strings.Contains(err.Error(), "plain Image") {
		t.Errorf("arm64 zboot on arm64: %v, want ErrNotLoadable naming the plain Image", err)
	}
}

func TestCheckConfig(t *testing.T) {
	good := "CONFIG_KEXEC_HANDOVER=y\nCONFIG_LIVEUPDATE=y\nCONFIG_LIVEUPDATE_MEMFD=y\n"
	if err := CheckConfig(strings.NewReader(good)); err != nil {
		t.Errorf("good config: %v", err)
	}
	bad := "CONFIG_KEXEC_HANDOVER=y\n# CONFIG_LIVEUPDATE is not set\n"
	err := CheckConfig(strings.NewReader(bad))
	if !errors.Is(err, ErrNoLiveUpdate) || !strings.Contains(err.Error(), "CONFIG_LIVEUPDATE=y") {
		t.Errorf("config without LIVEUPDATE: %v", err)
	}
	if err := CheckConfig(strings.NewReader("")); err == nil {
		t.Error("empty config accepted")
	}
}

func TestFindConfig(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz-7.3.4")
	os.WriteFile(k, bzImage("7.3.4"), 0o644)
	if got := FindConfig(k, "7.3.4"); got != "" {
		t.Errorf("FindConfig with no config = %q", got)
	}
	os.WriteFile(filepath.Join(dir, "config"), []byte("x"), 0o644)
	if got := FindConfig(k, ""); got != filepath.Join(dir, "config") {
		t.Errorf("FindConfig = %q, want the plain config", got)
	}
	os.WriteFile(filepath.Join(dir, "config-7.3.4"), []byte("x"), 0o644)
	if got := FindConfig(k, "7.3.4"); got != filepath.Join(dir, "config-7.3.4") {
		t.Errorf("FindConfig = %q, want config-7.3.4", got)
	}
}

func TestErrorNamesFilesAndErrno(t *testing.T) {
	err := LoadFiles(mustOpen(t, "/dev/null"), nil, "console=ttyS0")
	if err == nil {
		t.Skip("kexec_file_load of /dev/null succeeded?")
	}
	var ke *Error
	if !errors.As(err, &ke) || ke.Kernel != "/dev/null" || !strings.Contains(err.Error(), "/dev/null") {
		t.Errorf("LoadFiles error %v does not name the kernel", err)
	}
}

func TestErrorCarriesKernelLog(t *testing.T) {
	e := &Error{Op: "load", Kernel: "/boot/Image", Err: unix.EBUSY,
		KernelLog: []string{"Can't kexec: CPUs are stuck in the kernel."}}
	want := "kexec load kernel /boot/Image: EBUSY: another kexec load is in progress, or the image cannot be replaced now; the kernel logged: Can't kexec: CPUs are stuck in the kernel."
	if e.Error() != want {
		t.Errorf("Error() = %q\nwant      %q", e.Error(), want)
	}
}

func mustOpen(t *testing.T, p string) *os.File {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// cpioArchive is a newc cpio archive of the given files, with its trailer.
func cpioArchive(files map[string]string) []byte {
	var b bytes.Buffer
	entry := func(name, data string) {
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name + "\x00")
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.WriteString(data)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for name, data := range files {
		entry(name, data)
	}
	entry("TRAILER!!!", "")
	return b.Bytes()
}

func gzipped(b []byte) []byte {
	var out bytes.Buffer
	z := gzip.NewWriter(&out)
	z.Write(b)
	z.Close()
	return out.Bytes()
}

func TestCheckInitrd(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	main := cpioArchive(map[string]string{"init": strings.Repeat("#!/bin/sh\n", 5000), "bin/x": "x"})
	early := cpioArchive(map[string]string{"kernel/x86/microcode/GenuineIntel.bin": "ucode"})
	gz := gzipped(main)
	zstdCut := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 0, 0x00} // a frame header, a block that says more follow
	xzMagic := []byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}
	for _, tc := range []struct {
		name string
		b    []byte
		want string // substring of the error; "" for none
		note string // substring of the note
	}{
		{name: "plain cpio", b: main},
		{name: "gzip cpio", b: gz},
		{name: "early cpio, padding, gzip", b: append(append(append([]byte{}, early...), 0, 0, 0, 0), gz...)},
		{name: "xz named, not verified", b: append(append([]byte{}, early...), xzMagic...), note: "xz-compressed part not verified"},
		{name: "zstd cut short", b: append(append([]byte{}, early...), zstdCut...), want: "truncated: the zstd frame ends early"},
		{name: "empty", b: nil, want: "is empty"},
		{name: "zeros only", b: make([]byte, 512), want: "no cpio archive"},
		{name: "truncated gzip", b: gz[:len(gz)/2], want: "truncated"},
		{name: "gzip without its trailer", b: gz[:len(gz)-4], want: "truncated"},
		{name: "gzip with a bad CRC", b: append(append([]byte{}, gz[:len(gz)-8]...), 0, 0, 0, 0, gz[len(gz)-4], gz[len(gz)-3], gz[len(gz)-2], gz[len(gz)-1]), want: "checksum"},
		{name: "truncated cpio", b: main[:len(main)-200], want: "before its TRAILER!!!"},
		{name: "gzip of no cpio", b: gzipped([]byte("hello")), want: "no cpio archive"},
		{name: "no magic", b: []byte("#!/bin/sh\n"), want: "invalid magic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tc.name, " ", "_")+".img", tc.b)
			in, err := CheckInitrd(mustOpen(t, p))
			note := in.Note
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("CheckInitrd = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p)):
				t.Fatalf("CheckInitrd = %v, want an error naming %s and saying %q", err, p, tc.want)
			case !strings.Contains(note, tc.note) || (tc.note == "") != (note == ""):
				t.Fatalf("note %q, want %q", note, tc.note)
			case err == nil && in.SHA256 != sha256Hex(tc.b):
				t.Fatalf("SHA256 %s, want %s", in.SHA256, sha256Hex(tc.b))
			}
			if err != nil && tc.want != "is empty" && !errors.Is(err, ErrBadInitrd) {
				t.Errorf("%v does not match ErrBadInitrd", err)
			}
		})
	}
	if _, err := CheckInitrd(mustOpen(t, dir)); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as initrd: %v", err)
	}
}

// FuzzInspect feeds Inspect arbitrary kernel images (seeded with every
// format it knows): it must never panic, and whatever it accepts must have
// an architecture and a format it can name.
func FuzzInspect(f *testing.F) {
	zboot := make([]byte, 0x100)
	copy(zboot, "MZ\x00\x00zimg")
	for _, b := range [][]byte{
		bzImage("7.3.4-luod"), bzImage("7.2")[:0x900], arm64Image(),
		arm64Banner(0x3000, 0x2000, "7.2.13"), zboot, {0x1f, 0x8b}, nil,
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := Inspect(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if img.Arch == "" || img.Format == "" || img.Size != int64(len(b)) {
			t.Fatalf("Inspect accepted %d bytes as %+v", len(b), img)
		}
		_ = img.CheckArch("arm64")
		_ = img.CheckArch("amd64")
	})
}
