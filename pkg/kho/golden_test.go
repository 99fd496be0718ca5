package kho

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/dt"
)

var update = flag.Bool("update", false, "regenerate testdata from the builders in the tests")

const pageSize = 4096

var (
	goldenRoot = &Root{
		Compatible:         KHOCompatible,
		PreservedMemoryMap: 0x1fe000000,
		Subtrees: []Subtree{
			{Name: SubtreeLUO, PreservedData: 0x1fd000000, BlobSize: luoSerSize},
			{Name: SubtreeKexecMetadata, PreservedData: 0x1fc000000, BlobSize: kexecMetadataV1Size},
		},
	}
	goldenLUOv5    = encodeLUOv5(LUOv5, 3, 0x1fb000000, 0x1fa000000)
	goldenMetadata = encodeKexecMetadata(&KexecMetadata{Version: 1, PreviousRelease: "7.2.0-luod", KexecCount: 3})
)

// goldenBlobs are the testdata/<name>.bin files. The prefix of a name picks
// the decoder: root-, luo- or kexec-metadata-.
var goldenBlobs = []struct {
	name string
	blob func() []byte
}{
	{"root-kho-v4", func() []byte { return libfdtLayout(encodeRoot(goldenRoot), 0) }},
	{"root-kho-v4-page", func() []byte { return libfdtLayout(encodeRoot(goldenRoot), pageSize) }},
	{"root-kho-v4-no-subtrees", func() []byte {
		return encodeRoot(&Root{Compatible: KHOCompatible, PreservedMemoryMap: 0x1000})
	}},
	{"root-kho-v3", func() []byte {
		return encodeRoot(&Root{Compatible: "kho-v3", PreservedMemoryMap: 0x1000})
	}},
	{"root-truncated", func() []byte { b := encodeRoot(goldenRoot); return b[:len(b)/2] }},
	{"root-be-u32-memory-map", func() []byte {
		return writeFDT(dt.NewNode("", dt.WithProperty(
			propStrings("compatible", KHOCompatible),
			dt.PropertyU32("preserved-memory-map", 0x1000))))
	}},
	{"root-missing-blob-size", func() []byte {
		return writeFDT(dt.NewNode("",
			dt.WithProperty(propStrings("compatible", KHOCompatible), propU64("preserved-memory-map", 0x1000)),
			dt.WithChildren(dt.NewNode(SubtreeLUO, dt.WithProperty(propU64("preserved-data", 0x2000))))))
	}},
	{"root-not-fdt", func() []byte { return []byte("compatible = \"kho-v4\";\n") }},

	{"luo-v1-session-v1", func() []byte {
		return writeFDT(luoV1Node(LUOv1, 2, luoSessionV1, 0x1f9000000))
	}},
	{"luo-v1-session-v2-page", func() []byte {
		return libfdtLayout(writeFDT(luoV1Node(LUOv1, 7, luoSessionV2, 0x1f8000000)), pageSize)
	}},
	{"luo-v5", func() []byte { return goldenLUOv5 }},
	{"luo-v5-truncated", func() []byte { return goldenLUOv5[:20] }},
	{"luo-v4-raw", func() []byte { return encodeLUOv5("luo-v4", 1, 2, 3) }},
	{"luo-v2-fdt", func() []byte { return writeFDT(luoV1Node("luo-v2", 2, luoSessionV2, 0x1000)) }},
	{"luo-v1-session-v3", func() []byte { return writeFDT(luoV1Node(LUOv1, 2, "luo-session-v3", 0x1000)) }},
	{"luo-v1-be-u32-liveupdate-number", func() []byte {
		n := luoV1Node(LUOv1, 0, luoSessionV2, 0x1000)
		n.UpdateProperty("liveupdate-number", dt.PropertyU32("", 2).Value)
		return writeFDT(n)
	}},
	{"luo-v1-be-region-session-header", func() []byte {
		n := luoV1Node(LUOv1, 2, luoSessionV2, 0)
		n.Children[0].UpdateProperty("luo-session-header", dt.PropertyRegion("", 0x1000, 0x1000).Value)
		return writeFDT(n)
	}},
	{"luo-v1-missing-session", func() []byte {
		return writeFDT(dt.NewNode("", dt.WithProperty(
			propStrings("compatible", LUOv1), propU64("liveupdate-number", 2))))
	}},
	{"luo-fdt-truncated", func() []byte {
		b := writeFDT(luoV1Node(LUOv1, 2, luoSessionV2, 0x1000))
		return b[:len(b)-8]
	}},
	{"luo-neither-elf", func() []byte {
		return append([]byte("\x7fELF\x02\x01\x01\x00"), make([]byte, 56)...)
	}},
	{"luo-empty", func() []byte { return []byte{} }},

	{"kexec-metadata-v1", func() []byte { return goldenMetadata }},
	{"kexec-metadata-v1-trailing", func() []byte { return append(append([]byte{}, goldenMetadata...), 0xff, 0xff, 0xff) }},
	{"kexec-metadata-v1-no-nul", func() []byte {
		b := append([]byte{}, goldenMetadata...)
		copy(b[4:4+kexecReleaseLen], strings.Repeat("r", kexecReleaseLen))
		return b
	}},
	{"kexec-metadata-v2", func() []byte {
		return encodeKexecMetadata(&KexecMetadata{Version: 2, PreviousRelease: "7.9.0", KexecCount: 1})
	}},
	{"kexec-metadata-truncated", func() []byte { return goldenMetadata[:40] }},
	{"kexec-metadata-short", func() []byte { return goldenMetadata[:2] }},
}

