package kexec

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Limits luod puts on what it hands to kexec_file_load. The kernel itself
// reads both files whole into memory; an image past these is almost
// certainly the wrong file.
const (
	MaxKernelSize = 256 << 20
	MaxInitrdSize = 2 << 30
)

// ErrNotKernel is returned by Inspect for a file that is no kernel image
// kexec_file_load accepts on any architecture luod supports.
var ErrNotKernel = errors.New("not a kernel image")

// ErrWrongArch is returned by Image.CheckArch for an image built for
// another architecture than the running one.
var ErrWrongArch = errors.New("kernel image is for another architecture")

// ErrNotLoadable is returned by Image.CheckArch for a kernel of the right
// architecture in a format the kernel's kexec_file_load does not take: on
// arm64 (Linux 7.2, arch/arm64/kernel/kexec_image.c) only a plain Image is
// loaded, not an EFI zboot image.
var ErrNotLoadable = errors.New("kernel image format not loadable by kexec_file_load")

// ErrNoLiveUpdate is returned by CheckConfig when the target kernel's
// config shows it cannot take over preserved sessions.
var ErrNoLiveUpdate = errors.New("target kernel lacks live update support")

// Image describes a kernel image from its header.
type Image struct {
	// Arch is the Go architecture name the image runs on: amd64 or arm64.
	Arch string `json:"arch"`
	// Format is "bzImage" (x86 boot protocol), "Image" (arm64) or
	// "zboot" (arm64 EFI zboot, a compressed Image).
	Format string `json:"format"`
	// Release is the kernel release the image names, when it does
	// (x86 bzImage headers point at their version string).
	Release string `json:"release,omitempty"`
	// Size is the file size in bytes.
	Size int64 `json:"size"`
	// SHA256 is the hex SHA-256 of the whole file, set by InspectFile.
	SHA256 string `json:"sha256,omitempty"`
}

// Inspect reads the header of a kernel image of size bytes.
//
//   - x86 bzImage: "HdrS" at 0x202 (Documentation/arch/x86/boot.rst); the
//     u16 at 0x20e is the offset, minus 0x200, of its version string.
//   - arm64 Image: magic "ARM\x64" at 0x38 (Documentation/arch/arm64/booting.rst).
//   - arm64 EFI zboot: "MZ" then "zimg" at 4 (drivers/firmware/efi/libstub/zboot-header.S).
func Inspect(r io.ReaderAt, size int64) (*Image, error) {
	return inspect(r, size, io.NewSectionReader(r, 0, size))
}

