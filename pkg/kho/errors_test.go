package kho

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// Strings block of asmRoot: "compatible" at 0, "preserved-memory-map" at 11.
const asmStrs = "compatible\x00preserved-memory-map\x00"

// asmRoot is a valid kho-v4 root FDT without subtrees, assembled by hand.
func asmRoot() *fdtAsm {
	return new(fdtAsm).begin("").
		prop(0, []byte(KHOCompatible+"\x00")).
		prop(11, le64(0x1000)).
		end().u32(fdtEnd)
}

func header(i int, v uint32) func([]uint32) { return func(h []uint32) { h[i] = v } }

func decodeRootAny(b []byte) (any, error)          { return DecodeRoot(b) }
func decodeLUOAny(b []byte) (any, error)           { return DecodeLUO(b) }
func decodeKexecMetadataAny(b []byte) (any, error) { return DecodeKexecMetadata(b) }

func TestDecodeErrors(t *testing.T) {
	big := make([]byte, MaxBlobSize+1)
	bigFDT := bytes.Clone(big)
	binary.BigEndian.PutUint32(bigFDT, fdtMagic)
	deep := new(fdtAsm)
	for range maxNodeDepth + 1 {
		deep.begin("n")
	}
	unterminatedRsv := asmRoot().fdt(asmStrs, nil)
	unterminatedRsv[fdtHeaderSize] = 1
	nameAtEnd := new(fdtAsm).u32(fdtBeginNode)
	nameAtEnd.s = append(nameAtEnd.s, "ab\x00"...)
	noNUL := new(fdtAsm).u32(fdtBeginNode)
	noNUL.s = append(noNUL.s, "abcd"...)

	for _, tc := range []struct {
		name   string
		decode func([]byte) (any, error)
		blob   []byte
		is     error  // nil: decoding must succeed
		msg    string // substring of the message
	}{
		{"asm root is valid", decodeRootAny, asmRoot().fdt(asmStrs, nil), nil, ""},
		{"root oversized", decodeRootAny, bigFDT, ErrOversized, "1048577 bytes, limit is 1048576"},
		{"root oversized not FDT", decodeRootAny, big, ErrOversized, "oversized"},
		{"LUO oversized", decodeLUOAny, bigFDT, ErrOversized, "oversized"},
		{"LUO oversized raw", decodeLUOAny, big, ErrOversized, "oversized"},
		{"metadata oversized", decodeKexecMetadataAny, big, ErrOversized, "oversized"},

		{"root empty", decodeRootAny, nil, ErrTruncated, "need 4 bytes, have 0"},
		{"root short magic", decodeRootAny, []byte{0xd0, 0x0d}, ErrTruncated, "magic"},
		{"root short header", decodeRootAny, asmRoot().fdt(asmStrs, nil)[:30], ErrTruncated, "FDT header at offset 30: truncated: need 40 bytes, have 30"},
		{"root not FDT", decodeRootAny, []byte("hello, world"), ErrUnknownABI, `found 12 bytes starting 68 65`},
		{"version 16", decodeRootAny, asmRoot().fdt(asmStrs, header(5, 16)), ErrMalformed, "version 16"},
		{"last comp 18", decodeRootAny, asmRoot().fdt(asmStrs, header(6, 18)), ErrMalformed, "last compatible 18"},
		{"totalsize in header", decodeRootAny, asmRoot().fdt(asmStrs, header(1, 20)), ErrMalformed, "totalsize"},
		{"totalsize past blob", decodeRootAny, asmRoot().fdt(asmStrs, header(1, 1000)), ErrTruncated, "header says 1000 bytes"},
		{"totalsize 4 GiB", decodeRootAny, asmRoot().fdt(asmStrs, header(1, 0xffffffff)), ErrTruncated, "header says 4294967295 bytes"},
		{"rsvmap unaligned", decodeRootAny, asmRoot().fdt(asmStrs, header(4, 44)), ErrMalformed, "off_mem_rsvmap"},
		{"rsvmap in header", decodeRootAny, asmRoot().fdt(asmStrs, header(4, 8)), ErrMalformed, "off_mem_rsvmap"},
		{"rsvmap unterminated", decodeRootAny, unterminatedRsv, ErrMalformed, "no terminating entry"},
		{"struct unaligned", decodeRootAny, asmRoot().fdt(asmStrs, header(2, 58)), ErrMalformed, "off_dt_struct"},
		{"struct 4 GiB", decodeRootAny, asmRoot().fdt(asmStrs, header(9, 0xfffffff0)), ErrMalformed, "runs past totalsize"},
		{"strings 4 GiB", decodeRootAny, asmRoot().fdt(asmStrs, header(8, 0xffffffff)), ErrMalformed, "strings block"},
		{"name without NUL", decodeRootAny, noNUL.fdt("", nil), ErrMalformed, "not NUL-terminated"},
		{"name too long", decodeRootAny, new(fdtAsm).begin(strings.Repeat("n", maxNameLen+1)).end().u32(fdtEnd).fdt("", nil), ErrMalformed, "257 bytes long"},
		{"name not ASCII", decodeRootAny, new(fdtAsm).begin("\x82exec-metadata").end().u32(fdtEnd).fdt("", nil), ErrMalformed, "byte 0x82 at 0 is not printable ASCII"},
		{"name control char", decodeRootAny, new(fdtAsm).begin("LUO\n").end().u32(fdtEnd).fdt("", nil), ErrMalformed, "byte 0x0a at 3"},
		{"two roots", decodeRootAny, new(fdtAsm).begin("").end().begin("").end().u32(fdtEnd).fdt("", nil), ErrMalformed, "more than one root"},
		{"too deep", decodeRootAny, deep.fdt("", nil), ErrMalformed, "nested deeper"},
		{"end node first", decodeRootAny, new(fdtAsm).end().fdt("", nil), ErrMalformed, "FDT_END_NODE without"},
		{"prop header cut", decodeRootAny, new(fdtAsm).begin("").u32(fdtProp, 4).fdt(asmStrs, nil), ErrMalformed, "header runs past"},
		{"prop outside node", decodeRootAny, new(fdtAsm).prop(0, nil).fdt(asmStrs, nil), ErrMalformed, "outside any node"},
		{"prop name offset", decodeRootAny, new(fdtAsm).begin("").prop(100, nil).end().u32(fdtEnd).fdt(asmStrs, nil), ErrMalformed, "name offset 100"},
		{"prop name no NUL", decodeRootAny, new(fdtAsm).begin("").prop(0, nil).end().u32(fdtEnd).fdt("compatible", nil), ErrMalformed, "not NUL-terminated within 256 bytes"},
		{"prop name too long", decodeRootAny, new(fdtAsm).begin("").prop(0, nil).end().u32(fdtEnd).fdt(strings.Repeat("p", 300)+"\x00", nil), ErrMalformed, "not NUL-terminated within 256 bytes"},
		{"prop 4 GiB", decodeRootAny, new(fdtAsm).begin("").u32(fdtProp, 0xfffffff0, 0).end().u32(fdtEnd).fdt(asmStrs, nil), ErrMalformed, "4294967280-byte value"},
		{"unknown token", decodeRootAny, new(fdtAsm).begin("").u32(7).fdt("", nil), ErrMalformed, "unknown token 0x7"},
		{"bytes after end", decodeRootAny, asmRoot().u32(0).fdt(asmStrs, nil), ErrMalformed, "4 bytes after FDT_END"},
		{"unclosed node", decodeRootAny, new(fdtAsm).begin("").u32(fdtEnd).fdt("", nil), ErrMalformed, "1 unclosed nodes"},
		{"no root", decodeRootAny, new(fdtAsm).u32(fdtEnd).fdt("", nil), ErrMalformed, "0 root nodes"},
		{"padding cut", decodeRootAny, nameAtEnd.fdt("", nil), ErrMalformed, "padding runs past"},
		{"no end token", decodeRootAny, new(fdtAsm).begin("").end().fdt("", nil), ErrMalformed, "ends without FDT_END"},
		{"root without properties", decodeRootAny, new(fdtAsm).begin("").end().u32(fdtEnd).fdt("", nil), ErrUnknownABI, "an FDT without compatible property"},
		{"root compatible list", decodeRootAny, new(fdtAsm).begin("").prop(0, []byte("acme,kho\x00kho-v4\x00")).prop(11, le64(1)).end().u32(fdtEnd).fdt(asmStrs, nil), nil, ""},
		{"root two compatibles", decodeRootAny, new(fdtAsm).begin("").prop(0, []byte("a\x00b\x00")).end().u32(fdtEnd).fdt(asmStrs, nil), ErrUnknownABI, `found FDT compatible "a", "b"`},
		{"root long compatible", decodeRootAny, new(fdtAsm).begin("").prop(0, []byte(strings.Repeat("c", 100)+"\x00a\x00b\x00c\x00d\x00e\x00")).end().u32(fdtEnd).fdt(asmStrs, nil), ErrUnknownABI, `found FDT compatible "` + strings.Repeat("c", 64) + `"..., "a", "b", "c", and 2 more`},
		{"root missing memory map", decodeRootAny, new(fdtAsm).begin("").prop(0, []byte("kho-v4\x00")).end().u32(fdtEnd).fdt(asmStrs, nil), ErrMalformed, "/preserved-memory-map: malformed: missing"},
		{"root duplicate subtree", decodeRootAny, encodeRoot(&Root{Compatible: KHOCompatible, Subtrees: []Subtree{{Name: "LUO"}, {Name: "LUO"}}}), ErrMalformed, "/LUO: malformed: duplicate subtree"},
		{"root missing preserved-data", decodeRootAny, new(fdtAsm).begin("").prop(0, []byte("kho-v4\x00")).prop(11, le64(1)).begin("x").end().end().u32(fdtEnd).fdt(asmStrs, nil), ErrMalformed, "/x/preserved-data: malformed: missing"},

		{"LUO empty", decodeLUOAny, nil, ErrTruncated, "need 32 bytes, have 0"},
		{"LUO luo-v", decodeLUOAny, []byte("luo-v"), ErrTruncated, "have 5"},
		{"LUO half magic", decodeLUOAny, []byte{0xd0, 0x0d, 0xfe}, ErrTruncated, "have 3"},
		{"LUO compat only", decodeLUOAny, []byte("luo-v5\x00"), ErrTruncated, "struct luo_ser at offset 7: truncated: need 32 bytes, have 7"},
		{"LUO v5 31 bytes", decodeLUOAny, goldenLUOv5[:31], ErrTruncated, "have 31"},
		{"LUO v5 pad byte ignored", decodeLUOAny, append([]byte("luo-v5\x00X"), goldenLUOv5[8:]...), nil, ""},
		{"LUO v5 trailing", decodeLUOAny, append(bytes.Clone(goldenLUOv5), 1, 2, 3), nil, ""},
		{"LUO luo-v55", decodeLUOAny, encodeLUOv5("luo-v55", 1, 2, 3), ErrUnknownABI, `found struct luo_ser compatible "luo-v55"`},
		{"LUO luo-v5 unterminated", decodeLUOAny, encodeLUOv5("luo-v5xx", 1, 2, 3), ErrUnknownABI, `found 32 bytes starting 6c 75 6f`},
		{"LUO zeros", decodeLUOAny, make([]byte, 32), ErrUnknownABI, "found 32 bytes starting 00 00"},
		{"LUO FDT without compatible", decodeLUOAny, new(fdtAsm).begin("").end().u32(fdtEnd).fdt("", nil), ErrUnknownABI, "an FDT without compatible property"},
		{"LUO kho root", decodeLUOAny, asmRoot().fdt(asmStrs, nil), ErrUnknownABI, `found FDT compatible "kho-v4"`},
		{"LUO broken FDT", decodeLUOAny, asmRoot().fdt(asmStrs, header(5, 1)), ErrMalformed, "version 1"},

		{"metadata empty", decodeKexecMetadataAny, nil, ErrTruncated, "need 4 bytes, have 0"},
		{"metadata version 0", decodeKexecMetadataAny, make([]byte, kexecMetadataV1Size), ErrUnsupportedVersion, "version 0, want 1"},
		{"metadata version only", decodeKexecMetadataAny, goldenMetadata[:4], ErrTruncated, "need 73 bytes, have 4"},
		{"metadata 72 bytes", decodeKexecMetadataAny, goldenMetadata[:72], ErrTruncated, "have 72"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := tc.decode(tc.blob)
			if tc.is == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("decoded %+v, want error %v", v, tc.is)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			checkErrorType(t, err)
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
		})
	}
}

