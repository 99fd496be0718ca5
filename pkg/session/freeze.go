package session

import (
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
)

// Freeze stops the custody for an upgrade commit. From its return until
// unfreeze is called, every mutating operation (Create, Preserve, Declare,
// Delete, RetrieveForClient, Reclaim, Finish) fails with busy ("upgrade in
// progress"); List, Get, Snapshot, Manifest and Overdue still work. Freeze
// first waits for the operations already running their ioctls, so the
// table then matches the kernel exactly and a manifest written now is
// true when the machine kexecs.
//
// Freezes nest: the custody thaws when every unfreeze has been called.
// unfreeze is idempotent. The last one also drops the reserved session
// written by WriteManifest (or PrewriteManifest): an aborted upgrade (barrier failed, reboot(2)
// refused, dry run) must not leave a manifest that the next mutation would
// make false. After a successful kexec nobody calls it.
func (c *Custody) Freeze() (unfreeze func()) {
	c.mu.Lock()
	c.frozen++
	for c.inflight > 0 {
		c.idle.Wait()
	}
	c.mu.Unlock()
	var once sync.Once
	return func() { once.Do(c.unfreeze) }
}

func (c *Custody) unfreeze() {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	c.frozen--
	var h Handle
	if c.frozen == 0 {
		h = c.takeReservedLocked()
	}
	c.mu.Unlock()
	if h != nil {
		h.Close()
	}
}

// touchLocked notes a change of the table, at e; c.mu is held. The
// encoding of e's manifest entry is dropped: every change of an entry ends
// here (end, insert, remove), so no change can leave a stale one. A
// manifest prewritten outside a freeze is no longer true after it: the
// reserved session is closed at once, so that the kernel never holds a
// stale manifest (a kexec started by someone else would carry it). Inside
// a freeze only the operations Freeze waits for change the table, and
// WriteManifest, seeing the generation moved, writes the manifest anew.
func (c *Custody) touchLocked(e *entry) {
	c.gen++
	e.enc = nil
	if c.frozen == 0 {
		if h := c.takeReservedLocked(); h != nil {
			h.Close()
		}
	}
}

// takeReservedLocked forgets the reserved session and returns it for the
// caller to close (nil if there is none); c.mu is held.
func (c *Custody) takeReservedLocked() Handle {
	h := c.reserved
	if c.reservedPause != nil {
		c.reservedPause.Close() // the kernel holds its own reference
	}
	c.reserved, c.reservedM, c.reservedB, c.reservedPause = nil, nil, nil, nil
	return h
}

// manifestCurrentLocked reports whether the reserved session holds the
// manifest of the table as it is; c.mu is held.
func (c *Custody) manifestCurrentLocked() bool {
	return c.reserved != nil && c.reservedGen == c.gen
}

// Frozen reports whether an upgrade holds the custody frozen.
func (c *Custody) Frozen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frozen > 0
}

// Manifest describes the sessions that the next live update will carry:
// every open session, sorted by name, with its files in order. Incoming,
// claimed and finished sessions are left out, because the kernel cannot
// preserve a retrieved session again; the next kexec discards them.
// expected is the liveupdate number the next kernel should report: the
// current one plus one. Release and BootID come from Config.
//
// A manifest taken outside Freeze may be stale by the time it is used;
// WriteManifest takes its own under the freeze.
func (c *Custody) Manifest(expected uint64) *Manifest {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, _ := c.manifestLocked(expected)
	return m
}

// EncodedManifest is Manifest and its encoding (Encode), for the copy on
// disk. Encoding it keeps each session's encoding for the next one, so
// that the manifest phase, in the workloads' pause, encodes only the
// sessions changed since the last copy.
func (c *Custody) EncodedManifest(expected uint64) (*Manifest, []byte, error) {
	c.mu.Lock()
	m, es := c.manifestLocked(expected)
	took := c.encodingsLocked(es)
	c.mu.Unlock()
	b, err := c.encodeCached(m, es, took)
	return m, b, err
}

// manifestLocked is the manifest of the open sessions and their entries,
// in the manifest's order; c.mu is held.
func (c *Custody) manifestLocked(expected uint64) (*Manifest, []*entry) {
	es := c.sortedLocked(func(e *entry) bool { return e.s.State == StateOpen })
	return c.manifestOf(expected, c.sessionsOf(es, false)), es
}

// encodingsLocked takes the encodings of es's sessions along with their
// manifest, for encodeCached; c.mu is held. An entry with none is given a
// mark, which a change drops: encodeCached keeps its encoding only where
// the mark is still there, so that it never keeps the encoding of a
// session changed since the manifest was taken.
func (c *Custody) encodingsLocked(es []*entry) []*encodedSession {
	took := make([]*encodedSession, len(es))
	for i, e := range es {
		if e.enc == nil {
			e.enc = new(encodedSession)
		}
		took[i] = e.enc
	}
	return took
}

