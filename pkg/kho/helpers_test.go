package kho

import (
	"bytes"
	"encoding/binary"

	"github.com/u-root/u-root/pkg/dt"
)

// This file builds blobs to the kernel's specs, for golden files, error
// tests and fuzz round trips.

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// propU64 is a u64 property as the kernel writes it: fdt_setprop of a CPU
// (little-endian) u64.
func propU64(name string, v uint64) dt.Property { return dt.Property{Name: name, Value: le64(v)} }

// propStrings is a NUL-terminated string list property, such as compatible.
func propStrings(name string, list ...string) dt.Property {
	var v []byte
	for _, s := range list {
		v = append(append(v, s...), 0)
	}
	return dt.Property{Name: name, Value: v}
}

// writeFDT serializes root with u-root, which puts the header, memory
// reservation block (at 48), struct block and strings block back to back
// and fills in all header offsets and sizes itself.
func writeFDT(root *dt.Node) []byte {
	f := &dt.FDT{
		Header:   dt.Header{Magic: dt.Magic, Version: 17, LastCompVersion: 16},
		RootNode: root,
	}
	var buf bytes.Buffer
	if _, err := f.Write(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// libfdtLayout rewrites an FDT from writeFDT into the layout of libfdt's
// fdt_create/fdt_finish, as the kernel writes it: memory reservation block
// right after the 40-byte header. If size is larger than the FDT, zeros
// follow up to size, as in a page-sized blob.
func libfdtLayout(b []byte, size int) []byte {
	const gap = 48 - fdtHeaderSize
	out := append(append([]byte{}, b[:fdtHeaderSize]...), b[48:]...)
	for _, i := range []int{1, 2, 3, 4} { // totalsize, off_dt_struct, off_dt_strings, off_mem_rsvmap
		v := binary.BigEndian.Uint32(out[4*i:])
		binary.BigEndian.PutUint32(out[4*i:], v-gap)
	}
	for len(out) < size {
		out = append(out, 0)
	}
	return out
}

func encodeRoot(r *Root) []byte {
	root := dt.NewNode("", dt.WithProperty(
		propStrings("compatible", r.Compatible),
		propU64("preserved-memory-map", uint64(r.PreservedMemoryMap)),
	))
	for _, s := range r.Subtrees {
		root.Children = append(root.Children, dt.NewNode(s.Name, dt.WithProperty(
			propU64("preserved-data", uint64(s.PreservedData)),
			propU64("blob-size", s.BlobSize),
		)))
	}
	return writeFDT(root)
}

func encodeLUO(l *LUO) []byte {
	if l.ABI == LUOv5 {
		return encodeLUOv5(l.ABI, l.LiveUpdateNumber, uint64(l.SessionsPA), uint64(l.FLBsPA))
	}
	return writeFDT(luoV1Node(l.ABI, l.LiveUpdateNumber, l.SessionCompatible, uint64(l.SessionHeaderPA)))
}

func luoV1Node(compat string, num uint64, sessionCompat string, header uint64) *dt.Node {
	return dt.NewNode("",
		dt.WithProperty(propStrings("compatible", compat), propU64("liveupdate-number", num)),
		dt.WithChildren(dt.NewNode("luo-session", dt.WithProperty(
			propStrings("compatible", sessionCompat),
			propU64("luo-session-header", header),
		))),
	)
}

// encodeLUOv5 is struct luo_ser; compat is NUL padded to 8 bytes.
func encodeLUOv5(compat string, num, sessions, flbs uint64) []byte {
	b := make([]byte, luoSerCompatLen)
	copy(b, compat)
	b = append(b, le64(num)...)
	b = append(b, le64(sessions)...)
	return append(b, le64(flbs)...)
}

func encodeKexecMetadata(m *KexecMetadata) []byte {
	b := le32(m.Version)
	rel := make([]byte, kexecReleaseLen)
	copy(rel, m.PreviousRelease)
	b = append(b, rel...)
	return append(b, le32(m.KexecCount)...)
}

// fdtAsm assembles an FDT token by token, for blobs u-root cannot write.
type fdtAsm struct{ s []byte }

func (a *fdtAsm) u32(v ...uint32) *fdtAsm {
	for _, x := range v {
		a.s = binary.BigEndian.AppendUint32(a.s, x)
	}
	return a
}

func (a *fdtAsm) pad() *fdtAsm {
	for len(a.s)%4 != 0 {
		a.s = append(a.s, 0)
	}
	return a
}

func (a *fdtAsm) begin(name string) *fdtAsm {
	a.u32(fdtBeginNode)
	a.s = append(append(a.s, name...), 0)
	return a.pad()
}

func (a *fdtAsm) end() *fdtAsm { return a.u32(fdtEndNode) }

func (a *fdtAsm) prop(nameoff uint32, v []byte) *fdtAsm {
	a.u32(fdtProp, uint32(len(v)), nameoff)
	a.s = append(a.s, v...)
	return a.pad()
}

// fdt lays out header, an empty memory reservation block at 40, the struct
// block and strs, then lets fix patch the ten header words.
func (a *fdtAsm) fdt(strs string, fix func(h []uint32)) []byte {
	const offStruct = fdtHeaderSize + fdtRsvEntry
	h := []uint32{
		fdtMagic,
		uint32(offStruct + len(a.s) + len(strs)), // totalsize
		offStruct,                                // off_dt_struct
		uint32(offStruct + len(a.s)),             // off_dt_strings
		fdtHeaderSize,                            // off_mem_rsvmap
		17, 16, 0,                                // version, last_comp_version, boot_cpuid_phys
		uint32(len(strs)), // size_dt_strings
		uint32(len(a.s)),  // size_dt_struct
	}
	if fix != nil {
		fix(h)
	}
	var b []byte
	for _, x := range h {
		b = binary.BigEndian.AppendUint32(b, x)
	}
	b = append(b, make([]byte, fdtRsvEntry)...)
	b = append(b, a.s...)
	return append(b, strs...)
}
