package session

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestDecodeRecordReplaysChanges: a whole record, then a session changed,
// one added, one removed, and a last line cut short by a kill.
func TestDecodeRecordReplaysChanges(t *testing.T) {
	m := benchManifest(3, 2)
	whole, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	changed := m.Sessions[1]
	changed.Files = append(changed.Files, ManifestFile{Token: 99, Label: "more", Size: 4096})
	added := m.Sessions[0]
	added.Name = "vm-new"
	log := string(whole) +
		`{"set":` + mustJSON(t, changed) + "}\n" +
		`{"set":` + mustJSON(t, added) + "}\n" +
		`{"del":"vm-0002"}` + "\n" +
		`{"set":{"name":"vm-tor` // killed mid-append
	got, err := DecodeRecord([]byte(log))
	if err != nil {
		t.Fatal(err)
	}
	want := *m
	want.Sessions = []ManifestSession{m.Sessions[0], changed, added}
	if !reflect.DeepEqual(got, &want) {
		t.Fatalf("replayed record:\n%+v\nwant\n%+v", got.Sessions, want.Sessions)
	}

	if _, err := DecodeRecord([]byte(string(whole) + `{"set":{"name":"luod-x","files":[]}}` + "\n")); err == nil ||
		!strings.Contains(err.Error(), "name") {
		t.Fatalf("a change naming an invalid session: %v", err)
	}
	if _, err := DecodeRecord([]byte(string(whole) + `{"bogus":1}` + "\n")); err == nil {
		t.Fatal("a change of unknown shape was accepted")
	}
}

func mustJSON(t *testing.T, s ManifestSession) string {
	b, err := (&Manifest{Format: FormatV1, Sessions: []ManifestSession{s}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	// The one session, as Encode writes it.
	js := string(b)
	i := strings.Index(js, `"sessions":[`) + len(`"sessions":[`)
	return js[i : len(js)-len("]}\n")]
}

// TestRecordFileOnDisk: CreateRecordFile writes the whole record, Append
// adds changes LoadRecordFile replays, and a second CreateRecordFile
// (compaction) replaces the log whole, leaving no temporary file.
func TestRecordFileOnDisk(t *testing.T) {
	dir := t.TempDir()
	m := benchManifest(2, 1)
	r, err := CreateRecordFile(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Append([]byte(`{"del":"` + m.Sessions[0].Name + `"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	got, err := LoadRecordFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Sessions) != 1 || got.Sessions[0].Name != m.Sessions[1].Name {
		t.Fatalf("replayed %+v, want only %s", got.Sessions, m.Sessions[1].Name)
	}
	r.Close()
	r2, err := CreateRecordFile(dir, got)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	again, err := LoadRecordFile(dir)
	if err != nil || !reflect.DeepEqual(again, got) {
		t.Fatalf("after compaction: %+v, %v", again, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("files left in %s: %v", dir, ents)
	}
	if fi, _ := os.Stat(filepath.Join(dir, RecordFileName)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("record log mode %v, want 0600", fi.Mode().Perm())
	}
}
