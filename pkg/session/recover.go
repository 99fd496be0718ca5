package session

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Continuity says how this boot continues the last one; see Recover.
type Continuity string

// Continuity values, as docs/protocol.md names them.
const (
	// ContinuityOK: a live update handed over luod's manifest and the
	// kernel's liveupdate number is the one the manifest expected.
	ContinuityOK Continuity = "ok"
	// ContinuityMismatch: the manifest came over but the numbers differ (a
	// live update luod did not commit happened in between, or the manifest
	// is older than the last one); the sessions are recovered all the same.
	ContinuityMismatch Continuity = "mismatch"
	// ContinuityColdBoot: no live update happened, but the disk copy of the
	// manifest lists sessions: every one of them is lost.
	ContinuityColdBoot Continuity = "cold_boot"
	// ContinuityNoManifest: a live update happened but no readable luod
	// manifest came with it.
	ContinuityNoManifest Continuity = "no_manifest"
	// ContinuityFresh: nothing to continue: no live update, and no disk
	// manifest or an empty one.
	ContinuityFresh Continuity = "fresh"
)

// RecoverInput is what luod knows at startup besides the kernel's device.
type RecoverInput struct {
	// Handover is set when the KHO decoders found LUO state, i.e. this
	// kernel was booted by a live update; LiveUpdateNumber is then the
	// liveupdate number they decoded.
	Handover         bool
	LiveUpdateNumber uint64
	// Disk reads the readable copy of the last manifest (LoadFile); nil,
	// or a nil result, for none. Recover calls it only when the handover
	// brought no readable manifest, the one case the copy is needed: after
	// a live update it would decode every session a second time on the
	// way to serving.
	Disk func() *Manifest
}

// LostSession is a session the last boot handed over (by the manifest)
// that luod cannot give back.
type LostSession struct {
	Name   string `json:"name"`
	UID    uint32 `json:"uid"`
	Reason string `json:"reason"`
}

// Report is what Recover found.
type Report struct {
	Continuity Continuity `json:"continuity"`
	// Expected is the liveupdate number the manifest expected (the handed
	// over one, or else the disk copy's); Got is the handover's number.
	// Each is 0 when there is none.
	Expected uint64 `json:"expected_liveupdate_number"`
	Got      uint64 `json:"liveupdate_number"`
	// Lost names the sessions that cannot be given back, and why.
	Lost []LostSession `json:"lost_sessions"`
	// Recovered names the sessions taken into custody as incoming.
	Recovered []string `json:"recovered"`
	// PreviousRelease and PreviousBootID describe the boot that wrote the
	// manifest used.
	PreviousRelease string `json:"previous_release,omitempty"`
	PreviousBootID  string `json:"previous_boot_id,omitempty"`
	// ManifestError says why no manifest was read from the handover
	// (no_manifest): the reserved session did not come over, or its memfd
	// could not be retrieved or decoded.
	ManifestError string `json:"manifest_error,omitempty"`
	// Warnings are problems that lost nothing, such as a failed FINISH of
	// the reserved session.
	Warnings []string `json:"warnings,omitempty"`
	// LastPause is what the previous luod noted of its share of the
	// workloads' pause before the kexec (NotePause), printable UTF-8 only;
	// empty if it left no note.
	LastPause string `json:"last_pause,omitempty"`
}