// encodeCached is m.Encode, m listing the sessions of es in order, with
// the encoding of each session taken from took (encodingsLocked) where it
// has one, and kept in its entry otherwise. c.mu is not held.
func (c *Custody) encodeCached(m *Manifest, es []*entry, took []*encodedSession) ([]byte, error) {
	cache := slices.Clone(took)
	b, err := m.encode(cache)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	for i, e := range es {
		if cache[i] != took[i] && e.enc == took[i] {
			e.enc = cache[i]
		}
	}
	c.mu.Unlock()
	return b, nil
}

// manifestOf is a manifest of this boot listing sessions.
func (c *Custody) manifestOf(expected uint64, sessions []ManifestSession) *Manifest {
	return &Manifest{
		Format:                   FormatV1,
		WrittenAt:                c.cfg.Now().UTC(),
		Release:                  c.cfg.Release,
		BootID:                   c.cfg.BootID,
		ExpectedLiveUpdateNumber: expected,
		Sessions:                 sessions,
	}
}

// sessionsLocked lists the settled sessions that keep says to, sorted by
// name, as a manifest lists them (with their state if withState); c.mu is
// held.
func (c *Custody) sessionsLocked(keep func(*entry) bool, withState bool) []ManifestSession {
	return c.sessionsOf(c.sortedLocked(keep), withState)
}

