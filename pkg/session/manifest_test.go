package session

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func sampleManifest() *Manifest {
	return &Manifest{
		Format:                   FormatV1,
		WrittenAt:                time.Date(2026, 3, 1, 12, 0, 0, 5, time.FixedZone("CET", 3600)),
		Release:                  "7.2.0",
		BootID:                   "6f1e8d7c-0000-4000-8000-000000000001",
		ExpectedLiveUpdateNumber: 3,
		Sessions: []ManifestSession{
			{Name: "vm-a", UID: 1000, GID: 1000, Labels: map[string]string{"z": "1", "a": "<&>"},
				Files: []ManifestFile{{Token: 2, Label: "ram", Size: 1 << 30}, {Token: 1, Label: "dev", Size: 0}}, Created: t0},
			{Name: "vm-b", UID: 2000, GID: 2000, Created: t0},
		},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := sampleManifest()
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := m.Encode()
	if !bytes.Equal(b, b2) {
		t.Fatal("Encode is not deterministic")
	}
	for _, want := range []string{`"format":"luod-manifest-v1"`, `"written_at":"2026-03-01T11:00:00.000000005Z"`,
		`"labels":{"a":"<&>","z":"1"}`, `"files":[{"token":2,"label":"ram","size":1073741824},{"token":1`, `"name":"vm-b","uid":2000,"gid":2000,"files":[]`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("encoding lacks %s:\n%s", want, b)
		}
	}
	d, err := DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	b3, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, b3) {
		t.Fatalf("round trip changed the manifest:\n%s\n%s", b, b3)
	}
}

func TestDecodeManifestErrors(t *testing.T) {
	valid := func(edit func(m *Manifest)) string {
		m := sampleManifest()
		edit(m)
		b, err := json.Marshal(m.normalized()) // unvalidated, unlike Encode
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "unexpected end"},
		{"not an object", `[1]`, "cannot unmarshal"},
		{"null", `null`, "format: missing"},
		{"no format", `{"sessions":[]}`, "format: missing"},
		{"format not a string", `{"format":1}`, "cannot unmarshal"},
		{"unknown format", `{"format":"luod-manifest-v2","whatever":true}`, `manifest format "luod-manifest-v2" is unknown`},
		{"unknown field", `{"format":"luod-manifest-v1","extra":1}`, `unknown field "extra"`},
		{"trailing data", `{"format":"luod-manifest-v1"} {}`, "after top-level value"},
		{"token not integer", `{"format":"luod-manifest-v1","sessions":[{"name":"a","files":[{"token":1.5}]}]}`, "cannot unmarshal"},
		{"bad name", valid(func(m *Manifest) { m.Sessions[0].Name = "luod-x" }), "sessions[0].name"},
		{"duplicate name", valid(func(m *Manifest) { m.Sessions[1].Name = "vm-a" }), "listed twice"},
		{"duplicate token", valid(func(m *Manifest) { m.Sessions[0].Files[1].Token = 2 }), "sessions[0].files[1].token"},
		{"negative size", valid(func(m *Manifest) { m.Sessions[0].Files[0].Size = -1 }), "negative"},
		{"long label", valid(func(m *Manifest) { m.Sessions[0].Files[0].Label = strings.Repeat("x", 256) }), "files[0].label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeManifest([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeManifest = %v, want %q", err, tc.want)
			}
			var me *ManifestError
			var ue *UnknownFormatError
			if !errors.As(err, &me) && !errors.As(err, &ue) {
				t.Fatalf("%T is neither *ManifestError nor *UnknownFormatError", err)
			}
		})
	}
	_, err := DecodeManifest([]byte(`{"format":"luod-manifest-v2"}`))
	var ue *UnknownFormatError
	if !errors.As(err, &ue) || ue.Format != "luod-manifest-v2" {
		t.Fatalf("%v", err)
	}
	if _, err := DecodeManifest(make([]byte, MaxManifestSize+1)); !errors.Is(err, ErrManifestTooLarge) {
		t.Fatalf("%v", err)
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	m := sampleManifest()
	m.Sessions[1].Name = "vm-a"
	if _, err := m.Encode(); err == nil {
		t.Fatal("Encode wrote a manifest DecodeManifest refuses")
	}
	if _, err := (&Manifest{}).Encode(); err == nil {
		t.Fatal("Encode wrote a manifest without format")
	}
}

func TestSaveLoadFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadFile(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadFile of nothing: %v", err)
	}
	m := sampleManifest()
	if err := saveFile(dir, m); err != nil {
		t.Fatal(err)
	}
	m.ExpectedLiveUpdateNumber = 4
	if err := saveFile(dir, m); err != nil { // replaces
		t.Fatal(err)
	}
	got, err := LoadFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.ExpectedLiveUpdateNumber != 4 || len(got.Sessions) != 2 {
		t.Fatalf("loaded %+v", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("dir holds %v", ents)
	}
	fi, _ := os.Stat(filepath.Join(dir, ManifestFileName))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	raw, _ := os.ReadFile(filepath.Join(dir, ManifestFileName))
	if enc, _ := m.Encode(); !bytes.Equal(raw, enc) {
		t.Fatalf("disk copy is not the manifest's encoding:\n%s\nwant\n%s", raw, enc)
	}
	os.WriteFile(filepath.Join(dir, ManifestFileName), []byte(`{"format":"x"}`), 0o600)
	if _, err := LoadFile(dir); err == nil || !strings.Contains(err.Error(), ManifestFileName) {
		t.Fatalf("LoadFile of a bad copy: %v", err)
	}
	if err := saveFile(filepath.Join(dir, "missing"), m); err == nil {
		t.Fatal("saveFile into a missing dir")
	}
}

// FuzzDecodeManifest: DecodeManifest never panics, and what it accepts
// encodes to a canonical form that decodes and encodes to itself.
func FuzzDecodeManifest(f *testing.F) {
	b, _ := sampleManifest().Encode()
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeManifest(in)
		if err != nil {
			return
		}
		b1, err := m.Encode()
		if err != nil {
			t.Fatalf("accepted manifest does not encode: %v", err)
		}
		m2, err := DecodeManifest(b1)
		if err != nil {
			t.Fatalf("encoding does not decode: %v\n%s", err, b1)
		}
		b2, err := m2.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b1, b2) {
			t.Fatalf("not canonical:\n%s\n%s", b1, b2)
		}
	})
}

// wholeEncoding is the manifest encoded in one piece, as Encode did
// before it joined sessions: what encode must still write, byte for byte.
func wholeEncoding(t *testing.T, m *Manifest) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m.normalized()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestEncodeJoinsSessions(t *testing.T) {
	for _, m := range []*Manifest{sampleManifest(), {Format: FormatV1, WrittenAt: t0}} {
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, "joined encoding", b, wholeEncoding(t, m))
	}
}

// TestEncodedManifestCache changes sessions between encodings: each
// encoding must be the whole manifest's, the unchanged sessions' taken
// from the cache.
func TestEncodedManifestCache(t *testing.T) {
	h := newHost(t, Config{})
	alice := Caller{UID: 1000, GID: 1000}
	for _, name := range []string{"vm-a", "vm-b", "vm-c"} {
		mustCreate(t, h.c, alice, name)
	}
	check := func(what string) []*encodedSession {
		t.Helper()
		m, b, err := h.c.EncodedManifest(7)
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, what, b, wholeEncoding(t, m))
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		var encs []*encodedSession
		for _, n := range []string{"vm-a", "vm-b", "vm-c"} {
			if e := h.c.byName[n]; e != nil {
				encs = append(encs, e.enc)
			}
		}
		return encs
	}
	first := check("first encoding")
	if err := h.c.Declare(alice, "vm-b", []FileDecl{{Token: 5, Label: "<ram>"}}); err != nil {
		t.Fatal(err)
	}
	second := check("after a declare into vm-b")
	if first[0] != second[0] || first[2] != second[2] {
		t.Error("unchanged sessions were encoded again")
	}
	if first[1] == second[1] {
		t.Error("vm-b's old encoding was used after its change")
	}
	if err := h.c.Delete(alice, "vm-a"); err != nil {
		t.Fatal(err)
	}
	check("after a delete")
}

// TestEncodedManifestCacheChangeWhileEncoding changes a session after its
// manifest was taken and before its encoding is kept: the encoding of the
// old session must not be kept for the new one.
func TestEncodedManifestCacheChangeWhileEncoding(t *testing.T) {
	h := newHost(t, Config{})
	alice := Caller{UID: 1000, GID: 1000}
	mustCreate(t, h.c, alice, "vm-a")
	h.c.mu.Lock()
	m, es := h.c.manifestLocked(7)
	took := h.c.encodingsLocked(es)
	h.c.mu.Unlock()
	if err := h.c.Declare(alice, "vm-a", []FileDecl{{Token: 5, Label: "ram"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.encodeCached(m, es, took); err != nil {
		t.Fatal(err)
	}
	m, b, err := h.c.EncodedManifest(7)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Sessions) != 1 || len(m.Sessions[0].Files) != 1 {
		t.Fatalf("manifest lists %+v, want vm-a with its declared file", m.Sessions)
	}
	equalBytes(t, "encoding after the change", b, wholeEncoding(t, m))
}

// saveFile writes m to dir/manifest.json as Encode writes it, durably: the
// manifest copy luod keeps.
func saveFile(dir string, m *Manifest) error {
	b, err := m.Encode()
	if err != nil {
		return err
	}
	return WriteFile(dir, b, true)
}
