// Package kho decodes what the Linux kernel hands over across a kexec
// through Kexec HandOver (KHO) and the Live Update Orchestrator (LUO).
//
// # Where the blobs come from
//
// A kernel booted by kexec with KHO exposes the blobs it received, when
// built with CONFIG_KEXEC_HANDOVER_DEBUGFS, under DefaultDir
// (/sys/kernel/debug/kho/in; see kernel/liveupdate/kexec_handover_debugfs.c):
//
//	fdt                      the KHO root FDT (fdt_totalsize bytes)
//	sub_fdts/LUO             the LUO state, registered with kho_add_subtree
//	sub_fdts/kexec-metadata  the kexec chain metadata
//	sub_fdts/<name>          any other subsystem's blob, blob-size bytes
//
// The directory exists only when a handover came in: after a cold boot
// (or without debugfs) it is absent and ReadDir returns ErrNoHandover.
// ReadDir, Save and MountDebugFS are the only functions doing I/O;
// everything else is a pure, bounds-checked function of a []byte that never
// panics.
//
// # KHO root FDT, "kho-v4"
//
// include/linux/kho/abi/kexec_handover.h. A flattened device tree (FDT
// version 17, as written by libfdt) whose root node has
//
//	compatible            = "kho-v4"
//	preserved-memory-map  = u64 physical address of the preserved-memory radix tree
//
// and one subnode per kho_add_subtree call, named after the subtree:
//
//	preserved-data        = u64 physical address of the blob
//	blob-size             = u64 size of the blob in bytes
//
// DecodeRoot decodes it into a Root. (The DOC comment of the 7.2 header still
// shows "kho-v3"; the definition, which is what the kernel checks, is
// "kho-v4".)
//
// # LUO state: "luo-v1" (FDT) or "luo-v5" (struct luo_ser)
//
// The LUO subtree has had two encodings; DecodeLUO tells them apart from
// the bytes and reports which one it found in LUO.ABI.
//
// luo-v1, the older ABI, is an FDT:
//
//	/ {
//		compatible = "luo-v1";
//		liveupdate-number = u64;
//		luo-session {
//			compatible = "luo-session-v1";   or "luo-session-v2"
//			luo-session-header = u64 physical address of struct luo_session_header_ser;
//		};
//	};
//
// luo-v5, used by Linux 7.2 and 7.3 (include/linux/kho/abi/luo.h), is a
// raw packed struct of 32 bytes:
//
//	struct luo_ser {
//		char compatible[8];  // "luo-v5", NUL padded to ALIGN(sizeof("luo-v5"), 8)
//		u64  liveupdate_num;
//		u64  sessions_pa;    // first session block header
//		u64  flbs_pa;        // FLB header
//	} __packed;
//
// Like the kernel (luo_early_startup), DecodeLUO compares the compatible
// field with strncmp semantics and ignores bytes past the struct.
//
// # Kexec metadata, version 1
//
// include/linux/kho/abi/kexec_metadata.h, a raw packed struct of 73 bytes:
//
//	struct kho_kexec_metadata {
//		u32  version;               // 1
//		char previous_release[65];  // uname -r of the kernel that kexec'd
//		u32  kexec_count;           // kexec boots since the last cold boot
//	} __packed;
//
// DecodeKexecMetadata follows kho_in_kexec_metadata: the version is checked
// first (it only needs 4 bytes), then the size for that version.
//
// # Byte order
//
// The FDT container (header, tokens, lengths, string offsets) is big-endian
// as the Devicetree specification requires. The u64 property values above
// are not FDT cells: the kernel writes them with
// fdt_setprop(fdt, off, name, &val, sizeof(val)), so they are in CPU byte
// order, which is little-endian on every architecture with KHO support
// (x86_64, arm64). This package checks that such a property is exactly 8
// bytes long and reads it with binary.LittleEndian; u-root's AsU64 and
// AsRegion, which read big-endian cells, would give wrong values. The raw
// structs are little-endian too.
//
// # Versions
//
// Every blob is versioned by its own compatible string or version field,
// and a change of layout requires a new one. The decoders accept exactly
// the versions listed above; anything else yields an *UnknownABIError
// naming what was found, or a *DecodeError wrapping ErrUnsupportedVersion
// for kexec metadata.
//
// # Errors
//
// Decoders return either an *UnknownABIError (errors.Is ErrUnknownABI) or a
// *DecodeError whose Err is one of ErrTruncated, ErrOversized, ErrMalformed
// or ErrUnsupportedVersion, possibly wrapping a u-root dt error. Use
// errors.Is and errors.As, never ==.
//
// # Limits
//
// FDTs are parsed with u-root's pkg/dt, which is not written for hostile
// input: it trusts header sizes up to 1 GiB, allocates property values
// before reading them, and mangles non-ASCII node names. So before calling
// it the decoders reject blobs larger than MaxBlobSize (ErrOversized; the
// kernel uses one page) and check the FDT themselves: header totalsize
// within the blob (else ErrTruncated), every block, name, property and
// padding within its block, node names of printable ASCII, node and
// property names of at most 256 bytes, nesting at most 64 deep
// (else ErrMalformed).
package kho
