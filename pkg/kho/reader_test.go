package kho

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// testdata/kho-in is laid out like /sys/kernel/debug/kho/in after a kexec
// from a 7.2 kernel: the root FDT and the LUO and kexec-metadata subtrees.
var khoIn = map[string]func() []byte{
	RootFile:                              func() []byte { return libfdtLayout(encodeRoot(goldenRoot), 0) },
	filepath.Join(SubtreeDir, SubtreeLUO): func() []byte { return goldenLUOv5 },
	filepath.Join(SubtreeDir, SubtreeKexecMetadata): func() []byte { return goldenMetadata },
}

func writeTree(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		writeFile(t, filepath.Join(dir, name), b)
	}
}

func handoverJSONBytes(t *testing.T, h *Handover) []byte {
	t.Helper()
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestReadDirGolden(t *testing.T) {
	dir := filepath.Join("testdata", "kho-in")
	if *update {
		for name, blob := range khoIn {
			writeFile(t, filepath.Join(dir, name), blob())
		}
	}
	h, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.RootErr != nil || h.LUOErr != nil || h.KexecMetadataErr != nil {
		t.Fatalf("errors: %v, %v, %v", h.RootErr, h.LUOErr, h.KexecMetadataErr)
	}
	if s, ok := h.Root.Subtree(SubtreeLUO); !ok || s.BlobSize != uint64(len(h.Blobs[SubtreeLUO])) {
		t.Errorf("LUO subtree %+v, blob of %d bytes", s, len(h.Blobs[SubtreeLUO]))
	}
	got := handoverJSONBytes(t, h)
	golden := filepath.Join("testdata", "kho-in.json")
	if *update {
		writeFile(t, golden, got)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestReadDirNoHandover(t *testing.T) {
	_, err := ReadDir(filepath.Join(t.TempDir(), "in"))
	if !errors.Is(err, ErrNoHandover) {
		t.Fatalf("got %v, want ErrNoHandover", err)
	}
	if err := Save(filepath.Join(t.TempDir(), "in"), filepath.Join(t.TempDir(), "out")); !errors.Is(err, ErrNoHandover) {
		t.Fatalf("Save: got %v, want ErrNoHandover", err)
	}
}

func TestReadDirNotDir(t *testing.T) {
	f := filepath.Join(t.TempDir(), "in")
	writeFile(t, f, nil)
	if _, err := ReadDir(f); err == nil || errors.Is(err, ErrNoHandover) {
		t.Fatalf("got %v, want a not-a-directory error", err)
	}
}

// One bad blob must not hide the others.
func TestReadDirIndependentBlobs(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string][]byte{
		RootFile:                              []byte("garbage"),
		filepath.Join(SubtreeDir, SubtreeLUO): encodeLUOv5("luo-v9", 1, 2, 3),
		filepath.Join(SubtreeDir, SubtreeKexecMetadata): goldenMetadata,
		filepath.Join(SubtreeDir, "memblock"):           []byte("other"),
	})
	if err := os.Mkdir(filepath.Join(dir, SubtreeDir, "not-a-blob"), 0o755); err != nil {
		t.Fatal(err)
	}
	h, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.Root != nil || !errors.Is(h.RootErr, ErrUnknownABI) {
		t.Errorf("root: %v, %v", h.Root, h.RootErr)
	}
	var ue *UnknownABIError
	if h.LUO != nil || !errors.As(h.LUOErr, &ue) || ue.Found != `struct luo_ser compatible "luo-v9"` {
		t.Errorf("LUO: %v, %v", h.LUO, h.LUOErr)
	}
	if h.KexecMetadata == nil || h.KexecMetadata.KexecCount != 3 || h.KexecMetadataErr != nil {
		t.Errorf("kexec metadata: %v, %v", h.KexecMetadata, h.KexecMetadataErr)
	}
	if string(h.Blobs["memblock"]) != "other" || len(h.Blobs) != 3 {
		t.Errorf("blobs: %q", h.Blobs)
	}
	j := handoverJSONBytes(t, h)
	for _, s := range []string{`"root_error": "kho: KHO root FDT is of no known ABI`, `"luo_error": "kho: LUO is of no known ABI`, `"memblock": 5`} {
		if !bytes.Contains(j, []byte(s)) {
			t.Errorf("JSON lacks %s:\n%s", s, j)
		}
	}
}

// A handover without LUO or kexec metadata, and a missing root FDT.
func TestReadDirAbsentBlobs(t *testing.T) {
	dir := t.TempDir()
	h, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.LUO != nil || h.LUOErr != nil || h.KexecMetadata != nil || h.KexecMetadataErr != nil {
		t.Errorf("absent subtrees decoded: %+v", h)
	}
	if !errors.Is(h.RootErr, os.ErrNotExist) {
		t.Errorf("RootErr = %v, want ErrNotExist", h.RootErr)
	}
}

func TestReadDirOversized(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string][]byte{filepath.Join(SubtreeDir, SubtreeLUO): make([]byte, MaxBlobSize+100)})
	h, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(h.LUOErr, ErrOversized) || len(h.Blobs[SubtreeLUO]) != MaxBlobSize+1 {
		t.Errorf("LUOErr = %v, blob of %d bytes", h.LUOErr, len(h.Blobs[SubtreeLUO]))
	}
}

// A saved copy decodes as the original.
func TestSave(t *testing.T) {
	for _, src := range []string{filepath.Join("testdata", "kho-in"), t.TempDir()} {
		dst := filepath.Join(t.TempDir(), "state", "saved")
		if err := Save(src, dst); err != nil {
			t.Fatal(err)
		}
		a, err := ReadDir(src)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ReadDir(dst)
		if err != nil {
			t.Fatal(err)
		}
		// Errors name the files they are about; compare all but the directory.
		ja := bytes.ReplaceAll(handoverJSONBytes(t, a), []byte(src), []byte("DIR"))
		jb := bytes.ReplaceAll(handoverJSONBytes(t, b), []byte(dst), []byte("DIR"))
		if !bytes.Equal(ja, jb) {
			t.Errorf("saved copy of %s decodes differently:\n%s\n%s", src, ja, jb)
		}
		if !bytes.Equal(a.FDT, b.FDT) || len(a.Blobs) != len(b.Blobs) {
			t.Errorf("raw blobs differ")
		}
		for name, blob := range a.Blobs {
			if !bytes.Equal(blob, b.Blobs[name]) {
				t.Errorf("blob %s differs", name)
			}
		}
	}
}

func TestSaveExistingDst(t *testing.T) {
	dst := t.TempDir()
	writeFile(t, filepath.Join(dst, "keep"), []byte("x"))
	if err := Save(filepath.Join("testdata", "kho-in"), dst); err == nil {
		t.Fatal("Save over a non-empty directory succeeded")
	}
	if b, err := os.ReadFile(filepath.Join(dst, "keep")); err != nil || string(b) != "x" {
		t.Errorf("dst changed: %q, %v", b, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dst))
	if len(entries) != 1 {
		t.Errorf("temporary copy left behind: %v", entries)
	}
}
