package daemon

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/luod/luod/internal/klog"
	"github.com/luod/luod/pkg/kho"
	"github.com/luod/luod/pkg/session"
)

// recovery is what luod found at start about the previous boot.
type recovery struct {
	continuity      string
	got, expected   uint64
	previousRelease string
	lost            []session.LostSession
	warnings        []string
	// handover is the decoded handover of this boot, nil on a cold boot.
	handover *kho.Handover
}

// recover decodes this boot's handover, cross-checks it with the kernel's
// log, and has the custody take over the sessions of luod's manifest.
func (d *Daemon) recover() error {
	in := session.RecoverInput{}
	var r recovery

	// A handover is taken over once per boot. If luod already did it in
	// this boot (it restarted), the kernel has nothing more to give: luod
	// takes back what the last instance left in systemd's fd store, and
	// what it did not leave there died with it (the record or the disk
	// copy names it).
	if prev, ok := d.loadBootState(); ok {
		d.log.Warn("luod restarted within this boot: taking back the sessions systemd's fd store kept",
			"stored_sessions", len(d.cfg.Inherited.Sessions), "record", d.cfg.Inherited.Record != nil)
		d.setRecovery(recovery{continuity: prev.Continuity, got: prev.Got, expected: prev.Expected,
			previousRelease: prev.PreviousRelease, lost: prev.Lost})
		d.adopt(d.cfg.Inherited)
		d.storeRecord()
		d.markDirty() // the disk copy after READY, as below
		return nil
	}
	// Not a restart within this boot: session fds in the store can only
	// have crossed a kexec through systemd's kexec.target (the orderly
	// path, systemd >= 261), which retrieved them in this kernel and
	// handed them back. Recover takes them instead of RETRIEVE_SESSION,
	// which the kernel would refuse for a session already retrieved; a
	// session not among them (the direct path) is retrieved as usual.
	carried := d.carriedSessions(d.cfg.Inherited.Sessions)
	if len(carried) > 0 {
		d.log.Info("the fd store came back with session fds across the kexec: systemd carried them",
			"sessions", len(carried))
	}
	d.slot.setCarried(carried)
	if f := d.cfg.Inherited.Record; f != nil {
		f.Close() // the record of another boot; storeRecord replaces it
	}

	t0 := time.Now()
	if err := kho.MountDebugFS(); err != nil {
		d.log.Warn("cannot mount debugfs; the handover is read from the kernel log only", "err", err)
	}
	h, err := kho.ReadDir(d.cfg.KHODir)
	switch {
	case errors.Is(err, kho.ErrNoHandover):
		d.log.Info("no handover: this kernel was not booted by a live update", "dir", d.cfg.KHODir)
	case err != nil:
		r.warnings = append(r.warnings, "reading the handover: "+err.Error())
		d.log.Error("cannot read the handover", "dir", d.cfg.KHODir, "err", err)
	default:
		r.handover = h
		if h.LUO != nil {
			in.Handover, in.LiveUpdateNumber = true, h.LUO.LiveUpdateNumber
		} else if h.LUOErr != nil {
			// Linux 7.2/7.3 free struct luo_ser right after reading it at
			// boot while debugfs keeps exposing its address, so the blob is
			// often clobbered by then; the kernel log below still says
			// what came over. See docs/kernel-contract.md.
			r.warnings = append(r.warnings, "incoming LUO blob: "+h.LUOErr.Error())
			d.log.Warn("the incoming LUO blob does not decode (the kernel frees it after boot); relying on the kernel log", "err", h.LUOErr)
		}
		if h.KexecMetadata != nil {
			r.previousRelease = h.KexecMetadata.PreviousRelease
		}
	}

	tHandover := time.Since(t0)

	// The kernel's own log is the witness: it printed the number it took
	// over. Use it when the blob did not decode, and flag any disagreement.
	t0 = time.Now()
	if log, err := klog.Read(); err == nil {
		kl := klog.Parse(log)
		switch {
		case kl.HasLiveUpdate && !in.Handover:
			in.Handover, in.LiveUpdateNumber = true, kl.LiveUpdateNumber
			d.log.Warn("liveupdate number taken from the kernel log", "liveupdate_number", kl.LiveUpdateNumber)
		case kl.HasLiveUpdate && kl.LiveUpdateNumber != in.LiveUpdateNumber:
			r.warnings = append(r.warnings, "decoded liveupdate number differs from the kernel log")
			d.log.Error("decoded liveupdate number differs from the kernel log",
				"decoded", in.LiveUpdateNumber, "kernel_log", kl.LiveUpdateNumber)
		}
		if r.previousRelease == "" && kl.HasExecFrom {
			r.previousRelease = kl.PreviousRelease
		}
	}

	tKlog := time.Since(t0)
	in.Disk = func() *session.Manifest {
		// What the last boot would have handed over: the open sessions.
		if m := d.loadDisk(&r.warnings); m != nil {
			return m.OpenSessions()
		}
		return nil
	}

	t0 = time.Now()
	rep, err := d.custody.Recover(in)
	tRetrieve := time.Since(t0)
	if _, ok := carried[session.ReservedName]; ok {
		// Read (and finished) by Recover: systemd's copy must go too.
		d.unstoreSession(session.ReservedName)
	}
	left := d.slot.takeCarried()
	unasked := make(map[string]bool, len(left))
	for _, h := range left {
		unasked[h.Name()] = true
	}
	for _, name := range slices.Sorted(maps.Keys(carried)) {
		if !unasked[name] {
			d.log.Info("session handed back by systemd's fd store after the kexec, already retrieved", "session", name)
		}
	}
	for _, h := range left {
		if rep != nil && rep.Continuity == session.ContinuityNoManifest {
			// Nobody's ownership is known; closing the last fd would
			// finish the session and free its memory. systemd's copy
			// keeps it for an admin.
			d.log.Error("session from the fd store kept there: no manifest says whose it is", "session", h.Name())
			h.Close()
			continue
		}
		d.log.Warn("session from the fd store that luod's manifest does not name; removing it", "session", h.Name())
		d.unstoreSession(h.Name())
		h.Close()
	}
	if err != nil {
		return err
	}
	r.continuity = string(rep.Continuity)
	r.got, r.expected = rep.Got, rep.Expected
	r.lost = rep.Lost
	r.warnings = append(r.warnings, rep.Warnings...)
	if r.previousRelease == "" {
		r.previousRelease = rep.PreviousRelease
	}
	t0 = time.Now()
	d.setRecovery(r)
	d.saveBootState()
	if err := d.storeSessionFiles(func(fn func(string, *os.File)) { d.custody.EachFile(rep.Recovered, fn) }); err != nil {
		d.log.Error("cannot put the recovered sessions' fds into systemd's fd store: a crash of luod would lose them",
			"err", err)
	}
	d.storeRecord()
	tStore := time.Since(t0)

	// Where the time to READY goes, step by step (the step before, opening
	// the device, and the steps after, the disk copy and listening, are
	// short): handover = debugfs mounted and the KHO tree decoded, klog =
	// the kernel log read and parsed, retrieve = the manifest decoded and
	// every session retrieved, store = boot state, fd store and record.
	attrs := []any{"continuity", r.continuity, "liveupdate_number", r.got,
		"expected", r.expected, "previous_release", r.previousRelease,
		"recovered", len(rep.Recovered), "lost", len(rep.Lost),
		"handover", tHandover, "klog", tKlog, "retrieve", tRetrieve, "store", tStore}
	switch rep.Continuity {
	case session.ContinuityOK, session.ContinuityFresh:
		d.log.Info("recovery finished", attrs...)
	default:
		d.log.Error("recovery finished: continuity "+r.continuity, append(attrs, "manifest_error", rep.ManifestError)...)
	}
	// luod's share of the pause that brought this kernel, as the previous
	// luod measured it and noted it in its reserved session: the reboot
	// line it logged last may not have been read before the kexec.
	if rep.LastPause != "" {
		d.log.Info("the last update's pause, as the previous luod measured it", "pause", rep.LastPause)
	}
	// One line for them all: at 1000 sessions a line each was a quarter
	// of a second before READY under TCG. Each name is at debug level.
	if len(rep.Recovered) > 0 {
		d.log.Info("sessions handed over, held until their owners claim them", "sessions", len(rep.Recovered),
			"first", rep.Recovered[0], "last", rep.Recovered[len(rep.Recovered)-1])
	}
	for _, s := range rep.Recovered {
		d.log.Debug("session handed over, held until its owner claims it", "session", s)
	}
	for _, l := range rep.Lost {
		d.log.Error("session LOST", "session", l.Name, "uid", l.UID, "reason", l.Reason)
	}
	for _, w := range r.warnings {
		d.log.Warn("recovery warning", "warning", w)
	}
	// The disk copy must now describe this boot: what the next update
	// would carry (nothing yet), so that a cold boot does not report the
	// same losses twice. The disk writer writes it once changes pause,
	// after READY: the record written above is what a successor of this
	// boot reads first, and READY waits for it, not for this copy.
	d.markDirty()
	return nil
}