// checkErrorType checks the error contract of the decoders.
func checkErrorType(t *testing.T, err error) {
	t.Helper()
	var de *DecodeError
	var ue *UnknownABIError
	switch {
	case errors.As(err, &ue):
		if ue.Found == "" || len(ue.Want) == 0 || ue.Blob == "" {
			t.Errorf("incomplete %#v", ue)
		}
	case errors.As(err, &de):
		if de.Blob == "" {
			t.Errorf("DecodeError without Blob: %v", err)
		}
		n := 0
		for _, s := range []error{ErrTruncated, ErrOversized, ErrMalformed, ErrUnsupportedVersion} {
			if errors.Is(err, s) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("DecodeError %q matches %d sentinels, want 1", err, n)
		}
	default:
		t.Errorf("error %q (%T) is neither *DecodeError nor *UnknownABIError", err, err)
	}
}

func TestDecodeErrorMessage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&DecodeError{Blob: "LUO", Offset: -1, Err: ErrOversized}, "kho: LUO: oversized"},
		{&DecodeError{Blob: "LUO", Offset: 8, Field: "x", Err: ErrTruncated, Reason: "r"}, "kho: LUO: x at offset 8: truncated: r"},
		{&UnknownABIError{Blob: "LUO", Found: "f", Want: []string{"a", "b"}}, "kho: LUO is of no known ABI (want a or b): found f"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if errors.Is(&UnknownABIError{}, ErrMalformed) {
		t.Error("UnknownABIError is ErrMalformed")
	}
}

// An FDT that passes checkFDT but that u-root rejects still gives a
// DecodeError wrapping ErrMalformed and u-root's error.
func TestParseFDTError(t *testing.T) {
	_, err := parseFDT("test", []byte("not an FDT at all, not even close"))
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v, want ErrMalformed", err)
	}
	checkErrorType(t, err)
}

func TestPhysAddrText(t *testing.T) {
	a := PhysAddr(0x1fd000000)
	b, _ := a.MarshalText()
	if string(b) != "0x1fd000000" {
		t.Errorf("MarshalText = %s", b)
	}
	var c PhysAddr
	if err := c.UnmarshalText(b); err != nil || c != a {
		t.Errorf("UnmarshalText(%s) = %v, %v", b, c, err)
	}
	if err := c.UnmarshalText([]byte("zz")); err == nil {
		t.Error("UnmarshalText(zz) succeeded")
	}
}
