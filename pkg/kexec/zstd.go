package kexec

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// zstd frame layout (RFC 8878, section 3.1), as much of it as a walker
// needs to find where a frame ends.
const (
	zstdMagic    = 0xFD2FB528
	zstdMaxBlock = 128 << 10 // Block_Maximum_Size
)

// verifyZstd walks one zstd frame at br, as the kernel's unpacker takes
// it (init/initramfs.c hands lib/decompress_unzstd.c one frame, then goes
// on with the bytes after it: another frame, padding, a cpio archive;
// a skippable frame it refuses as an unknown magic, and so does
// walkArchives). It checks the frame header, every block header and block
// size, the last-block mark and the content checksum's place, and leaves
// br just past the frame. It does not decompress: a zstd decoder's tables
// would cost every luod start, and the kernel's own decoder runs at boot.
// What it catches is what an interrupted copy, a full disk or a wrong
// file leaves: a frame cut short, a block header that cannot be. A bit
// flipped inside a compressed block passes; the kernel would find it.
func verifyZstd(br *bufio.Reader) error {
	var h [5]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return zstdErr(err)
	}
	if m := binary.LittleEndian.Uint32(h[:4]); m != zstdMagic {
		return fmt.Errorf("%w: zstd: bad magic %#08x", ErrBadInitrd, m)
	}
	fhd := h[4]
	if fhd&0x08 != 0 {
		return fmt.Errorf("%w: zstd: reserved bit set in the frame header", ErrBadInitrd)
	}
	// Window descriptor (absent for a single segment), dictionary id,
	// frame content size (one byte at least for a single segment).
	n := []int{0, 1, 2, 4}[fhd&3] + []int{0, 2, 4, 8}[fhd>>6]
	if fhd&0x20 == 0 || fhd>>6 == 0 {
		n++
	}
	if _, err := br.Discard(n); err != nil {
		return zstdErr(err)
	}
	for block := 0; ; block++ {
		if _, err := io.ReadFull(br, h[:3]); err != nil {
			return zstdErr(err)
		}
		bh := uint32(h[0]) | uint32(h[1])<<8 | uint32(h[2])<<16
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		switch {
		case typ == 3:
			return fmt.Errorf("%w: zstd block %d: reserved block type", ErrBadInitrd, block)
		case size > zstdMaxBlock:
			return fmt.Errorf("%w: zstd block %d: %d bytes, more than a block holds", ErrBadInitrd, block, size)
		case typ == 1: // RLE: one byte, repeated size times
			size = 1
		}
		if _, err := br.Discard(size); err != nil {
			return zstdErr(err)
		}
		if last {
			break
		}
	}
	if fhd&0x04 != 0 { // Content_Checksum_flag
		if _, err := br.Discard(4); err != nil {
			return zstdErr(err)
		}
	}
	return nil
}

func zstdErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated: the zstd frame ends early", ErrBadInitrd)
	}
	return fmt.Errorf("%w: zstd: %v", ErrBadInitrd, err)
}