// loadDisk reads what luod last wrote down in the state directory: the
// newer of the record log (kept before every answer without systemd's fd
// store) and the manifest copy (written in the background, and by an
// upgrade). A file missing is no problem; one that does not read is a
// warning, into warnings if not nil, and the other file is used.
func (d *Daemon) loadDisk(warnings *[]string) *session.Manifest {
	type source struct {
		path string
		load func(string) (*session.Manifest, error)
		mod  time.Time
	}
	srcs := []source{
		{path: d.recordPath(), load: session.LoadRecordFile},
		{path: filepath.Join(d.cfg.StateDir, session.ManifestFileName), load: session.LoadFile},
	}
	for i := range srcs {
		if fi, err := os.Stat(srcs[i].path); err == nil {
			srcs[i].mod = fi.ModTime()
		}
	}
	if srcs[1].mod.After(srcs[0].mod) {
		srcs[0], srcs[1] = srcs[1], srcs[0]
	}
	for _, s := range srcs {
		m, err := s.load(d.cfg.StateDir)
		if err == nil {
			d.log.Info("read what the last luod wrote down", "file", s.path, "sessions", len(m.Sessions))
			return m
		}
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		d.log.Warn("cannot read the manifest copy on disk", "file", s.path, "err", err)
		if warnings != nil {
			*warnings = append(*warnings, "manifest copy on disk: "+err.Error())
		}
	}
	return nil
}

