package ioctl

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The request numbers are _IO(0xBA, nr): type in bits 8-15, nr in 0-7,
// no size or direction bits (include/uapi/linux/liveupdate.h).
func TestRequestNumbers(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  uint
		want uint
	}{
		{"CREATE_SESSION", ReqCreateSession, 0xBA00},
		{"RETRIEVE_SESSION", ReqRetrieveSession, 0xBA01},
		{"PRESERVE_FD", ReqPreserveFD, 0xBA40},
		{"RETRIEVE_FD", ReqRetrieveFD, 0xBA41},
		{"FINISH", ReqFinish, 0xBA42},
		{"GET_NAME", ReqGetName, 0xBA43},
	} {
		if tc.req != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.req, tc.want)
		}
		if CmdName(tc.req) != tc.name {
			t.Errorf("CmdName(%#x) = %q, want %q", tc.req, CmdName(tc.req), tc.name)
		}
	}
}

// Struct sizes and field offsets as the kernel lays them out.
func TestStructLayouts(t *testing.T) {
	if SessionArgSize != 72 || FDArgSize != 16 || FinishArgSize != 8 || GetNameArgSize != 72 {
		t.Fatalf("sizes %d %d %d %d, want 72 16 8 72", SessionArgSize, FDArgSize, FinishArgSize, GetNameArgSize)
	}
	ne := binary.NativeEndian

	s := SessionArg{Size: SessionArgSize, FD: -1}
	copy(s.Name[:], "vm-1")
	b := s.Marshal()
	if len(b) != 72 || ne.Uint32(b[0:]) != 72 || int32(ne.Uint32(b[4:])) != -1 || string(b[8:12]) != "vm-1" || b[12] != 0 {
		t.Errorf("create_session encoding % x", b[:16])
	}
	var s2 SessionArg
	if err := s2.Unmarshal(b); err != nil || s2 != s {
		t.Errorf("create_session round trip = %+v, %v", s2, err)
	}

	f := FDArg{Size: FDArgSize, FD: 7, Token: 0x1122334455667788}
	b = f.Marshal()
	if ne.Uint32(b[0:]) != 16 || ne.Uint32(b[4:]) != 7 || ne.Uint64(b[8:]) != 0x1122334455667788 {
		t.Errorf("preserve_fd encoding % x: token must sit at offset 8 (__aligned_u64)", b)
	}
	var f2 FDArg
	if err := f2.Unmarshal(b); err != nil || f2 != f {
		t.Errorf("preserve_fd round trip = %+v, %v", f2, err)
	}

	fin := FinishArg{Size: FinishArgSize, Reserved: 3}
	if b := fin.Marshal(); ne.Uint32(b[0:]) != 8 || ne.Uint32(b[4:]) != 3 {
		t.Errorf("finish encoding % x", b)
	}
	g := GetNameArg{Size: GetNameArgSize}
	copy(g.Name[:], strings.Repeat("n", MaxNameLen))
	b = g.Marshal()
	if len(b) != 72 || b[8+62] != 'n' || b[8+63] != 0 {
		t.Errorf("get_name encoding: name at offset 8, NUL at 71")
	}
	for _, short := range []interface{ Unmarshal([]byte) error }{&SessionArg{}, &FDArg{}, &FinishArg{}, &GetNameArg{}} {
		if err := short.Unmarshal(make([]byte, 4)); err == nil {
			t.Errorf("%T.Unmarshal of 4 bytes succeeded", short)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, bad := range []string{"", strings.Repeat("x", 64), "a\x00b"} {
		if err := ValidateName(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
	if err := ValidateName(strings.Repeat("x", 63)); err != nil {
		t.Errorf("63-byte name refused: %v", err)
	}
}

func TestErrorMessages(t *testing.T) {
	e := &Error{Op: "PRESERVE_FD", Session: "vm-1", Token: 0x1234, HasToken: true, FD: 9, Errno: unix.EBUSY}
	msg := e.Error()
	for _, want := range []string{"PRESERVE_FD", `"vm-1"`, "0x1234", "fd 9", "EBUSY", "already preserved"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
	if !errors.Is(e, unix.EBUSY) {
		t.Error("errors.Is(err, EBUSY) is false")
	}
	open := &Error{Op: "open", Errno: unix.EBUSY, FD: -1, Holders: []Holder{{PID: 42, Comm: "luo-agent"}}}
	if !strings.Contains(open.Error(), "pid 42 (luo-agent)") {
		t.Errorf("open EBUSY does not name the holder: %v", open)
	}
	missing := &Error{Op: "open", Errno: unix.ENOENT, FD: -1}
	if !errors.Is(missing, ErrNotSupported) {
		t.Error("a missing device does not match ErrNotSupported")
	}
	// Every errno the uAPI header documents has a meaning of its own.
	for _, errno := range []unix.Errno{unix.ENOTTY, unix.E2BIG, unix.EOPNOTSUPP, unix.EINVAL, unix.ENOENT, unix.EBUSY, unix.EEXIST, unix.ENOMEM, unix.EOVERFLOW} {
		if Explain("ioctl", errno) == errno.Error() {
			t.Errorf("Explain(%v) falls back to strerror", errno)
		}
	}
}
