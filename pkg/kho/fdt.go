package kho

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/u-root/u-root/pkg/dt"
)

// FDT layout, from the Devicetree Specification, chapter 5.
const (
	fdtMagic      uint32 = 0xd00dfeed
	fdtHeaderSize        = 40 // ten big-endian u32, version 17
	fdtRsvEntry          = 16 // struct fdt_reserve_entry: two big-endian u64

	fdtBeginNode = 0x1
	fdtEndNode   = 0x2
	fdtProp      = 0x3
	fdtNop       = 0x4
	fdtEnd       = 0x9
)

// Limits beyond the FDT format, taken before handing a blob to u-root's
// parser: it builds node names one byte at a time and searches the strings
// block for the end of every property name, so long names make it
// quadratic. KHO's FDTs are two levels deep with short names, and the
// Devicetree specification limits node and property names to 31
// characters.
const (
	maxNameLen   = 256
	maxNodeDepth = 64
)

// isFDT reports whether b starts with the FDT magic.
func isFDT(b []byte) bool {
	return len(b) >= 4 && binary.BigEndian.Uint32(b) == fdtMagic
}

// readFDT validates b as an FDT and parses it with u-root's dt, returning
// the root node. Bytes past the header's totalsize are ignored: the kernel
// may hand over a whole page holding a smaller FDT.
func readFDT(blob string, b []byte) (*dt.Node, error) {
	if len(b) > MaxBlobSize {
		return nil, oversized(blob, len(b))
	}
	size, err := checkFDT(blob, b)
	if err != nil {
		return nil, err
	}
	return parseFDT(blob, b[:size])
}

// checkFDT validates the header and walks the structure block of the FDT
// in b, so that u-root's dt.ReadFDT, which trusts the header's sizes and
// allocates property values before reading them, only sees consistent
// input. It returns the FDT's totalsize.
func checkFDT(blob string, b []byte) (int, error) {
	if len(b) < fdtHeaderSize {
		return 0, truncated(blob, "FDT header", len(b), fdtHeaderSize, len(b))
	}
	be := func(i int) uint32 { return binary.BigEndian.Uint32(b[4*i:]) }
	var (
		magic       = be(0)
		totalSize   = be(1)
		offStruct   = be(2)
		offStrings  = be(3)
		offRsvmap   = be(4)
		version     = be(5)
		lastComp    = be(6)
		sizeStrings = be(8)
		sizeStruct  = be(9)
	)
	if magic != fdtMagic {
		return 0, malformed(blob, "magic", 0, "%#08x, want %#08x", magic, fdtMagic)
	}
	if version < 17 || lastComp > 17 {
		return 0, malformed(blob, "version", 20, "version %d, last compatible %d; want 17", version, lastComp)
	}
	if totalSize < fdtHeaderSize {
		return 0, malformed(blob, "totalsize", 4, "%d, smaller than the header", totalSize)
	}
	if uint64(totalSize) > uint64(len(b)) {
		return 0, &DecodeError{Blob: blob, Offset: 4, Field: "totalsize", Err: ErrTruncated,
			Reason: fmt.Sprintf("header says %d bytes, have %d", totalSize, len(b))}
	}
	// From here on every offset and size is checked against totalSize, which
	// fits in an int because it is at most len(b).
	end := func(off, size uint32) uint64 { return uint64(off) + uint64(size) }
	if offRsvmap < fdtHeaderSize || offRsvmap%8 != 0 || offRsvmap >= totalSize {
		return 0, malformed(blob, "off_mem_rsvmap", 16, "%d, want an 8-byte aligned offset in [%d, %d)", offRsvmap, fdtHeaderSize, totalSize)
	}
	if offStruct%4 != 0 || end(offStruct, sizeStruct) > uint64(totalSize) {
		return 0, malformed(blob, "off_dt_struct", 8, "struct block [%d, +%d) is unaligned or runs past totalsize %d", offStruct, sizeStruct, totalSize)
	}
	if end(offStrings, sizeStrings) > uint64(totalSize) {
		return 0, malformed(blob, "off_dt_strings", 12, "strings block [%d, +%d) runs past totalsize %d", offStrings, sizeStrings, totalSize)
	}
	// The memory reservation block is a list of entries ended by a zero
	// entry, all before the structure block.
	for off := int(offRsvmap); ; off += fdtRsvEntry {
		if off+fdtRsvEntry > int(offStruct) {
			return 0, malformed(blob, "memory reservation block", off, "no terminating entry before the struct block at %d", offStruct)
		}
		if binary.BigEndian.Uint64(b[off:]) == 0 && binary.BigEndian.Uint64(b[off+8:]) == 0 {
			break
		}
	}
	structs := b[offStruct : offStruct+sizeStruct]
	strs := b[offStrings : offStrings+sizeStrings]
	if err := checkStruct(blob, structs, int(offStruct), strs); err != nil {
		return 0, err
	}
	return int(totalSize), nil
}