// inspect is Inspect with body reading r from its start: an arm64 Image's
// banner is looked for in what body reads.
func inspect(r io.ReaderAt, size int64, body io.Reader) (*Image, error) {
	hdr := make([]byte, 0x240)
	n, err := r.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	hdr = hdr[:n]
	img := &Image{Size: size}
	switch {
	case len(hdr) >= 0x210 && string(hdr[0x202:0x206]) == "HdrS":
		img.Arch, img.Format = "amd64", "bzImage"
		// The kernel's bzImage loader does not check that the payload is
		// all there (seen in the VM: 64 KiB of a bzImage loads, and the
		// machine would die at reboot). The header says how long it is:
		// (setup_sects+1) sectors of setup, then syssize 16-byte units.
		setup := int64(hdr[0x1f1])
		if setup == 0 {
			setup = 4
		}
		want := (setup+1)*512 + int64(binary.LittleEndian.Uint32(hdr[0x1f4:]))*16
		if size < want {
			return nil, fmt.Errorf("%w: truncated bzImage: %d bytes, its header says %d", ErrNotKernel, size, want)
		}
		if off := int64(binary.LittleEndian.Uint16(hdr[0x20e:])); off != 0 && off+0x200 < size {
			v := make([]byte, 128)
			m, _ := r.ReadAt(v, off+0x200)
			s := string(v[:m])
			if i := strings.IndexByte(s, 0); i >= 0 {
				s = s[:i]
			}
			if f := strings.Fields(s); len(f) > 0 {
				img.Release = f[0]
			}
		}
	case len(hdr) >= 0x40 && string(hdr[0x38:0x3c]) == "ARM\x64":
		img.Arch, img.Format = "arm64", "Image"
		// The arm64 loader refuses image_size 0 (an Image older than 3.17)
		// with a bare EINVAL: say why here.
		if binary.LittleEndian.Uint64(hdr[0x10:]) == 0 {
			return nil, fmt.Errorf("%w: arm64 Image with image_size 0 (older than Linux 3.17): kexec_file_load refuses it", ErrNotKernel)
		}
		// An arm64 Image has no version in its header, but it is not
		// compressed: the kernel's linux_banner is in it as plain text.
		if size <= MaxKernelSize {
			img.Release = bannerRelease(body)
		}
	case len(hdr) >= 8 && string(hdr[0:2]) == "MZ" && string(hdr[4:8]) == "zimg":
		img.Arch, img.Format = "arm64", "zboot"
	case len(hdr) >= 2 && hdr[0] == 0x1f && hdr[1] == 0x8b:
		return nil, fmt.Errorf("%w: a gzip-compressed file (an arm64 vmlinuz is often a gzipped Image): kexec_file_load needs it uncompressed", ErrNotKernel)
	default:
		return nil, fmt.Errorf("%w: no x86 bzImage (HdrS at 0x202) or arm64 Image (ARM\\x64 at 0x38) header", ErrNotKernel)
	}
	if size > MaxKernelSize {
		return nil, fmt.Errorf("%s of %d bytes is over luod's limit of %d bytes", img.Format, size, MaxKernelSize)
	}
	return img, nil
}

// InspectFile inspects an open kernel image file, which must be a regular
// file, and takes its SHA256, reading the file once: an arm64 Image's
// banner is looked for in the same pass.
func InspectFile(f *os.File) (*Image, error) { return inspectFile(f, true) }

// InspectFileNoHash is InspectFile without the SHA256, for a look at the
// image that does not read all of it (luoctl's, for the release).
func InspectFileNoHash(f *os.File) (*Image, error) { return inspectFile(f, false) }

func inspectFile(f *os.File, hash bool) (*Image, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrNotKernel, f.Name())
	}
	var img *Image
	read := func(body io.Reader) (err error) {
		img, err = inspect(f, fi.Size(), body)
		return err
	}
	var sum string
	if hash {
		sum, err = hashWhile(f, fi.Size(), read)
	} else {
		err = read(io.NewSectionReader(f, 0, fi.Size()))
	}
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", f.Name(), err)
	}
	img.SHA256 = sum
	return img, nil
}

