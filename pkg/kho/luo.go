package kho

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Layout of struct luo_ser (luo-v5).
const (
	luoSerCompatLen = 8 // LUO_ABI_COMPAT_LEN = ALIGN(sizeof("luo-v5"), 8)
	luoSerSize      = luoSerCompatLen + 3*8
)

// Session node compatible strings of luo-v1 (LUO_FDT_SESSION_COMPATIBLE).
const (
	luoSessionV1 = "luo-session-v1"
	luoSessionV2 = "luo-session-v2"
)

// LUO is the decoded LUO state, the "LUO" KHO subtree. Fields that do not
// apply to ABI are zero and left out of JSON; so is a zero physical
// address, which the kernel writes when there is nothing to point to.
type LUO struct {
	// ABI is the encoding found, LUOv1 or LUOv5.
	ABI string `json:"abi"`
	// LiveUpdateNumber counts the live updates performed on this machine
	// since its last cold boot, including the one that handed this over.
	LiveUpdateNumber uint64 `json:"liveupdate_number"`

	// SessionCompatible is the compatible string of the luo-session node,
	// "luo-session-v1" or "luo-session-v2" (luo-v1 only).
	SessionCompatible string `json:"session_compatible,omitempty"`
	// SessionHeaderPA is the physical address of struct
	// luo_session_header_ser (luo-v1 only).
	SessionHeaderPA PhysAddr `json:"session_header_pa,omitempty"`

	// SessionsPA is the physical address of the first session block
	// header, struct kho_block_header_ser (luo-v5 only).
	SessionsPA PhysAddr `json:"sessions_pa,omitempty"`
	// FLBsPA is the physical address of struct luo_flb_header_ser
	// (luo-v5 only).
	FLBsPA PhysAddr `json:"flbs_pa,omitempty"`
}

// DecodeLUO decodes the LUO state, telling the two ABIs apart from the
// bytes: an FDT must be luo-v1, anything else must be a struct luo_ser of
// luo-v5. A blob of neither gives an *UnknownABIError naming the FDT's
// compatible string or the first bytes of the blob.
func DecodeLUO(b []byte) (*LUO, error) {
	const blob = blobLUO
	switch {
	case len(b) > MaxBlobSize:
		return nil, oversized(blob, len(b))
	case isFDT(b):
		return decodeLUOv1(b)
	case luoSerCompatible(b) == LUOv5:
		return decodeLUOv5(b)
	case bytes.HasPrefix([]byte(LUOv5+"\x00"), b):
		return nil, truncated(blob, "struct luo_ser", len(b), luoSerSize, len(b))
	case bytes.HasPrefix(binary.BigEndian.AppendUint32(nil, fdtMagic), b):
		return nil, truncated(blob, "FDT header", len(b), fdtHeaderSize, len(b))
	}
	found := describeBytes(b)
	if c := luoSerCompatible(b); c != "" && strings.IndexFunc(c, notPrintableASCII) < 0 {
		found = fmt.Sprintf("struct luo_ser compatible %q", c)
	}
	return nil, &UnknownABIError{Blob: blob, Found: found, Want: luoWant()}
}

// luoWant lists the LUO ABIs, for UnknownABIError.
func luoWant() []string { return []string{LUOv1 + " FDT", LUOv5 + " struct luo_ser"} }

// luoSerCompatible returns the NUL-terminated string at the start of b
// within the compatible field of struct luo_ser, or "" if there is none.
// Like the kernel's strncmp, it ignores the bytes after the NUL.
func luoSerCompatible(b []byte) string {
	f := b[:min(len(b), luoSerCompatLen)]
	n := bytes.IndexByte(f, 0)
	if n < 0 {
		return ""
	}
	return string(f[:n])
}

func decodeLUOv5(b []byte) (*LUO, error) {
	if len(b) < luoSerSize {
		return nil, truncated(blobLUO, "struct luo_ser", len(b), luoSerSize, len(b))
	}
	le := binary.LittleEndian
	return &LUO{
		ABI:              LUOv5,
		LiveUpdateNumber: le.Uint64(b[8:]),
		SessionsPA:       PhysAddr(le.Uint64(b[16:])),
		FLBsPA:           PhysAddr(le.Uint64(b[24:])),
	}, nil
}

func decodeLUOv1(b []byte) (*LUO, error) {
	const blob = blobLUO
	n, err := readFDT(blob, b)
	if err != nil {
		return nil, err
	}
	l := &LUO{}
	var ok bool
	if l.ABI, ok = matchCompatible(n, LUOv1); !ok {
		return nil, &UnknownABIError{Blob: blob, Found: describeCompatible(compatibles(n)), Want: luoWant()}
	}
	if l.LiveUpdateNumber, err = u64Prop(blob, "/", n, "liveupdate-number"); err != nil {
		return nil, err
	}
	const session = "luo-session"
	s, ok := n.LookupChildByName(session)
	if !ok {
		return nil, malformed(blob, "/"+session, -1, "missing node")
	}
	if l.SessionCompatible, ok = matchCompatible(s, luoSessionV1, luoSessionV2); !ok {
		return nil, &UnknownABIError{Blob: blob + " /" + session, Found: describeCompatible(compatibles(s)),
			Want: []string{luoSessionV1, luoSessionV2}}
	}
	pa, err := u64Prop(blob, "/"+session, s, "luo-session-header")
	if err != nil {
		return nil, err
	}
	l.SessionHeaderPA = PhysAddr(pa)
	return l, nil
}