// checkStruct walks the tokens of the structure block s, which starts at
// offset base in the blob, checking that every name, property and padding
// lies within s and that nodes nest properly.
func checkStruct(blob string, s []byte, base int, strs []byte) error {
	const field = "struct block"
	depth, roots := 0, 0
	for pos := 0; ; {
		at := base + pos
		if len(s)-pos < 4 {
			return malformed(blob, field, at, "ends without FDT_END")
		}
		tok := binary.BigEndian.Uint32(s[pos:])
		pos += 4
		switch tok {
		case fdtBeginNode:
			n := bytes.IndexByte(s[pos:], 0)
			if n < 0 {
				return malformed(blob, "node name", at, "not NUL-terminated in the struct block")
			}
			if n > maxNameLen {
				return malformed(blob, "node name", at, "%d bytes long, limit is %d", n, maxNameLen)
			}
			if i := bytes.IndexFunc(s[pos:pos+n], notPrintableASCII); i >= 0 {
				return malformed(blob, "node name", at, "byte %#02x at %d is not printable ASCII", s[pos+i], i)
			}
			if depth == 0 {
				if roots++; roots > 1 {
					return malformed(blob, field, at, "more than one root node")
				}
			}
			if depth++; depth > maxNodeDepth {
				return malformed(blob, field, at, "nodes nested deeper than %d", maxNodeDepth)
			}
			pos = align4(pos + n + 1)
		case fdtEndNode:
			if depth == 0 {
				return malformed(blob, field, at, "FDT_END_NODE without FDT_BEGIN_NODE")
			}
			depth--
		case fdtProp:
			if len(s)-pos < 8 {
				return malformed(blob, "property", at, "header runs past the struct block")
			}
			plen, nameoff := binary.BigEndian.Uint32(s[pos:]), binary.BigEndian.Uint32(s[pos+4:])
			pos += 8
			if depth == 0 {
				return malformed(blob, "property", at, "outside any node")
			}
			if uint64(nameoff) >= uint64(len(strs)) {
				return malformed(blob, "property", at, "name offset %d outside the %d-byte strings block", nameoff, len(strs))
			}
			if bytes.IndexByte(strs[nameoff:min(len(strs), int(nameoff)+maxNameLen+1)], 0) < 0 {
				return malformed(blob, "property name", at, "at strings offset %d not NUL-terminated within %d bytes", nameoff, maxNameLen)
			}
			if uint64(plen) > uint64(len(s)-pos) {
				return malformed(blob, "property", at, "%d-byte value runs past the struct block", plen)
			}
			pos = align4(pos + int(plen))
		case fdtNop:
		case fdtEnd:
			if depth != 0 || roots == 0 {
				return malformed(blob, field, at, "FDT_END with %d unclosed nodes, %d root nodes", depth, roots)
			}
			if pos != len(s) {
				return malformed(blob, field, at, "%d bytes after FDT_END", len(s)-pos)
			}
			return nil
		default:
			return malformed(blob, field, at, "unknown token %#x", tok)
		}
		if pos > len(s) {
			return malformed(blob, field, at, "padding runs past the struct block")
		}
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

// notPrintableASCII reports whether r may not appear in a node name. The
// Devicetree specification allows only ASCII letters, digits and ",._+-@"
// in node names; this check is looser but required, because u-root builds
// names with string(byte), turning each byte >= 0x80 into a two-byte UTF-8
// rune.
func notPrintableASCII(r rune) bool { return r < 0x20 || r > 0x7e }

// parseFDT parses an FDT already validated by checkFDT.
func parseFDT(blob string, b []byte) (root *dt.Node, err error) {
	// u-root's dt is not written for hostile input (its own layout check has
	// a TODO). checkFDT rejects everything known to make it misbehave; this
	// recover turns any panic left into a DecodeError rather than bringing
	// the daemon down.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, malformed(blob, "FDT", -1, "u-root dt panicked: %v", r)
		}
	}()
	// One spare byte: u-root reads the strings block with a single Read,
	// which fails with io.EOF on an empty block at the very end of the input.
	fdt, err := dt.ReadFDT(bytes.NewReader(append(b[:len(b):len(b)], 0)))
	if err != nil {
		return nil, &DecodeError{Blob: blob, Offset: -1, Field: "FDT", Err: fmt.Errorf("%w: %w", ErrMalformed, err)}
	}
	return fdt.RootNode, nil
}