// hashWhile has read read f (size bytes) from its start, reads the rest
// of it after read returns, and returns the hex SHA-256 of all of it: one
// pass over the file for both.
func hashWhile(f *os.File, size int64, read func(body io.Reader) error) (string, error) {
	h := sha256.New()
	body := io.TeeReader(io.NewSectionReader(f, 0, size), h)
	if err := read(body); err != nil {
		return "", err
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// bannerRelease finds "Linux version RELEASE " (init/version.c's
// linux_banner) in an uncompressed image read from r and returns RELEASE,
// or "". It stops reading where it finds it.
func bannerRelease(r io.Reader) string {
	const marker = "Linux version "
	const keep = len(marker) + 128 // a banner cut by a chunk edge is read again
	buf := make([]byte, 1<<20)
	kept := 0 // bytes at the start of buf kept from the last chunk
	for {
		n, err := io.ReadFull(r, buf[kept:])
		chunk := buf[:kept+n]
		for i := 0; ; {
			j := bytes.Index(chunk[i:], []byte(marker))
			if j < 0 {
				break
			}
			rest := chunk[i+j+len(marker):]
			// The banner's release starts with a digit; printk formats
			// ("Linux version %s") do not.
			if len(rest) > 0 && rest[0] >= '0' && rest[0] <= '9' {
				if k := bytes.IndexAny(rest, " \x00"); k > 0 {
					return string(rest[:k])
				}
			}
			i += j + len(marker)
		}
		if err != nil {
			return ""
		}
		kept = copy(buf, chunk[len(chunk)-keep:])
	}
}

// CheckArch refuses an image for another architecture than goarch.
func (img *Image) CheckArch(goarch string) error {
	if img.Arch != goarch {
		return fmt.Errorf("%w: a %s %s cannot be kexec'd on %s", ErrWrongArch, img.Arch, img.Format, goarch)
	}
	if img.Format == "zboot" {
		return fmt.Errorf("%w: an arm64 EFI zboot image; arm64's kexec_file_load takes only the plain Image (arch/arm64/boot/Image)", ErrNotLoadable)
	}
	return nil
}

// Initrd is what CheckInitrd found in an initrd.
type Initrd struct {
	// Note names what could not be verified, if anything.
	Note string
	// SHA256 is the hex SHA-256 of the whole file.
	SHA256 string
}

// CheckInitrd refuses an initrd that is no regular file, is empty, is
// over MaxInitrdSize, or that the new kernel could not unpack (truncated,
// corrupt, no cpio: see verifyInitrd); the kernel's loader takes all of
// these and the new kernel would panic with the sessions. It takes the
// file's SHA256 in the same pass.
func CheckInitrd(f *os.File) (Initrd, error) {
	fi, err := f.Stat()
	switch {
	case err != nil:
		return Initrd{}, fmt.Errorf("initrd %s: %w", f.Name(), err)
	case !fi.Mode().IsRegular():
		return Initrd{}, fmt.Errorf("initrd %s is not a regular file", f.Name())
	case fi.Size() == 0:
		return Initrd{}, fmt.Errorf("initrd %s is empty", f.Name())
	case fi.Size() > MaxInitrdSize:
		return Initrd{}, fmt.Errorf("initrd %s of %d bytes is over luod's limit of %d bytes", f.Name(), fi.Size(), int64(MaxInitrdSize))
	}
	var note string
	sum, err := hashWhile(f, fi.Size(), func(body io.Reader) (err error) {
		note, err = verifyInitrd(body)
		return err
	})
	if err != nil {
		return Initrd{}, fmt.Errorf("initrd %s: %w", f.Name(), err)
	}
	if note != "" {
		note = "initrd " + f.Name() + ": " + note
	}
	return Initrd{Note: note, SHA256: sum}, nil
}

// FindConfig looks beside a kernel image for its build config: the Debian
// layout config-RELEASE (with RELEASE from the image or from a
// vmlinuz-RELEASE name), then a plain "config". It returns "" if none.
func FindConfig(kernelPath, release string) string {
	dir := filepath.Dir(kernelPath)
	var names []string
	if release != "" {
		names = append(names, "config-"+release)
	}
	if base := filepath.Base(kernelPath); strings.HasPrefix(base, "vmlinuz-") {
		names = append(names, "config-"+strings.TrimPrefix(base, "vmlinuz-"))
	}
	names = append(names, "config")
	for _, n := range names {
		p := filepath.Join(dir, n)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// CheckConfig reads a kernel .config and refuses one that cannot take
// sessions over: CONFIG_LIVEUPDATE and CONFIG_KEXEC_HANDOVER must be y,
// and CONFIG_LIVEUPDATE_MEMFD is needed for memfds.
func CheckConfig(r io.Reader) error {
	want := map[string]bool{"CONFIG_LIVEUPDATE": false, "CONFIG_KEXEC_HANDOVER": false, "CONFIG_LIVEUPDATE_MEMFD": false}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	lines := 0
	for sc.Scan() {
		lines++
		line := bytes.TrimSpace(sc.Bytes())
		k, v, ok := strings.Cut(string(line), "=")
		if !ok {
			continue
		}
		if _, ok := want[k]; ok && v == "y" {
			want[k] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading kernel config: %w", err)
	}
	if lines == 0 {
		return fmt.Errorf("kernel config is empty")
	}
	var missing []string
	for _, k := range []string{"CONFIG_LIVEUPDATE", "CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE_MEMFD"} {
		if !want[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: config lacks %s=y", ErrNoLiveUpdate, strings.Join(missing, "=y, "))
	}
	return nil
}
