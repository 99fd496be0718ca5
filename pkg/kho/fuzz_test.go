package kho

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// seedTestdata adds every blob in testdata to f's corpus, for all three
// fuzzers: a blob of one kind is an interesting input for the others.
// Go adds testdata/fuzz/<FuzzName>/* itself.
func seedTestdata(f *testing.F) {
	paths, err := filepath.Glob(filepath.Join("testdata", "*.bin"))
	if err != nil {
		f.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join("testdata", "kho-in", "*"))
	subs, _ := filepath.Glob(filepath.Join("testdata", "kho-in", SubtreeDir, "*"))
	for _, p := range append(append(paths, more...), subs...) {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// fuzzDecode runs decode on b and checks the properties every decoder
// has: it does not modify b, fails only with the documented error types,
// ignores appended bytes on success, and round-trips through encode.
func fuzzDecode[T any](t *testing.T, b []byte, decode func([]byte) (*T, error), encode func(*T) []byte) *T {
	t.Helper()
	in := bytes.Clone(b)
	v, err := decode(b)
	if !bytes.Equal(in, b) {
		t.Fatal("decoder modified its input")
	}
	if err != nil {
		if v != nil {
			t.Fatalf("got %+v and error %v", v, err)
		}
		checkErrorType(t, err)
		return nil
	}
	if len(b) > MaxBlobSize {
		t.Fatalf("decoded a %d-byte blob", len(b))
	}
	if len(b)+8 <= MaxBlobSize {
		w, err := decode(append(bytes.Clone(b), 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5))
		if err != nil || !reflect.DeepEqual(v, w) {
			t.Fatalf("trailing bytes changed the result: %+v, %v; was %+v", w, err, v)
		}
	}
	w, err := decode(encode(v))
	if err != nil || !reflect.DeepEqual(v, w) {
		t.Fatalf("round trip: %+v, %v; want %+v", w, err, v)
	}
	return v
}

func FuzzDecodeRoot(f *testing.F) {
	seedTestdata(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := fuzzDecode(t, b, DecodeRoot, encodeRoot)
		if r == nil {
			return
		}
		if r.Compatible != KHOCompatible {
			t.Errorf("compatible %q", r.Compatible)
		}
		if binary.BigEndian.Uint32(b[4:]) > uint32(len(b)) {
			t.Errorf("decoded an FDT whose totalsize exceeds the blob")
		}
		seen := map[string]bool{}
		for _, s := range r.Subtrees {
			if seen[s.Name] || strings.IndexFunc(s.Name, notPrintableASCII) >= 0 || len(s.Name) > maxNameLen {
				t.Errorf("bad subtree name %q", s.Name)
			}
			seen[s.Name] = true
		}
	})
}

func FuzzDecodeLUO(f *testing.F) {
	seedTestdata(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		l := fuzzDecode(t, b, DecodeLUO, encodeLUO)
		if l == nil {
			return
		}
		switch l.ABI {
		case LUOv5:
			le := binary.LittleEndian
			if len(b) < luoSerSize || !bytes.HasPrefix(b, []byte("luo-v5\x00")) ||
				l.LiveUpdateNumber != le.Uint64(b[8:]) || uint64(l.SessionsPA) != le.Uint64(b[16:]) ||
				uint64(l.FLBsPA) != le.Uint64(b[24:]) || l.SessionCompatible != "" || l.SessionHeaderPA != 0 {
				t.Errorf("inconsistent luo-v5 %+v from % x", l, b)
			}
		case LUOv1:
			if !isFDT(b) || (l.SessionCompatible != luoSessionV1 && l.SessionCompatible != luoSessionV2) ||
				l.SessionsPA != 0 || l.FLBsPA != 0 {
				t.Errorf("inconsistent luo-v1 %+v", l)
			}
		default:
			t.Errorf("ABI %q", l.ABI)
		}
	})
}

func FuzzDecodeKexecMetadata(f *testing.F) {
	seedTestdata(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m := fuzzDecode(t, b, DecodeKexecMetadata, encodeKexecMetadata)
		if m == nil {
			return
		}
		if len(b) < kexecMetadataV1Size || m.Version != KexecMetadataVersion ||
			m.KexecCount != binary.LittleEndian.Uint32(b[kexecCountOffset:]) ||
			len(m.PreviousRelease) >= kexecReleaseLen || strings.ContainsRune(m.PreviousRelease, 0) ||
			!bytes.HasPrefix(b[4:], []byte(m.PreviousRelease)) {
			t.Errorf("inconsistent %+v from % x", m, b)
		}
	})
}

// fuzzHazards are inputs aimed at u-root's FDT parser, which trusts header
// sizes (allocating up to 4 GiB), builds node names byte by byte and
// allocates property values before reading them. They are kept as seed
// corpus in testdata/fuzz.
func fuzzHazards() map[string][]byte {
	deep := new(fdtAsm)
	for range 100 {
		deep.begin("n")
	}
	for range 100 {
		deep.end()
	}
	return map[string][]byte{
		"huge-totalsize":   asmRoot().fdt(asmStrs, header(1, 1<<30)),
		"huge-strings":     asmRoot().fdt(asmStrs, header(8, 0xffffffff)),
		"huge-struct":      asmRoot().fdt(asmStrs, header(9, 0xfffffff0)),
		"huge-prop":        new(fdtAsm).begin("").u32(fdtProp, 0xfffffff0, 0).end().u32(fdtEnd).fdt(asmStrs, nil),
		"long-name":        new(fdtAsm).begin(strings.Repeat("n", 4096)).end().u32(fdtEnd).fdt("", nil),
		"deep":             deep.u32(fdtEnd).fdt("", nil),
		"strings-at-end":   new(fdtAsm).begin("").end().u32(fdtEnd).fdt("", nil),
		"rsvmap-past-end":  asmRoot().fdt(asmStrs, header(4, 0xfffffff8)),
		"luo-v5-compat":    []byte("luo-v5\x00"),
		"metadata-version": le32(KexecMetadataVersion),
	}
}

// TestFuzzCorpus writes the hazards to testdata/fuzz with -update; go test
// runs them through the fuzz targets as seeds.
func TestFuzzCorpus(t *testing.T) {
	for _, target := range []string{"FuzzDecodeRoot", "FuzzDecodeLUO", "FuzzDecodeKexecMetadata"} {
		for name, b := range fuzzHazards() {
			path := filepath.Join("testdata", "fuzz", target, name)
			want := fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b)
			if *update {
				writeFile(t, path, want)
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s is stale or missing (run go test -update): %v", path, err)
			}
		}
	}
}
