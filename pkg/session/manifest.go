package session

import (
	"github.com/luod/luod/pkg/proto"

	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// FormatV1 is the format string of the manifest this package writes and
// the only one DecodeManifest reads.
const FormatV1 = "luod-manifest-v1"

// MaxManifestSize bounds an encoded manifest. Encode refuses to produce a
// larger one (so WriteManifest fails with limit and the upgrade aborts
// before the reboot) and DecodeManifest refuses to read one.
const MaxManifestSize = 64 << 20

// ManifestFileName is the name of the readable copy WriteFile writes.
const ManifestFileName = "manifest.json"

// ErrManifestTooLarge is matched (errors.Is) by the errors for a manifest
// beyond MaxManifestSize.
var ErrManifestTooLarge = errors.New("manifest too large")

func isTooLarge(err error) bool { return errors.Is(err, ErrManifestTooLarge) }

// Manifest is luod's own record of the sessions it hands to the next
// kernel. It crosses the kexec as JSON in a sealed memfd, preserved in
// luod's reserved session ReservedName under ManifestToken; a readable
// copy is kept on disk (WriteFile), which tells a cold boot what was lost.
// The manifest, not the session's existence in the kernel, is what proves
// who owns a handed-over session.
type Manifest struct {
	// Format is FormatV1.
	Format string `json:"format"`
	// WrittenAt is when the manifest was taken, in UTC.
	WrittenAt time.Time `json:"written_at"`
	// Release is the uname release of the kernel that wrote it and BootID
	// that boot's /proc/sys/kernel/random/boot_id.
	Release string `json:"release"`
	BootID  string `json:"boot_id"`
	// ExpectedLiveUpdateNumber is the liveupdate number the next kernel
	// should report if it is the one this manifest was written for: the
	// writer's own number plus one. Recover compares the two.
	ExpectedLiveUpdateNumber uint64 `json:"expected_liveupdate_number"`
	// Sessions are the open sessions handed over, sorted by name.
	Sessions []ManifestSession `json:"sessions"`
}

// ManifestSession is one session in a manifest.
type ManifestSession struct {
	// State is set only in a custody record (Record): the session's state
	// when luod last wrote it down. A manifest that crosses the kexec
	// holds open sessions only and leaves it out.
	State   State             `json:"state,omitempty"`
	Name    string            `json:"name"`
	UID     uint32            `json:"uid"`
	GID     uint32            `json:"gid"`
	Labels  map[string]string `json:"labels,omitempty"`
	Files   []ManifestFile    `json:"files"`
	Created time.Time         `json:"created"`
}

// ManifestFile is one preserved file in a manifest; see File.
type ManifestFile struct {
	Token uint64 `json:"token"`
	Label string `json:"label"`
	Size  int64  `json:"size"`
}

// UnknownFormatError is a manifest whose format string this luod does not
// know: written by a newer (or foreign) luod.
type UnknownFormatError struct {
	Format string
}

func (e *UnknownFormatError) Error() string {
	f := e.Format
	if len(f) > 64 {
		f = f[:64] + "…"
	}
	return fmt.Sprintf("manifest format %q is unknown; this luod reads %q", f, FormatV1)
}

// ManifestError is a manifest that is not valid JSON of FormatV1, breaks
// one of its rules, or is too large.
type ManifestError struct {
	// Field is the path of the offending field, e.g.
	// "sessions[2].files[0].token", or "" for the whole document.
	Field string
	Err   error
}

func (e *ManifestError) Error() string {
	if e.Field == "" {
		return "invalid manifest: " + e.Err.Error()
	}
	return "invalid manifest: " + e.Field + ": " + e.Err.Error()
}

func (e *ManifestError) Unwrap() error { return e.Err }

func manifestErrorf(field, format string, args ...any) *ManifestError {
	return &ManifestError{Field: field, Err: fmt.Errorf(format, args...)}
}

// validate checks the rules of FormatV1: known format; every session name
// valid by ValidateName and unique; labels within MaxLabels,
// MaxLabelKeyLen, MaxLabelValueLen and UTF-8; tokens unique in their
// session; sizes not negative; times within years 0 to 9999.
func (m *Manifest) validate() error { return m.validateBut(nil) }

// validateBut is validate, taking the content of session i as valid
// where known[i] (names are still checked unique): it was validated when
// encoded the last time.
func (m *Manifest) validateBut(known []bool) error {
	if m.Format != FormatV1 {
		return &UnknownFormatError{Format: m.Format}
	}
	if !timeOK(m.WrittenAt) {
		return manifestErrorf("written_at", "year %d out of range", m.WrittenAt.UTC().Year())
	}
	names := make(map[string]struct{}, len(m.Sessions))
	for i, s := range m.Sessions {
		// Field paths are formatted only for an error: validate runs on
		// every encode and decode, over every file.
		at := func(field string) string { return fmt.Sprintf("sessions[%d]%s", i, field) }
		if err := proto.ValidateSessionName(s.Name); err != nil {
			return manifestErrorf(at(".name"), "%q: %v", s.Name, err)
		}
		if _, dup := names[s.Name]; dup {
			return manifestErrorf(at(".name"), "session %q listed twice", s.Name)
		}
		names[s.Name] = struct{}{}
		if known != nil && known[i] {
			continue
		}
		switch s.State {
		case "", StateOpen, StateIncoming, StateClaimed:
		default:
			return manifestErrorf(at(".state"), "%q is not open, incoming or claimed", s.State)
		}
		if _, why := labelsProblem(s.Labels); why != "" {
			return manifestErrorf(at(".labels"), "%s", why)
		}
		if !timeOK(s.Created) {
			return manifestErrorf(at(".created"), "year %d out of range", s.Created.UTC().Year())
		}
		toks := make(map[uint64]struct{}, len(s.Files))
		for j, f := range s.Files {
			fat := func(field string) string { return at(fmt.Sprintf(".files[%d]%s", j, field)) }
			if _, dup := toks[f.Token]; dup {
				return manifestErrorf(fat(".token"), "token %#x listed twice in session %q", f.Token, s.Name)
			}
			toks[f.Token] = struct{}{}
			if _, why := fileLabelProblem(f.Label); why != "" {
				return manifestErrorf(fat(".label"), "%s", why)
			}
			if f.Size < 0 {
				return manifestErrorf(fat(".size"), "negative: %d", f.Size)
			}
		}
	}
	return nil
}

// timeOK reports whether t can be encoded as RFC 3339 in UTC.
func timeOK(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 0 && y <= 9999
}

// normalized is a copy of m in the canonical form Encode writes: times in
// UTC, nil slices empty, empty label maps left out.
func (m *Manifest) normalized() *Manifest {
	n := *m
	n.WrittenAt = m.WrittenAt.UTC()
	n.Sessions = make([]ManifestSession, len(m.Sessions))
	for i, s := range m.Sessions {
		s.Created = s.Created.UTC()
		if len(s.Labels) == 0 {
			s.Labels = nil
		}
		if s.Files == nil {
			s.Files = []ManifestFile{}
		}
		n.Sessions[i] = s
	}
	return &n
}

// Encode is the manifest as compact JSON, deterministic: fields in struct
// order, label keys sorted, sessions and files in the order given (Manifest
// sorts sessions by name), times in UTC. It refuses a manifest that
// DecodeManifest would refuse, so luod never hands over one it cannot
// read back.
func (m *Manifest) Encode() ([]byte, error) { return m.encode(nil) }

// encodedSession is the encoding of a session of a manifest, b; with b
// nil, none (see Custody.encodingsLocked). It is not changed once shared.
type encodedSession struct{ b []byte }

// encode is Encode, the sessions encoded one by one and joined: where
// cache (if not nil; one per session) holds an encoding, it is taken as
// the encoding of that very session (the caller vouches for it), already
// validated; else cache is given a new one. The bytes are those of the
// manifest encoded whole.
func (m *Manifest) encode(cache []*encodedSession) ([]byte, error) {
	n := m.normalized()
	sessions := n.Sessions
	var known []bool
	size := 0
	if cache != nil {
		known = make([]bool, len(sessions))
		for i := range sessions {
			if known[i] = cache[i] != nil && cache[i].b != nil; known[i] {
				size += len(cache[i].b) + 1
			}
		}
	}
	if err := m.validateBut(known); err != nil {
		return nil, err
	}
	n.Sessions = nil
	head, err := marshal(n)
	if err != nil {
		return nil, err
	}
	const tail = `null}`
	if !bytes.HasSuffix(head, []byte(tail)) {
		return nil, &ManifestError{Err: fmt.Errorf("manifest encoded as %.40q…, not ending in its sessions", head)}
	}
	buf := make([]byte, 0, len(head)+size+4)
	buf = append(append(buf, head[:len(head)-len(tail)]...), '[')
	for i := range sessions {
		if i > 0 {
			buf = append(buf, ',')
		}
		s := &sessions[i]
		if known != nil && known[i] {
			buf = append(buf, cache[i].b...)
			continue
		}
		b, err := marshal(s)
		if err != nil {
			return nil, err
		}
		if cache != nil {
			cache[i] = &encodedSession{b: b}
		}
		buf = append(buf, b...)
	}
	buf = append(buf, "]}\n"...)
	if len(buf) > MaxManifestSize {
		return nil, &ManifestError{Err: fmt.Errorf("%w: %d bytes encoded, at most %d", ErrManifestTooLarge, len(buf), MaxManifestSize)}
	}
	return buf, nil
}

// marshal is v as compact JSON, HTML characters as they are.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, &ManifestError{Err: err}
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// DecodeManifest reads a manifest strictly: at most MaxManifestSize bytes,
// one JSON object and nothing after it, format FormatV1 (another gives
// *UnknownFormatError naming it, before the rest is looked at), no
// unknown fields, and the rules of FormatV1 (see Manifest.validate's
// list). Any other failure is a *ManifestError.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, &ManifestError{Err: fmt.Errorf("%w: %d bytes, at most %d", ErrManifestTooLarge, len(b), MaxManifestSize)}
	}
	// One strict pass does the work; the format is looked at on its own
	// (a second parse) only when that pass fails or finds no format, so
	// that a newer manifest is named as such rather than as a field this
	// luod does not know.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	err := dec.Decode(&m)
	if err != nil || m.Format != FormatV1 {
		if ferr := checkFormat(b); ferr != nil {
			return nil, ferr
		}
		if err == nil {
			err = errors.New("format mismatch") // unreachable: checkFormat saw FormatV1
		}
		return nil, &ManifestError{Err: err}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, manifestErrorf("", "data after top-level value")
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// checkFormat looks only at the format of the JSON object in b: nil when
// it is FormatV1, *UnknownFormatError for another, *ManifestError when b
// is no object with a format string.
func checkFormat(b []byte) error {
	var head struct {
		Format *string `json:"format"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return &ManifestError{Err: err}
	}
	if head.Format == nil {
		return manifestErrorf("format", "missing")
	}
	if *head.Format != FormatV1 {
		return &UnknownFormatError{Format: *head.Format}
	}
	return nil
}

// ReadMemfd decodes the manifest in f, read from offset 0 whatever f's
// position (a retrieved memfd keeps the position it had when preserved).
func ReadMemfd(f *os.File) (*Manifest, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("manifest memfd: %w", err)
	}
	if fi.Size() > MaxManifestSize {
		return nil, &ManifestError{Err: fmt.Errorf("%w: memfd of %d bytes, at most %d", ErrManifestTooLarge, fi.Size(), MaxManifestSize)}
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("reading manifest memfd: %w", err)
	}
	return DecodeManifest(b)
}

// WriteFile writes b, a manifest as Encode wrote it, to dir/manifest.json
// atomically: a temporary file in dir, renamed over the old copy. The
// copy is the very bytes that cross the kexec, compact JSON on one line
// (jq shows it indented); encoding it once more, or indenting it, would
// only add to the workloads' pause. With durable, the file is fsynced
// before the rename and dir after it; without, the caller makes it
// durable (the upgrade's sync(2) right after). The file is mode 0600: it
// names every user's sessions.
func WriteFile(dir string, b []byte, durable bool) error {
	_, err := replaceFile(dir, ManifestFileName, b, durable, false)
	return err
}

// replaceFile writes b to dir/name atomically: a temporary file in dir
// (mode 0600), renamed over the old one, so that a luod killed at any
// point leaves either the old file or the new one whole. With durable,
// the file is fsynced before the rename and dir after it. With keep, the
// new file is returned open for writing, else closed and nil.
func replaceFile(dir, name string, b []byte, durable, keep bool) (_ *os.File, err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(b); err != nil {
		return nil, err
	}
	if durable {
		if err = tmp.Sync(); err != nil {
			return nil, err
		}
	}
	if !keep {
		if err = tmp.Close(); err != nil {
			return nil, err
		}
	}
	if err = os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return nil, err
	}
	if durable {
		var d *os.File
		if d, err = os.Open(dir); err != nil {
			return nil, err
		}
		defer d.Close()
		if err = d.Sync(); err != nil {
			return nil, err
		}
	}
	if !keep {
		return nil, nil
	}
	return tmp, nil
}

// LoadFile reads dir/manifest.json as DecodeManifest does. A missing file
// gives an error matching fs.ErrNotExist: no copy was ever saved.
func LoadFile(dir string) (*Manifest, error) {
	f, err := os.Open(filepath.Join(dir, ManifestFileName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxManifestSize+1))
	if err != nil {
		return nil, err
	}
	m, err := DecodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return m, nil
}
