package proto

import (
	"encoding/json"
	"math"
	"testing"
)

// TestListedBytes: ListedBytes is never below what encoding/json writes
// for a FileInfo (and a comma), and is exact for a label of plain ASCII.
func TestListedBytes(t *testing.T) {
	for _, f := range []FileInfo{
		{},
		{Token: 1, Size: 4096},
		{Token: math.MaxUint64, Size: math.MaxInt64, Label: "guest-ram-0"},
		{Token: 7, Label: `a"b\c<d>e&f`},
		{Token: 8, Label: "\x00\x1f\u2028ünï\xff"},
		{Token: 9, Size: -1, Label: "x"},
	} {
		b, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		got, enc := f.ListedBytes(), len(b)+1
		if got < enc {
			t.Errorf("%+v: ListedBytes %d, but encoded with its comma it takes %d (%s)", f, got, enc, b)
		}
		plain := true
		for i := 0; i < len(f.Label); i++ {
			if c := f.Label[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				plain = false
			}
		}
		if plain && got != enc {
			t.Errorf("%+v: ListedBytes %d, want exactly %d (%s)", f, got, enc, b)
		}
	}
}
