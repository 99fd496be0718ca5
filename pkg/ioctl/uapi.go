package ioctl

import (
	"encoding/binary"
	"fmt"
)

// DevicePath is where the kernel's misc device appears.
const DevicePath = "/dev/liveupdate"

// NameLen is LIVEUPDATE_SESSION_NAME_LENGTH: the size of the name field,
// NUL included, so a session name has at most NameLen-1 bytes.
const NameLen = 64

// MaxNameLen is the longest session name the kernel accepts.
const MaxNameLen = NameLen - 1

// IoctlType is LIVEUPDATE_IOCTL_TYPE.
const IoctlType = 0xBA

// Command numbers (the nr of _IO(0xBA, nr)).
const (
	CmdCreateSession   = 0x00
	CmdRetrieveSession = 0x01
	CmdPreserveFD      = 0x40
	CmdRetrieveFD      = 0x41
	CmdFinish          = 0x42
	CmdGetName         = 0x43
)

// io builds _IO(type, nr): direction and size bits are zero.
func io(nr uint) uint { return IoctlType<<8 | nr }

// Request numbers as passed to ioctl(2).
var (
	ReqCreateSession   = io(CmdCreateSession)
	ReqRetrieveSession = io(CmdRetrieveSession)
	ReqPreserveFD      = io(CmdPreserveFD)
	ReqRetrieveFD      = io(CmdRetrieveFD)
	ReqFinish          = io(CmdFinish)
	ReqGetName         = io(CmdGetName)
)

// Sizes of the uAPI structs, each of which starts with a u32 size field.
const (
	// struct liveupdate_ioctl_create_session / _retrieve_session:
	// u32 size; s32 fd; u8 name[64].
	SessionArgSize = 4 + 4 + NameLen
	// struct liveupdate_session_preserve_fd / _retrieve_fd:
	// u32 size; s32 fd; __aligned_u64 token.
	FDArgSize = 4 + 4 + 8
	// struct liveupdate_session_finish: u32 size; u32 reserved.
	FinishArgSize = 4 + 4
	// struct liveupdate_session_get_name: u32 size; u32 reserved; u8 name[64].
	GetNameArgSize = 4 + 4 + NameLen
)

var ne = binary.NativeEndian

// SessionArg is struct liveupdate_ioctl_create_session, which has the same
// layout as struct liveupdate_ioctl_retrieve_session.
type SessionArg struct {
	Size uint32
	FD   int32
	Name [NameLen]byte
}

// Marshal encodes the struct in the CPU's byte order.
func (a *SessionArg) Marshal() []byte {
	b := make([]byte, SessionArgSize)
	ne.PutUint32(b[0:], a.Size)
	ne.PutUint32(b[4:], uint32(a.FD))
	copy(b[8:], a.Name[:])
	return b
}

// Unmarshal decodes b, which must hold at least SessionArgSize bytes.
func (a *SessionArg) Unmarshal(b []byte) error {
	if len(b) < SessionArgSize {
		return fmt.Errorf("session arg: %d bytes, need %d", len(b), SessionArgSize)
	}
	a.Size = ne.Uint32(b[0:])
	a.FD = int32(ne.Uint32(b[4:]))
	copy(a.Name[:], b[8:8+NameLen])
	return nil
}

// FDArg is struct liveupdate_session_preserve_fd, which has the same layout
// as struct liveupdate_session_retrieve_fd.
type FDArg struct {
	Size  uint32
	FD    int32
	Token uint64
}

// Marshal encodes the struct in the CPU's byte order.
func (a *FDArg) Marshal() []byte {
	b := make([]byte, FDArgSize)
	ne.PutUint32(b[0:], a.Size)
	ne.PutUint32(b[4:], uint32(a.FD))
	ne.PutUint64(b[8:], a.Token)
	return b
}

// Unmarshal decodes b, which must hold at least FDArgSize bytes.
func (a *FDArg) Unmarshal(b []byte) error {
	if len(b) < FDArgSize {
		return fmt.Errorf("fd arg: %d bytes, need %d", len(b), FDArgSize)
	}
	a.Size = ne.Uint32(b[0:])
	a.FD = int32(ne.Uint32(b[4:]))
	a.Token = ne.Uint64(b[8:])
	return nil
}

// FinishArg is struct liveupdate_session_finish.
type FinishArg struct {
	Size     uint32
	Reserved uint32
}

// Marshal encodes the struct in the CPU's byte order.
func (a *FinishArg) Marshal() []byte {
	b := make([]byte, FinishArgSize)
	ne.PutUint32(b[0:], a.Size)
	ne.PutUint32(b[4:], a.Reserved)
	return b
}

// Unmarshal decodes b, which must hold at least FinishArgSize bytes.
func (a *FinishArg) Unmarshal(b []byte) error {
	if len(b) < FinishArgSize {
		return fmt.Errorf("finish arg: %d bytes, need %d", len(b), FinishArgSize)
	}
	a.Size = ne.Uint32(b[0:])
	a.Reserved = ne.Uint32(b[4:])
	return nil
}

// GetNameArg is struct liveupdate_session_get_name.
type GetNameArg struct {
	Size     uint32
	Reserved uint32
	Name     [NameLen]byte
}

// Marshal encodes the struct in the CPU's byte order.
func (a *GetNameArg) Marshal() []byte {
	b := make([]byte, GetNameArgSize)
	ne.PutUint32(b[0:], a.Size)
	ne.PutUint32(b[4:], a.Reserved)
	copy(b[8:], a.Name[:])
	return b
}

// Unmarshal decodes b, which must hold at least GetNameArgSize bytes.
func (a *GetNameArg) Unmarshal(b []byte) error {
	if len(b) < GetNameArgSize {
		return fmt.Errorf("get_name arg: %d bytes, need %d", len(b), GetNameArgSize)
	}
	a.Size = ne.Uint32(b[0:])
	a.Reserved = ne.Uint32(b[4:])
	copy(a.Name[:], b[8:8+NameLen])
	return nil
}

// CString returns the bytes of a NUL-terminated field up to the first NUL.
func CString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// CmdName names an ioctl request number as the header does, for messages.
func CmdName(req uint) string {
	switch req {
	case ReqCreateSession:
		return "CREATE_SESSION"
	case ReqRetrieveSession:
		return "RETRIEVE_SESSION"
	case ReqPreserveFD:
		return "PRESERVE_FD"
	case ReqRetrieveFD:
		return "RETRIEVE_FD"
	case ReqFinish:
		return "FINISH"
	case ReqGetName:
		return "GET_NAME"
	}
	return fmt.Sprintf("ioctl %#x", req)
}