// Recover takes over what the previous kernel handed to luod. It must run
// once, on a new Custody, before the custody serves anyone; while it runs
// the custody is frozen.
//
// Without a handover, nothing can be retrieved: if the disk copy lists
// sessions, continuity is cold_boot and each is lost by name; else fresh.
//
// With one, Recover retrieves luod's reserved session ReservedName,
// retrieves ManifestToken from it and decodes the manifest; then it
// finishes and closes the reserved session (the manifest has been read).
// If any of this fails, continuity is no_manifest, ManifestError says why,
// and nothing else is retrieved: without the manifest luod cannot prove who
// owns a handed-over session, so it leaves them all unretrieved in the
// kernel (the next kexec discards them) and, if the disk copy names them,
// reports them lost. With the manifest, continuity is ok or mismatch by
// comparing the numbers, and every session it lists is retrieved
// (RETRIEVE_SESSION) and held as incoming with its owner, labels and files
// from the manifest; one that fails to retrieve is lost, with the kernel's
// error. Sessions handed over but not in the manifest are not luod's and
// are left alone.
//
// The error is non-nil only when Recover is misused (run twice, or on a
// custody in use); every kernel failure ends up in the Report.
func (c *Custody) Recover(in RecoverInput) (*Report, error) {
	c.mu.Lock()
	if c.recovered || c.closed || len(c.byName) > 0 || c.frozen > 0 {
		c.mu.Unlock()
		return nil, errorf(CodeInternal, "", "Recover must run once, on a new custody")
	}
	c.recovered = true
	c.frozen++ // nothing else mutates meanwhile
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.frozen--
		c.mu.Unlock()
	}()

	r := &Report{Lost: []LostSession{}, Recovered: []string{}}
	disk := func() *Manifest {
		if in.Disk == nil {
			return nil
		}
		return in.Disk()
	}
	if !in.Handover {
		disk := disk()
		if disk == nil || len(disk.Sessions) == 0 {
			r.Continuity = ContinuityFresh
			if disk != nil {
				r.Expected, r.PreviousRelease, r.PreviousBootID = disk.ExpectedLiveUpdateNumber, disk.Release, disk.BootID
			}
			return r, nil
		}
		r.Continuity = ContinuityColdBoot
		r.Expected, r.PreviousRelease, r.PreviousBootID = disk.ExpectedLiveUpdateNumber, disk.Release, disk.BootID
		r.Lost = lostAll(disk, "no live update handed over to this boot (cold boot, or a kexec without the live update orchestrator)")
		return r, nil
	}

	r.Got = in.LiveUpdateNumber
	m, err := c.readManifest(r)
	if err != nil {
		r.Continuity = ContinuityNoManifest
		r.ManifestError = err.Error()
		if disk := disk(); disk != nil {
			r.Expected, r.PreviousRelease, r.PreviousBootID = disk.ExpectedLiveUpdateNumber, disk.Release, disk.BootID
			r.Lost = lostAll(disk, "the live update carried no readable luod manifest, so nobody's ownership can be proven; left unretrieved in the kernel")
		}
		return r, nil
	}
	r.Expected, r.PreviousRelease, r.PreviousBootID = m.ExpectedLiveUpdateNumber, m.Release, m.BootID
	r.Continuity = ContinuityOK
	if r.Expected != r.Got {
		r.Continuity = ContinuityMismatch
	}

	now := c.cfg.Now()
	for _, ms := range m.Sessions {
		h, err := c.dev.RetrieveSession(ms.Name)
		if err != nil {
			r.Lost = append(r.Lost, LostSession{Name: ms.Name, UID: ms.UID, Reason: kernelError("RETRIEVE_SESSION", ms.Name, 0, false, err).Error()})
			continue
		}
		e := &entry{
			s: Session{
				Name: ms.Name, UID: ms.UID, GID: ms.GID,
				Labels: maps.Clone(ms.Labels), State: StateIncoming,
				Files:   make([]File, len(ms.Files)),
				Created: ms.Created, Incoming: true, HandedOver: now,
			},
			h: h,
		}
		for i, f := range ms.Files {
			e.s.Files[i] = File(f)
		}
		c.mu.Lock()
		c.insert(e) // admitted beyond MaxSessionsPerUID: never lose one
		c.mu.Unlock()
		r.Recovered = append(r.Recovered, ms.Name)
	}
	return r, nil
}

// readManifest retrieves and decodes the manifest from the reserved
// session, then finishes and closes that session (warnings into r).
func (c *Custody) readManifest(r *Report) (*Manifest, error) {
	h, err := c.dev.RetrieveSession(ReservedName)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("luod's session %q did not come over: %w", ReservedName, err)
		}
		return nil, kernelError("RETRIEVE_SESSION", ReservedName, 0, false, err)
	}
	defer func() {
		if err := h.Finish(); err != nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("finishing luod's reserved session: %v", err))
		}
		h.Close()
	}()
	fd, err := h.RetrieveFDNum(ManifestToken)
	if err != nil {
		return nil, kernelError("RETRIEVE_FD", ReservedName, ManifestToken, true, err)
	}
	f := os.NewFile(uintptr(fd), "luod manifest")
	defer f.Close()
	m, err := ReadMemfd(f)
	if err == nil {
		r.LastPause = readPauseNote(h, r)
	}
	return m, err
}

// readPauseNote retrieves the pause page from the reserved session h and
// returns the note in it: up to its first NUL, every character that is
// not printable UTF-8 replaced by '?', as it comes from memory nobody
// checked.
// An older luod's session has no page (ENOENT): no note, no warning.
func readPauseNote(h Handle, r *Report) string {
	fd, err := h.RetrieveFDNum(PauseToken)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			r.Warnings = append(r.Warnings, kernelError("RETRIEVE_FD", ReservedName, PauseToken, true, err).Error())
		}
		return ""
	}
	f := os.NewFile(uintptr(fd), "luod pause note")
	defer f.Close()
	page := make([]byte, pauseNoteSize)
	n, err := f.ReadAt(page, 0)
	if err != nil && n == 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("reading luod's pause note: %v", err))
		return ""
	}
	note, _, _ := bytes.Cut(page[:n], []byte{0})
	return string(bytes.Map(func(c rune) rune {
		if c == utf8.RuneError || !unicode.IsPrint(c) {
			return '?'
		}
		return c
	}, note))
}

func lostAll(m *Manifest, reason string) []LostSession {
	out := make([]LostSession, len(m.Sessions))
	for i, s := range m.Sessions {
		out[i] = LostSession{Name: s.Name, UID: s.UID, Reason: reason}
	}
	return out
}

// Overdue names the incoming sessions still unclaimed more than grace
// after Recover took them over, sorted. It only reports: luod never
// finishes a session by itself, since finishing gives the workload's
// memory back to the kernel; an admin (or the owner) must Delete or
// Finish it.
func (c *Custody) Overdue(now time.Time, grace time.Duration) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.byName {
		if e.s.State == StateIncoming && now.Sub(e.s.HandedOver) > grace {
			out = append(out, e.s.Name)
		}
	}
	slices.SortFunc(out, strings.Compare)
	return out
}
