package kho

import (
	"fmt"
	"strconv"
)

// MaxBlobSize is the largest blob the decoders accept. The kernel's root
// FDT and the LUO and kexec-metadata subtrees all fit in one page (at most
// 64 KiB); 1 MiB leaves room for other page sizes and future growth while
// bounding what a crafted blob can make the FDT parser allocate.
const MaxBlobSize = 1 << 20

// ABI identifiers, as written by the kernel into the blobs.
const (
	// KHOCompatible is the compatible string of the KHO root FDT
	// (KHO_FDT_COMPATIBLE).
	KHOCompatible = "kho-v4"
	// LUOv1 is the compatible string of the older, FDT-based LUO state
	// (LUO_FDT_COMPATIBLE).
	LUOv1 = "luo-v1"
	// LUOv5 is the compatible string of the struct luo_ser LUO state of
	// Linux 7.2 and 7.3 (LUO_ABI_COMPATIBLE).
	LUOv5 = "luo-v5"
	// KexecMetadataVersion is the version of struct kho_kexec_metadata this
	// package decodes (KHO_KEXEC_METADATA_VERSION).
	KexecMetadataVersion = 1
)

// Names of the KHO subtrees this package decodes, as they appear as root
// FDT subnodes and as files under sub_fdts/.
const (
	// SubtreeLUO is the KHO subtree holding the LUO state
	// (LUO_KHO_ENTRY_NAME).
	SubtreeLUO = "LUO"
	// SubtreeKexecMetadata is the KHO subtree holding the kexec metadata
	// (KHO_METADATA_NODE_NAME).
	SubtreeKexecMetadata = "kexec-metadata"
)

// PhysAddr is a physical address in the memory handed over by the previous
// kernel. User space cannot dereference it; it is decoded for diagnostics
// and to correlate with kernel logs. It prints and marshals as hex.
type PhysAddr uint64

// String returns the address in hex, like "0x1fd000000".
func (a PhysAddr) String() string { return fmt.Sprintf("%#x", uint64(a)) }

// MarshalText implements encoding.TextMarshaler, so JSON shows "0x...".
func (a PhysAddr) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler. It accepts the hex form
// written by MarshalText and any other Go integer literal syntax.
func (a *PhysAddr) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 0, 64)
	if err != nil {
		return fmt.Errorf("kho: physical address: %w", err)
	}
	*a = PhysAddr(v)
	return nil
}