// decoderFor returns the decoder of a golden blob, by name prefix.
func decoderFor(name string) (func([]byte) (any, error), error) {
	switch {
	case strings.HasPrefix(name, "root-"):
		return func(b []byte) (any, error) { return DecodeRoot(b) }, nil
	case strings.HasPrefix(name, "luo-"):
		return func(b []byte) (any, error) { return DecodeLUO(b) }, nil
	case strings.HasPrefix(name, "kexec-metadata-"):
		return func(b []byte) (any, error) { return DecodeKexecMetadata(b) }, nil
	}
	return nil, fmt.Errorf("no decoder for %q", name)
}

// goldenJSON is the content of testdata/<name>.json.
type goldenJSON struct {
	Result any    `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

func marshalGolden(v any, err error) []byte {
	g := goldenJSON{Result: v}
	if err != nil {
		g = goldenJSON{Error: err.Error()}
	}
	b, merr := json.MarshalIndent(g, "", "  ")
	if merr != nil {
		panic(merr)
	}
	return append(b, '\n')
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenBlobs {
		t.Run(tc.name, func(t *testing.T) {
			decode, err := decoderFor(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			binPath := filepath.Join("testdata", tc.name+".bin")
			jsonPath := filepath.Join("testdata", tc.name+".json")
			if *update {
				writeFile(t, binPath, tc.blob())
			}
			b, err := os.ReadFile(binPath)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(b, tc.blob()) {
				t.Errorf("%s differs from what the test builds; run go test -update", binPath)
			}
			got := marshalGolden(decode(b))
			if *update {
				writeFile(t, jsonPath, got)
			}
			want, err := os.ReadFile(jsonPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("decoding %s:\ngot  %s\nwant %s", binPath, got, want)
			}
		})
	}
}

// The kernel hands over a page-sized blob holding a smaller FDT; the bytes
// past totalsize must not matter.
func TestTrailingBytesIgnored(t *testing.T) {
	for _, pair := range [][2]string{
		{"root-kho-v4", "root-kho-v4-page"},
		{"kexec-metadata-v1", "kexec-metadata-v1-trailing"},
	} {
		a, _ := os.ReadFile(filepath.Join("testdata", pair[0]+".json"))
		b, _ := os.ReadFile(filepath.Join("testdata", pair[1]+".json"))
		if !bytes.Equal(a, b) {
			t.Errorf("%s and %s decode differently:\n%s\n%s", pair[0], pair[1], a, b)
		}
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
