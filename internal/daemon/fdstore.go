package daemon

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/luod/luod/internal/systemd"
	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/session"
)

// FDStore keeps fds for luod across its own restarts: systemd's fd store
// (FDSTORE=1 / FDSTOREREMOVE=1). A session lives while any fd of it is
// open, so a session fd in the store survives a luod that dies.
// StoreFDs and RemoveFDs are StoreFD and RemoveFD of many, in order, with
// few system calls (systemd.Notifier: sendmmsg(2)); they return how many
// were sent.
type FDStore interface {
	StoreFD(name string, f *os.File) error
	RemoveFD(name string) error
	StoreFDs(files []systemd.NamedFile) (int, error)
	RemoveFDs(names []string) (int, error)
}

// Inherited is what a previous luod of this boot left in the fd store and
// systemd passed back at start (LISTEN_FDNAMES).
type Inherited struct {
	// Sessions are session fds by session name.
	Sessions map[string]*os.File
	// Record is the memfd with luod's custody record (session.Record).
	Record *os.File
}

// recordFDName names the custody record in the fd store.
var recordFDName = systemd.FDName(systemd.KindManifest, "")

func sessionFDName(name string) string { return systemd.FDName(systemd.KindSession, name) }

// storeSessions puts duplicates of session fds (names[i], fds[i]) into
// the fd store in one batch, logging what it could not store: the
// custody's KeepFunc for new sessions.
func (d *Daemon) storeSessions(names []string, fds []*os.File) {
	err := d.storeSessionFiles(func(fn func(string, *os.File)) {
		for i, name := range names {
			fn(name, fds[i])
		}
	})
	if err != nil {
		d.log.Error("cannot put session fds into systemd's fd store: a crash of luod would lose the sessions",
			"sessions", len(names), "first", names[0], "err", err)
	}
}

// storeSessionFiles puts the session fds each yields (custody.EachFile or
// EachFileIn, for sessions luod holds) into the fd store in one batch,
// and returns the first error; without a store it does nothing. The
// files are used after each's lock is released: only for sessions no
// request can close meanwhile (new ones still busy, recovery before
// READY, the orderly path's pause under the freeze).
func (d *Daemon) storeSessionFiles(each func(fn func(name string, f *os.File))) error {
	if d.cfg.FDStore == nil {
		return nil
	}
	var files []systemd.NamedFile
	each(func(name string, f *os.File) {
		files = append(files, systemd.NamedFile{Name: sessionFDName(name), File: f})
	})
	if len(files) == 0 {
		return nil
	}
	if sent, err := d.cfg.FDStore.StoreFDs(files); err != nil {
		return fmt.Errorf("%d of %d sessions not stored: %w", len(files)-sent, len(files), err)
	}
	return nil
}

// unstoreSessions is unstoreSession of each name, in one batch: a
// reclaim_sessions request finishes many sessions at once.
func (d *Daemon) unstoreSessions(names []string) {
	if d.cfg.FDStore == nil || len(names) == 0 {
		return
	}
	fdnames := make([]string, len(names))
	for i, name := range names {
		fdnames[i] = sessionFDName(name)
	}
	if sent, err := d.cfg.FDStore.RemoveFDs(fdnames); err != nil {
		d.log.Warn("cannot remove session fds from systemd's fd store", "sessions", len(names)-sent,
			"first", names[sent], "err", err)
	}
}

func (d *Daemon) unstoreSession(name string) {
	if d.cfg.FDStore == nil {
		return
	}
	if err := d.cfg.FDStore.RemoveFD(sessionFDName(name)); err != nil {
		d.log.Warn("cannot remove the session fd from systemd's fd store", "session", name, "err", err)
	}
}

// storeRecord writes a whole new custody record, in place of the last
// one; changes are then appended to it (recordChange). With systemd's fd
// store it is a memfd in the store. Without one it is the record log in
// the state directory (session.CreateRecordFile): luod's only record
// across its own crash, which the next luod of this boot reads to name
// what was lost (loadDisk).
func (d *Daemon) storeRecord() {
	d.recordMu.Lock()
	defer d.recordMu.Unlock()
	if d.cfg.FDStore != nil {
		// A log left by a luod of this machine that ran without the
		// store would be stale; only the store's record is kept up to date.
		if err := os.Remove(d.recordPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("cannot remove the stale record log", "file", d.recordPath(), "err", err)
		}
	}
	d.storeRecordLocked()
}

func (d *Daemon) recordPath() string { return filepath.Join(d.cfg.StateDir, session.RecordFileName) }

func (d *Daemon) storeRecordLocked() {
	if d.record != nil {
		d.record.Close()
		d.record = nil
	}
	m := d.custody.Record(d.expectedNext())
	if d.cfg.FDStore == nil {
		r, err := session.CreateRecordFile(d.cfg.StateDir, m)
		if err != nil {
			// A full or read-only state directory: the manifest that
			// matters crosses the kexec in memory. The disk writer tries
			// again (saveDisk), not every change: rewriting the whole
			// record for each would cost O(sessions) a change.
			d.log.Warn("cannot write the manifest copy", "file", d.recordPath(), "err", err)
			return
		}
		d.record = r
		return
	}
	r, err := session.NewRecordFile(m)
	if err != nil {
		d.log.Error("cannot write the custody record", "err", err)
		return
	}
	d.cfg.FDStore.RemoveFD(recordFDName)
	if err := d.cfg.FDStore.StoreFD(recordFDName, r.File()); err != nil {
		d.log.Error("cannot put the custody record into systemd's fd store", "err", err)
		r.Close()
		return
	}
	d.record = r
}

