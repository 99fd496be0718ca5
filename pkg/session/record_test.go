package session

import (
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
