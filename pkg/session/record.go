package session

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// A custody record (Record) is kept as a log, in a memfd in systemd's fd
// store (NewRecordFile) or, without one, in luod's state directory
// (CreateRecordFile): its first line is a whole record, as Encode writes it, and every line after
// it one change, RecordChange's: the new state of one session, or its
// removal. A change costs one short append instead of rewriting every
// session, so keeping the record costs O(1) a change, not O(sessions);
// RecordFile rewrites the whole (compacts) once the changes outweigh it.
// ReadRecord replays the lines; a last line cut short by a luod killed
// while appending is ignored, since the change it began was never
// answered.

// recordChange is one line after the first.
type recordChange struct {
	Set *ManifestSession `json:"set,omitempty"`
	Del string           `json:"del,omitempty"`
}

// RecordChange is the line that brings a record up to date with session
// name: its entry as Record lists it, or its removal when Record would
// not list it (gone, finished, or not yet created). gone reports the
// removal, decided whatever err: luod holds no fd of the session (Holds
// is false).
func (c *Custody) RecordChange(name string) (line []byte, gone bool, err error) {
	c.mu.Lock()
	var ms []ManifestSession
	if e := c.byName[name]; e != nil && !e.creating && e.h != nil && e.s.State != StateFinished {
		ms = c.sessionsOf([]*entry{e}, true)
	}
	c.mu.Unlock()
	ch := recordChange{Del: name}
	if len(ms) == 1 {
		one := (&Manifest{Format: FormatV1, Sessions: ms}).normalized()
		if err := one.validate(); err != nil {
			return nil, false, err
		}
		ch = recordChange{Set: &one.Sessions[0]}
	}
	b, err := json.Marshal(ch)
	if err != nil {
		return nil, ch.Set == nil, err
	}
	return append(b, '\n'), ch.Set == nil, nil
}

// DecodeRecord reads a record log: the whole record on the first line
// (DecodeManifest's rules), then the changes in order. Sessions end up
// sorted by name and the result is validated as a manifest is.
func DecodeRecord(b []byte) (*Manifest, error) {
	first, rest, _ := bytes.Cut(b, []byte("\n"))
	m, err := DecodeManifest(first)
	if err != nil {
		return nil, err
	}
	if len(rest) == 0 {
		return m, nil
	}
	byName := make(map[string]ManifestSession, len(m.Sessions))
	for _, s := range m.Sessions {
		byName[s.Name] = s
	}
	for len(rest) > 0 {
		var line []byte
		var whole bool
		line, rest, whole = bytes.Cut(rest, []byte("\n"))
		if !whole {
			break // cut short: its change was never answered
		}
		var ch recordChange
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ch); err != nil {
			return nil, &ManifestError{Field: "record change", Err: err}
		}
		switch {
		case ch.Set != nil:
			byName[ch.Set.Name] = *ch.Set
		case ch.Del != "":
			delete(byName, ch.Del)
		default:
			return nil, manifestErrorf("record change", "neither set nor del")
		}
	}
	m.Sessions = m.Sessions[:0]
	for _, s := range byName {
		m.Sessions = append(m.Sessions, s)
	}
	slices.SortFunc(m.Sessions, func(a, b ManifestSession) int { return strings.Compare(a.Name, b.Name) })
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// ReadRecord decodes the record log in f (DecodeRecord), read from
// offset 0. A plain manifest, as ReadMemfd reads, is a record without
// changes.
func ReadRecord(f *os.File) (*Manifest, error) {
	b, err := io.ReadAll(io.LimitReader(io.NewSectionReader(f, 0, 4*MaxManifestSize), 4*MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", f.Name(), err)
	}
	if len(b) > 4*MaxManifestSize {
		return nil, &ManifestError{Err: fmt.Errorf("%w: record of more than %d bytes", ErrManifestTooLarge, 4*MaxManifestSize)}
	}
	return DecodeRecord(b)
}

// RecordFileName is the record log CreateRecordFile keeps in luod's state
// directory.
const RecordFileName = "record.log"

// RecordFile is a record log, in a memfd for systemd's fd store (luod
// stores File once and appends changes to it, and the stored fd, the same
// open file, sees them) or in a file of luod's state directory
// (CreateRecordFile).
type RecordFile struct {
	f           *os.File
	name        string
	size, whole int64 // bytes written; of them, the whole record's
}

// CreateRecordFile writes m, a Record, as the first line of a new record
// log dir/RecordFileName, in place of the last one: written to a
// temporary file and renamed over it, so that a luod killed meanwhile
// leaves the old log or the new one, whole. Neither this nor Append
// fsyncs: a SIGKILLed luod loses nothing it wrote (the page cache is the
// kernel's), and a power loss ends every session anyway; the manifest
// copy (WriteFile) is the durable one. The file is mode 0600: it names
// every user's sessions.
func CreateRecordFile(dir string, m *Manifest) (*RecordFile, error) {
	b, err := m.Encode()
	if err != nil {
		return nil, err
	}
	f, err := replaceFile(dir, RecordFileName, b, false, true)
	if err != nil {
		return nil, err
	}
	return &RecordFile{f: f, name: filepath.Join(dir, RecordFileName), size: int64(len(b)), whole: int64(len(b))}, nil
}

// LoadRecordFile reads dir/RecordFileName as ReadRecord does. A missing
// file gives an error matching fs.ErrNotExist.
func LoadRecordFile(dir string) (*Manifest, error) {
	f, err := os.Open(filepath.Join(dir, RecordFileName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := ReadRecord(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return m, nil
}

// OpenSessions is the manifest a record would have handed over: its open
// sessions, without their State, as the manifest copy holds them. A manifest
// (no State) is itself.
func (m *Manifest) OpenSessions() *Manifest {
	out := *m
	out.Sessions = nil
	for _, s := range m.Sessions {
		if s.State == StateOpen || s.State == "" {
			s.State = ""
			out.Sessions = append(out.Sessions, s)
		}
	}
	if out.Sessions == nil {
		out.Sessions = []ManifestSession{}
	}
	return &out
}

// File is the memfd to store.
func (r *RecordFile) File() *os.File { return r.f }

// Name is the file's name, for messages.
func (r *RecordFile) Name() string {
	if r.name != "" {
		return r.name
	}
	return r.f.Name()
}

// Append adds one RecordChange line with a single write (pwrite(2) at the
// end), so that a luod killed while appending leaves at most a last line
// cut short, which ReadRecord ignores.
func (r *RecordFile) Append(line []byte) error {
	n, err := r.f.WriteAt(line, r.size)
	r.size += int64(n)
	if err != nil {
		return fmt.Errorf("appending to the record %s: %w", r.Name(), err)
	}
	return nil
}

// Stale reports that the changes outweigh the whole record (and at least
// 64 KiB): time to write a new RecordFile. Compacting then keeps both the
// record's size and the cost of a change, amortized, bounded.
func (r *RecordFile) Stale() bool { return r.size-r.whole > max(r.whole, 64<<10) }

// Sync flushes the record to disk (fsync). luod calls it off the request
// path, before it writes the durable manifest copy.
func (r *RecordFile) Sync() error { return r.f.Sync() }

// Close closes luod's fd of the record.
func (r *RecordFile) Close() error { return r.f.Close() }
