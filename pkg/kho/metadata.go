package kho

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Layout of struct kho_kexec_metadata, version 1.
const (
	kexecReleaseLen     = 65 // __NEW_UTS_LEN + 1
	kexecMetadataV1Size = 4 + kexecReleaseLen + 4
	kexecCountOffset    = 4 + kexecReleaseLen
	kexecVersionSize    = 4
)

// KexecMetadata is the decoded "kexec-metadata" KHO subtree: where the
// running kernel was kexec'd from.
type KexecMetadata struct {
	// Version is the struct version, KexecMetadataVersion.
	Version uint32 `json:"version"`
	// PreviousRelease is the release (uname -r) of the kernel that
	// performed the kexec.
	PreviousRelease string `json:"previous_release"`
	// KexecCount counts kexec boots since the last cold boot, this one
	// included.
	KexecCount uint32 `json:"kexec_count"`
}

// DecodeKexecMetadata decodes a struct kho_kexec_metadata. As the kernel
// does, it reads the version first, needing only 4 bytes, then requires
// the full size of that version; bytes past it are ignored.
// PreviousRelease stops at the first NUL and, as the kernel's strscpy into
// a buffer of the same size, at 64 bytes.
func DecodeKexecMetadata(b []byte) (*KexecMetadata, error) {
	const blob = blobKexecMetadata
	if len(b) > MaxBlobSize {
		return nil, oversized(blob, len(b))
	}
	if len(b) < kexecVersionSize {
		return nil, truncated(blob, "version", len(b), kexecVersionSize, len(b))
	}
	le := binary.LittleEndian
	m := &KexecMetadata{Version: le.Uint32(b)}
	if m.Version != KexecMetadataVersion {
		return nil, &DecodeError{Blob: blob, Offset: 0, Field: "version", Err: ErrUnsupportedVersion,
			Reason: fmt.Sprintf("version %d, want %d", m.Version, KexecMetadataVersion)}
	}
	if len(b) < kexecMetadataV1Size {
		return nil, truncated(blob, "struct kho_kexec_metadata", len(b), kexecMetadataV1Size, len(b))
	}
	rel := b[4 : 4+kexecReleaseLen-1]
	if n := bytes.IndexByte(rel, 0); n >= 0 {
		rel = rel[:n]
	}
	m.PreviousRelease = string(rel)
	m.KexecCount = le.Uint32(b[kexecCountOffset:])
	return m, nil
}