// u64Prop returns the u64 property name of node n, whose path is used in
// errors. The kernel writes it in CPU byte order with fdt_setprop, which is
// little-endian on every KHO architecture, not as big-endian FDT cells.
func u64Prop(blob, path string, n *dt.Node, name string) (uint64, error) {
	field := propPath(path, name)
	p, ok := n.LookProperty(name)
	if !ok {
		return 0, malformed(blob, field, -1, "missing")
	}
	if len(p.Value) != 8 {
		return 0, malformed(blob, field, -1, "%d bytes, want an 8-byte u64 in CPU (little-endian) byte order", len(p.Value))
	}
	return binary.LittleEndian.Uint64(p.Value), nil
}

func propPath(path, name string) string {
	return strings.TrimSuffix(path, "/") + "/" + name
}

// compatibles returns the string list of n's compatible property.
func compatibles(n *dt.Node) []string {
	p, ok := n.LookProperty("compatible")
	if !ok {
		return nil
	}
	list := strings.Split(string(p.Value), "\x00")
	if len(list) > 0 && list[len(list)-1] == "" {
		list = list[:len(list)-1]
	}
	return list
}

// matchCompatible returns the first of want that n is compatible with,
// like fdt_node_check_compatible, and whether there is one.
func matchCompatible(n *dt.Node, want ...string) (string, bool) {
	for _, c := range compatibles(n) {
		for _, w := range want {
			if c == w {
				return c, true
			}
		}
	}
	return "", false
}

// describeCompatible names a compatible string list in errors, shortened
// so that a crafted blob cannot make the message huge.
func describeCompatible(list []string) string {
	const maxStrings, maxLen = 4, 64
	if len(list) == 0 {
		return "an FDT without compatible property"
	}
	var q []string
	for i, c := range list {
		if i == maxStrings {
			q = append(q, fmt.Sprintf("and %d more", len(list)-i))
			break
		}
		if len(c) > maxLen {
			q = append(q, fmt.Sprintf("%q...", c[:maxLen]))
			continue
		}
		q = append(q, fmt.Sprintf("%q", c))
	}
	return "FDT compatible " + strings.Join(q, ", ")
}

// describeBytes names the first bytes of b, for errors about blobs of no
// recognizable format.
func describeBytes(b []byte) string {
	if len(b) == 0 {
		return "an empty blob"
	}
	head := b[:min(len(b), 16)]
	return fmt.Sprintf("%d bytes starting % x (%q)", len(b), head, head)
}
