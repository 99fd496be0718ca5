package kexec

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ErrBadInitrd is returned by CheckInitrd for an initrd the new kernel
// could not unpack.
var ErrBadInitrd = errors.New("initrd the new kernel could not unpack")

// compressions the kernel's initramfs unpacker recognizes by magic
// (lib/decompress.c); luod verifies gzip whole, walks zstd frames and
// names the others.
var compressions = []struct {
	magic []byte
	name  string
}{
	{[]byte{0x1f, 0x8b}, "gzip"},
	{[]byte{0x28, 0xb5, 0x2f, 0xfd}, "zstd"},
	{[]byte{0xfd, '7', 'z', 'X', 'Z', 0}, "xz"},
	{[]byte{0x02, 0x21, 0x4c, 0x18}, "lz4"},
	{[]byte("BZh"), "bzip2"},
	{[]byte{0x5d, 0}, "lzma"},
	{[]byte{0x89, 'L', 'Z', 'O'}, "lzo"},
}

// verifyInitrd walks an initrd as the kernel's unpacker does
// (init/initramfs.c, unpack_to_rootfs): newc cpio archives, zero padding
// and compressed streams holding the same, one after another. A kernel
// that boots with an initrd it cannot unpack has no /init and panics, and
// every preserved session is gone with it; kexec_file_load itself never
// looks inside. gzip streams are decompressed and checked whole (CRC and
// length included); zstd frames (Debian's default) are walked block by
// block without decompressing (verifyZstd); another compression is
// reported in the returned note, and what follows it is not checked.
func verifyInitrd(r io.Reader) (note string, err error) {
	br := bufio.NewReader(r)
	archives, err := walkArchives(br, func(byte) (bool, error) {
		head, _ := br.Peek(6)
		name := ""
		for _, c := range compressions {
			if bytes.HasPrefix(head, c.magic) {
				name = c.name
				break
			}
		}
		switch name {
		case "":
			return false, fmt.Errorf("%w: invalid magic %q at the start of an archive", ErrBadInitrd, head)
		case "gzip":
			return false, verifyGzip(br)
		case "zstd":
			return false, verifyZstd(br)
		}
		note = fmt.Sprintf("%s-compressed part not verified (luod checks gzip, zstd frames and plain cpio)", name)
		return true, nil
	})
	switch {
	case err != nil:
		return "", err
	case note == "" && archives == 0:
		return "", fmt.Errorf("%w: no cpio archive in it", ErrBadInitrd)
	}
	return note, nil
}

// verifyGzip decompresses one gzip stream of cpio archives from br and
// leaves br just past it.
func verifyGzip(br *bufio.Reader) error {
	z, err := gzip.NewReader(br) // br is a flate.Reader: nothing is read past the stream
	if err != nil {
		return fmt.Errorf("%w: gzip header: %v", ErrBadInitrd, err)
	}
	z.Multistream(false)
	n, err := walkArchives(bufio.NewReader(z), func(b byte) (bool, error) {
		return false, fmt.Errorf("%w: the gzip stream holds no cpio archive (byte %#x)", ErrBadInitrd, b)
	})
	switch {
	case errors.Is(err, ErrBadInitrd):
		return fmt.Errorf("in its gzip stream: %w", err)
	case err != nil:
		return gzipErr(err)
	case n == 0:
		return fmt.Errorf("%w: the gzip stream holds no cpio archive", ErrBadInitrd)
	}
	return nil
}

// walkArchives reads from br what the kernel's unpacker takes one after
// another: newc cpio archives and the zero padding between them, and at
// any other byte b whatever other reads there, one more archive, until
// EOF or until other says it is done. It returns how many archives it
// read.
func walkArchives(br *bufio.Reader, other func(b byte) (done bool, err error)) (int, error) {
	archives := 0
	for {
		b, err := br.Peek(1)
		if errors.Is(err, io.EOF) {
			return archives, nil
		}
		if err != nil {
			return archives, err
		}
		switch b[0] {
		case 0:
			br.ReadByte()
		case '0':
			if err := readCPIO(br); err != nil {
				return archives, err
			}
			archives++
		default:
			done, err := other(b[0])
			if done || err != nil {
				return archives, err
			}
			archives++
		}
	}
}

func gzipErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: truncated: the gzip stream ends early", ErrBadInitrd)
	}
	return fmt.Errorf("%w: gzip: %v", ErrBadInitrd, err)
}

// readCPIO reads one newc cpio archive (magic 070701 or 070702) up to and
// including its TRAILER!!! entry.
func readCPIO(r *bufio.Reader) error {
	hdr := make([]byte, 110)
	for entries := 0; ; entries++ {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return cpioErr(err, entries)
		}
		if m := string(hdr[:6]); m != "070701" && m != "070702" {
			return fmt.Errorf("%w: cpio entry %d: bad magic %q", ErrBadInitrd, entries, m)
		}
		field := func(i int) (int64, error) {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			return int64(v), err
		}
		size, err1 := field(6)
		nameSize, err2 := field(11)
		if err1 != nil || err2 != nil || nameSize == 0 || nameSize > 4096 {
			return fmt.Errorf("%w: cpio entry %d: bad header", ErrBadInitrd, entries)
		}
		name := make([]byte, nameSize+pad4(110+nameSize))
		if _, err := io.ReadFull(r, name); err != nil {
			return cpioErr(err, entries)
		}
		if string(name[:nameSize]) == "TRAILER!!!\x00" {
			return nil
		}
		if _, err := r.Discard(int(size + pad4(size))); err != nil {
			return cpioErr(err, entries)
		}
	}
}

func pad4(n int64) int64 { return (4 - n%4) % 4 }

func cpioErr(err error, entries int) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated: a cpio archive ends after %d entries, before its TRAILER!!! (%v)", ErrBadInitrd, entries, err)
	}
	return err
}