// sortedLocked is the settled entries that keep says to, sorted by name;
// c.mu is held.
func (c *Custody) sortedLocked(keep func(*entry) bool) []*entry {
	var es []*entry
	for _, e := range c.byName {
		if !e.creating && keep(e) {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, func(a, b *entry) int { return strings.Compare(a.s.Name, b.s.Name) })
	return es
}

// sessionsOf lists es as a manifest lists them; c.mu is held.
func (c *Custody) sessionsOf(es []*entry, withState bool) []ManifestSession {
	out := make([]ManifestSession, 0, len(es))
	for _, e := range es {
		ms := ManifestSession{
			Name: e.s.Name, UID: e.s.UID, GID: e.s.GID,
			Labels:  maps.Clone(e.s.Labels),
			Files:   make([]ManifestFile, len(e.s.Files)),
			Created: e.s.Created.UTC(),
		}
		if withState {
			ms.State = e.s.State
		}
		for i, f := range e.s.Files {
			ms.Files[i] = ManifestFile(f)
		}
		out = append(out, ms)
	}
	return out
}

// Written is a manifest in luod's reserved session.
type Written struct {
	*Manifest
	// Bytes is its encoding, the bytes in the memfd, from which the
	// readable copy on disk is written without encoding it again.
	Bytes []byte
	// Reused is set when the manifest already in the reserved session
	// (PrewriteManifest) was still true and nothing was written.
	Reused bool
}

// WriteManifest takes the manifest of the frozen custody (see Manifest),
// writes it into a sealed memfd and preserves that in luod's reserved
// session ReservedName under ManifestToken, which luod keeps open so the
// kernel carries it over with the workloads' sessions. If the reserved
// session already holds the manifest of this very table for expected
// (PrewriteManifest, no change since), it is kept and nothing is written:
// the workloads' pause, in which this runs, then costs no kernel call.
// Otherwise the reserved session is dropped and written anew.
//
// It must be called between Freeze and unfreeze (else internal). A
// manifest larger than MaxManifestSize gives limit; the kernel refusing
// gives kernel; in both cases no reserved session remains, and the upgrade
// must abort.
func (c *Custody) WriteManifest(expected uint64) (Written, error) {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	if c.frozen == 0 || c.closed {
		c.mu.Unlock()
		return Written{}, errorf(CodeInternal, ReservedName, "WriteManifest outside Freeze")
	}
	return c.writeManifestLocked(expected)
}

// PrewriteManifest is WriteManifest outside a freeze, while the workloads
// still run: an upgrade calls it before its barrier, so that the manifest
// phase, in the workloads' pause, finds the manifest written and only
// checks that no session changed since. Any change of the table drops the
// prewritten manifest at once (the kernel never holds a stale one);
// DiscardManifest drops it when the upgrade does not go on.
//
// A change of the table while it writes gives busy and keeps nothing.
// It must not be called while frozen (internal).
func (c *Custody) PrewriteManifest(expected uint64) (Written, error) {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	if c.frozen > 0 || c.closed {
		c.mu.Unlock()
		return Written{}, errorf(CodeInternal, ReservedName, "PrewriteManifest while frozen or closed")
	}
	return c.writeManifestLocked(expected)
}

// writeManifestLocked is WriteManifest and PrewriteManifest with
// c.commitMu and c.mu held; it unlocks c.mu.
func (c *Custody) writeManifestLocked(expected uint64) (Written, error) {
	if c.manifestCurrentLocked() && c.reservedNext == expected {
		w := Written{Manifest: c.reservedM, Bytes: c.reservedB, Reused: true}
		c.mu.Unlock()
		return w, nil
	}
	m, es := c.manifestLocked(expected)
	took := c.encodingsLocked(es)
	gen := c.gen
	old := c.takeReservedLocked()
	c.mu.Unlock()
	if old != nil {
		old.Close()
	}

	h, pause, b, err := c.writeReserved(m, es, took)
	if err != nil {
		return Written{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		// Only outside a freeze: a session changed while the manifest
		// was written.
		h.Close()
		if pause != nil {
			pause.Close()
		}
		return Written{}, errorf(CodeBusy, ReservedName, "the sessions changed while the manifest was written")
	}
	c.reserved, c.reservedGen, c.reservedNext, c.reservedM, c.reservedB = h, gen, expected, m, b
	c.reservedPause = pause
	return Written{Manifest: m, Bytes: b}, nil
}

// pausePage preserves a page of zeros in the reserved session h under
// PauseToken and returns it open, for NotePause; nil if that fails. The
// page is a note, not part of the manifest: without it an upgrade goes
// on, and the next luod has no pause to report. The zeros are written, so
// that the page exists: PRESERVE_FD pins the pages there are.
func pausePage(h Handle) *os.File {
	f, err := newMemfd("luod-pause", make([]byte, pauseNoteSize))
	if err != nil {
		return nil
	}
	var perr error
	if err := withFD(f, func(fd int) { perr = h.PreserveFD(fd, PauseToken) }); err != nil || perr != nil {
		f.Close()
		return nil
	}
	return f
}

// NotePause writes note, cut to a page less one byte and NUL-padded, into
// the reserved session's pause page, for the next luod to report: the
// kernel carries what the page holds at the kexec. It is one pwrite(2),
// for the end of the pause, after what it reports was measured. It fails
// when no manifest is written or its page could not be preserved.
func (c *Custody) NotePause(note []byte) error {
	c.mu.Lock()
	p := c.reservedPause
	c.mu.Unlock()
	if p == nil {
		return errorf(CodeInternal, ReservedName, "no pause page: no manifest written, or its page not preserved")
	}
	var page [pauseNoteSize]byte
	copy(page[:pauseNoteSize-1], note)
	_, err := p.WriteAt(page[:], 0)
	return err
}

// writeReserved encodes m (listing the sessions of es, their encodings
// took) into a sealed memfd and preserves it in a new reserved session,
// returned open, with its pause page (pausePage: nil if it could not be
// preserved).
func (c *Custody) writeReserved(m *Manifest, es []*entry, took []*encodedSession) (Handle, *os.File, []byte, error) {
	b, err := c.encodeCached(m, es, took)
	var f *os.File
	if err == nil {
		f, err = sealedMemfd(b)
	}
	if err != nil {
		code := CodeInternal
		if isTooLarge(err) {
			code = CodeLimit
		}
		return nil, nil, nil, &Error{Code: code, Session: ReservedName, Err: err}
	}
	defer f.Close() // once preserved, the kernel holds its own reference
	h, err := c.dev.CreateSession(ReservedName)
	if err != nil {
		return nil, nil, nil, kernelError("CREATE_SESSION", ReservedName, 0, false, err)
	}
	var perr error
	if err := withFD(f, func(fd int) { perr = h.PreserveFD(fd, ManifestToken) }); err != nil {
		perr = err
	}
	if perr != nil {
		h.Close()
		e := kernelError("PRESERVE_FD", ReservedName, ManifestToken, true, perr)
		e.Code = CodeKernel
		return nil, nil, nil, e
	}
	return h, pausePage(h), b, nil
}

// DiscardManifest drops a manifest prewritten for an upgrade that does
// not go on (its barrier failed). Inside a freeze it does nothing: the
// last unfreeze drops the reserved session.
func (c *Custody) DiscardManifest() {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	var h Handle
	if c.frozen == 0 {
		h = c.takeReservedLocked()
	}
	c.mu.Unlock()
	if h != nil {
		h.Close()
	}
}

// DupReserved returns a close-on-exec duplicate of the reserved session
// written by WriteManifest, for systemd's fd store: on the orderly upgrade
// path luod exits before the kexec, and only the store keeps the session
// (and the manifest in it) open until the kernel serializes it. It fails
// with internal when no manifest is written.
func (c *Custody) DupReserved() (*os.File, error) {
	c.mu.Lock()
	h := c.reserved
	c.mu.Unlock()
	if h == nil {
		return nil, errorf(CodeInternal, ReservedName, "no manifest written")
	}
	return dupFile(h.File())
}
