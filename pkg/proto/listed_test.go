package proto

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestListedBytes: ListedBytes is never below what encoding/json writes
// for a FileInfo (and a comma), and is exact for a label that needs no
// escape, ASCII or not.
func TestListedBytes(t *testing.T) {
	for _, f := range []FileInfo{
		{},
		{Token: 1, Size: 4096},
		{Token: math.MaxUint64, Size: math.MaxInt64, Label: "guest-ram-0"},
		{Token: 7, Label: `a"b\c<d>e&f`},
		{Token: 8, Label: "\x00\x1f\n\u2028\u2029ünï\xff"},
		{Token: 9, Size: -1, Label: "x"},
		{Token: 10, Label: strings.Repeat("é", 127)},
		{Token: 11, Label: "日本語のラベル🙂"},
	} {
		b, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		got, enc := f.ListedBytes(), len(b)+1
		if got < enc {
			t.Errorf("%+v: ListedBytes %d, but encoded with its comma it takes %d (%s)", f, got, enc, b)
		}
		plain := utf8.ValidString(f.Label) && !strings.ContainsAny(f.Label, "\"\\<>&\u2028\u2029")
		for _, r := range f.Label {
			plain = plain && r >= 0x20
		}
		if plain && got != enc {
			t.Errorf("%+v: ListedBytes %d, want exactly %d (%s)", f, got, enc, b)
		}
	}
}

// FuzzListedBytes: for any label, ListedBytes bounds encoding/json's
// output from above.
func FuzzListedBytes(f *testing.F) {
	for _, s := range []string{"", "ram-0", "<&>", "\xff\xfe", "\u2028", "é日🙂", "\x00\n\t"} {
		f.Add(uint64(1), int64(4096), s)
	}
	f.Fuzz(func(t *testing.T, token uint64, size int64, label string) {
		fi := FileInfo{Token: token, Size: size, Label: label}
		b, err := json.Marshal(fi)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.ListedBytes(); got < len(b)+1 {
			t.Fatalf("%q: ListedBytes %d < %d encoded", label, got, len(b)+1)
		}
	})
}
