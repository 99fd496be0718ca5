package kho

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// benchGolden reads testdata/<name>.bin and the result its .json expects
// into want.
func benchGolden(b *testing.B, name string, want any) []byte {
	b.Helper()
	blob, err := os.ReadFile(filepath.Join("testdata", name+".bin"))
	if err != nil {
		b.Fatal(err)
	}
	js, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		b.Fatal(err)
	}
	var g struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(js, &g); err != nil {
		b.Fatal(err)
	}
	if len(g.Result) == 0 {
		b.Fatalf("testdata/%s.json expects no result", name)
	}
	if err := json.Unmarshal(g.Result, want); err != nil {
		b.Fatal(err)
	}
	return blob
}

// benchDecode runs decode on testdata/<name>.bin and checks its last
// result against testdata/<name>.json.
func benchDecode[T any](b *testing.B, name string, decode func([]byte) (*T, error)) {
	want := new(T)
	blob := benchGolden(b, name, want)
	b.SetBytes(int64(len(blob)))
	b.ReportAllocs()
	var got *T
	var err error
	for b.Loop() {
		if got, err = decode(blob); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if !reflect.DeepEqual(got, want) {
		b.Fatalf("%s: decoded %+v, want %+v", name, got, want)
	}
}

func BenchmarkDecodeRoot(b *testing.B) {
	for _, name := range []string{"root-kho-v4", "root-kho-v4-page"} {
		b.Run(name, func(b *testing.B) { benchDecode(b, name, DecodeRoot) })
	}
}

func BenchmarkDecodeLUO(b *testing.B) {
	for _, name := range []string{"luo-v1-session-v1", "luo-v1-session-v2-page", "luo-v5"} {
		b.Run(name, func(b *testing.B) { benchDecode(b, name, DecodeLUO) })
	}
}

func BenchmarkDecodeKexecMetadata(b *testing.B) {
	benchDecode(b, "kexec-metadata-v1", DecodeKexecMetadata)
}
