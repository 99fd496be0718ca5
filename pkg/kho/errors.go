package kho

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrTruncated means a blob is shorter than its layout requires.
	ErrTruncated = errors.New("truncated")
	// ErrOversized means a blob is larger than MaxBlobSize.
	ErrOversized = errors.New("oversized")
	// ErrMalformed means a blob has a known ABI but violates its layout:
	// a broken FDT, a missing property, a u64 property that is not 8 bytes.
	ErrMalformed = errors.New("malformed")
	// ErrUnknownABI means a blob is of no ABI this package knows, such as an
	// unknown compatible string. The error is an *UnknownABIError.
	ErrUnknownABI = errors.New("unknown ABI")
	// ErrUnsupportedVersion means a versioned struct carries a version this
	// package does not decode.
	ErrUnsupportedVersion = errors.New("unsupported version")
	// ErrNoHandover means no handover came in: the KHO debugfs directory
	// does not exist, as after a cold boot.
	ErrNoHandover = errors.New("no KHO handover")
)

// Blob names used in errors.
const (
	blobRoot          = "KHO root FDT"
	blobLUO           = "LUO"
	blobKexecMetadata = "kexec-metadata"
)

// DecodeError describes why a blob could not be decoded.
type DecodeError struct {
	// Blob names the blob: "KHO root FDT", "LUO" or "kexec-metadata".
	Blob string
	// Offset is the byte offset in the blob where the problem was seen, or
	// -1 when the problem has no single position (such as a missing FDT
	// property).
	Offset int
	// Field names what was being decoded: a C struct field such as
	// "liveupdate_num", an FDT header field such as "totalsize", or an FDT
	// property path such as "/luo-session/luo-session-header".
	Field string
	// Err is the category, one of ErrTruncated, ErrOversized, ErrMalformed
	// or ErrUnsupportedVersion, possibly joined with the error of u-root's
	// FDT parser.
	Err error
	// Reason details what was found, e.g. "need 32 bytes, have 20".
	Reason string
}

func (e *DecodeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kho: %s", e.Blob)
	if e.Field != "" {
		fmt.Fprintf(&b, ": %s", e.Field)
	}
	if e.Offset >= 0 {
		fmt.Fprintf(&b, " at offset %d", e.Offset)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	if e.Reason != "" {
		fmt.Fprintf(&b, ": %s", e.Reason)
	}
	return b.String()
}

// Unwrap returns e.Err.
func (e *DecodeError) Unwrap() error { return e.Err }

// UnknownABIError reports a blob of no ABI this package decodes. It matches
// ErrUnknownABI with errors.Is.
type UnknownABIError struct {
	// Blob names the blob, as in DecodeError, or a node within it such as
	// "LUO /luo-session".
	Blob string
	// Found describes what the blob holds instead, such as
	// `FDT compatible "luo-v2"` or the first bytes of the blob.
	Found string
	// Want lists the ABIs that would have been accepted.
	Want []string
}

func (e *UnknownABIError) Error() string {
	return fmt.Sprintf("kho: %s is of no known ABI (want %s): found %s",
		e.Blob, strings.Join(e.Want, " or "), e.Found)
}

// Is reports whether target is ErrUnknownABI.
func (e *UnknownABIError) Is(target error) bool { return target == ErrUnknownABI }

func truncated(blob, field string, off, need, have int) error {
	return &DecodeError{Blob: blob, Offset: off, Field: field, Err: ErrTruncated,
		Reason: fmt.Sprintf("need %d bytes, have %d", need, have)}
}

func oversized(blob string, have int) error {
	return &DecodeError{Blob: blob, Offset: -1, Err: ErrOversized,
		Reason: fmt.Sprintf("%d bytes, limit is %d", have, MaxBlobSize)}
}

func malformed(blob, field string, off int, format string, args ...any) error {
	return &DecodeError{Blob: blob, Offset: off, Field: field, Err: ErrMalformed,
		Reason: fmt.Sprintf(format, args...)}
}