// recordChange brings the record (storeRecord) up to date with the named
// sessions by appending one line each to it, with one write, before the client
// hears back: a luod killed after answering leaves the truth behind. No
// fsync: a SIGKILL loses no written page, and a power loss ends the
// sessions anyway. The whole record is rewritten only when the appended
// changes outweigh it, so a change costs O(1) amortized, not
// O(sessions). Before that, a session the line removes (luod no longer
// holds it) leaves systemd's fd store.
func (d *Daemon) recordChange(names ...string) {
	d.recordMu.Lock()
	defer d.recordMu.Unlock()
	var lines []byte
	var err error
	var gone []string
	for _, name := range names {
		line, g, lerr := d.custody.RecordChange(name)
		if g {
			gone = append(gone, name)
		}
		if err = cmp.Or(err, lerr); err == nil {
			lines = append(lines, line...)
		}
	}
	d.unstoreSessions(gone)
	switch {
	case d.record == nil && d.cfg.FDStore == nil:
		return // writing the log failed; the disk writer tries again
	case d.record == nil || d.record.Stale():
		d.storeRecordLocked()
		return
	case err == nil:
		err = d.record.Append(lines)
	}
	if err != nil {
		d.log.Warn("cannot append to the custody record; rewriting it whole", "sessions", names, "file", d.record.Name(), "err", err)
		d.storeRecordLocked()
	}
}

// syncRecord makes the record log as durable as the manifest copy about to
// be written, or writes it again after a failure (no record). It runs
// in the disk writer, off the request path.
func (d *Daemon) syncRecord() {
	if d.cfg.FDStore != nil {
		return
	}
	d.recordMu.Lock()
	if d.record == nil {
		d.storeRecordLocked()
	}
	r := d.record
	d.recordMu.Unlock()
	if r != nil {
		// Safe beside appends; a compaction closing r meanwhile leaves
		// its successor to the next write. After a power loss the newer
		// of the two files names the lost sessions (loadDisk).
		r.Sync()
	}
}

// bootState is what the first luod of a boot found, kept in the state
// directory so that a restarted luod reports the same continuity.
type bootState struct {
	BootID          string                `json:"boot_id"`
	Continuity      string                `json:"continuity"`
	Got             uint64                `json:"liveupdate_number"`
	Expected        uint64                `json:"expected_liveupdate_number"`
	PreviousRelease string                `json:"previous_release"`
	Lost            []session.LostSession `json:"lost_sessions"`
}

func (d *Daemon) bootStatePath() string { return filepath.Join(d.cfg.StateDir, "boot.json") }

func (d *Daemon) loadBootState() (*bootState, bool) {
	b, err := readFile(d.bootStatePath())
	if err != nil {
		return nil, false
	}
	var s bootState
	if json.Unmarshal(b, &s) != nil || s.BootID == "" || s.BootID != d.boot.bootID {
		return nil, false
	}
	return &s, true
}

func (d *Daemon) saveBootState() {
	if d.boot.bootID == "" {
		return
	}
	b, _ := json.MarshalIndent(bootState{BootID: d.boot.bootID, Continuity: d.rec.continuity, Got: d.rec.got,
		Expected: d.rec.expected, PreviousRelease: d.rec.previousRelease, Lost: d.rec.lost}, "", "  ")
	if err := writeFile(d.bootStatePath(), b, 0o644); err != nil {
		d.log.Warn("cannot record that this boot's handover was taken over", "file", d.bootStatePath(), "err", err)
	}
}

// adopt takes back, after a restart within the boot, the sessions the fd
// store kept, following the record the last instance stored with them.
func (d *Daemon) adopt(in Inherited) {
	var rec *session.Manifest
	if in.Record != nil {
		m, err := session.ReadRecord(in.Record)
		if err != nil {
			d.log.Error("the custody record from the fd store does not decode; stored sessions cannot be attributed", "err", err)
		}
		rec = m
		in.Record.Close()
	}
	if rec == nil {
		// Without the store's record: the record log in the state
		// directory (luod ran without the store), else the disk copy,
		// which lists the open sessions.
		rec = d.loadDisk(nil)
	}
	// A stored session the record does not name (luod died between storing
	// its fd and its record) is kept, owned by root, for an admin to look
	// at: better than dropping memory whose owner is unknown.
	named := map[string]bool{}
	if rec != nil {
		for _, ms := range rec.Sessions {
			named[ms.Name] = true
		}
	} else {
		rec = &session.Manifest{Format: session.FormatV1}
	}
	for name := range in.Sessions {
		if !named[name] {
			d.log.Error("stored session fd with no record: kept, owned by root, owner unknown", "session", name)
			rec.Sessions = append(rec.Sessions, session.ManifestSession{Name: name, State: session.StateOpen,
				Labels: map[string]string{"luod.orphan": "owner unknown after a restart"}, Files: []session.ManifestFile{}})
		}
	}
	adopted, lost, unknown := d.custody.Adopt(rec, in.Sessions, func(f *os.File, name string, retrieved bool) session.Handle {
		return ioctl.NewSession(d.cfg.Backend, f, name, retrieved)
	})
	for _, n := range adopted {
		d.log.Info("session taken back from systemd's fd store", "session", n)
	}
	for _, l := range lost {
		d.log.Error("session LOST", "session", l.Name, "uid", l.UID, "reason", l.Reason)
		d.unstoreSession(l.Name)
	}
	d.rec.lost = append(d.rec.lost, lost...)
	for _, f := range unknown {
		d.log.Warn("fd in systemd's fd store that no record names; removing it", "fdname", f.Name())
		if d.cfg.FDStore != nil {
			d.cfg.FDStore.RemoveFD(f.Name()) // an inherited fd's name is its FDNAME
		}
		f.Close()
	}
}