// saveDisk writes the readable manifest copy of the open sessions. A
// failure (full or read-only state directory) is a warning: the manifest
// that matters crosses the kexec in memory.
func (d *Daemon) saveDisk() {
	d.syncRecord()
	// Encoded through the custody, which keeps each session's encoding
	// for the manifest phase of an upgrade.
	_, b, err := d.custody.EncodedManifest(d.expectedNext())
	if err == nil {
		err = session.WriteFile(d.cfg.StateDir, b, true)
	}
	if err != nil {
		d.log.Warn("cannot write the manifest copy", "dir", d.cfg.StateDir, "err", err)
	}
}

// changed follows a change of the named sessions in the custody: a
// session luod no longer holds (deleted, finished) leaves systemd's fd
// store, and the record is brought up to date at once, so that a luod
// killed right after still leaves the truth behind (recordChange does
// both); the disk copy is refreshed in the background (diskWriter).
func (d *Daemon) changed(names ...string) {
	d.recordChange(names...)
	d.markDirty()
}

// markDirty asks the background writer to refresh the disk copy; writes
// are coalesced so that a burst of changes costs one write. Only the
// first change since the last write wakes the writer; the others note
// their time, which the writer reads when its wait ends (diskWriter). A
// wake-up per request was a goroutine made runnable, and often a thread
// woken, per request: under TCG that costs as much as a system call.
func (d *Daemon) markDirty() {
	d.lastChange.Store(int64(time.Since(d.epoch)))
	if d.dirty.CompareAndSwap(false, true) {
		select {
		case d.diskDirty <- struct{}{}:
		default:
		}
	}
}

// expectedNext is the liveupdate number the next kernel will report,
// fixed for the whole boot (set by setRecovery).
func (d *Daemon) expectedNext() uint64 { return d.next }

// setRecovery records what recovery found, and the number the next kernel
// will report: the outgoing LUO blob holds it from boot on (read once);
// failing that, this boot's + 1.
func (d *Daemon) setRecovery(r recovery) {
	d.rec = r
	d.next = r.got + 1
	if b, err := readFile(d.cfg.KHOOutLUO); err == nil {
		if l, err := kho.DecodeLUO(b); err == nil {
			d.next = l.LiveUpdateNumber
		}
	}
}
