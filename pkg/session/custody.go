package session

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/proto"
)

// State is where a session is in its life; see the package doc.
type State string

// The states of a session, as the protocol names them.
const (
	StateOpen     State = "open"
	StateIncoming State = "incoming"
	StateClaimed  State = "claimed"
	StateFinished State = "finished"
)

// Caller is who asks: the credentials the server read from the request
// packet (SCM_CREDENTIALS), and whether the server judged them admin (uid
// 0 or a member of --admin.group).
type Caller struct {
	UID, GID uint32
	Admin    bool
}

// sees reports whether the caller may see and touch a session of uid.
func (c Caller) sees(uid uint32) bool { return c.Admin || c.UID == uid }

// File is one preserved file of a session, as luod records it.
type File struct {
	// Token is the 64-bit key of the file in its session.
	Token uint64 `json:"token"`
	// Label is the client's name for the file, free text.
	Label string `json:"label"`
	// Size is the file's size in bytes: from fstat when luod preserved it,
	// 0 (unknown) when the client preserved it itself and declared it.
	// It stays true to the end: the kernel freezes a memfd's size when it
	// is preserved and restores exactly that size (see Reclaim).
	Size int64 `json:"size"`
}

// Session is a copy of one custody entry; changing it changes nothing.
type Session struct {
	Name string `json:"name"`
	// UID and GID own the session: the caller that created it.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// Labels are the client's key/value annotations.
	Labels map[string]string `json:"labels,omitempty"`
	State  State             `json:"state"`
	// Files lists the preserved files in the order luod learnt of them.
	Files []File `json:"files"`
	// Created is when the session was created, in the boot that created it.
	Created time.Time `json:"created"`
	// Incoming is set for a session handed over by the previous kernel,
	// whatever its state now.
	Incoming bool `json:"incoming"`
	// HandedOver is when Recover took the session over; zero unless
	// Incoming.
	HandedOver time.Time `json:"handed_over,omitzero"`
}

// PreserveFile is one file for Preserve.
type PreserveFile struct {
	// FD is the client's file descriptor, received over SCM_RIGHTS
	// (proto.Conn.RecvFDs: a plain number, as luod only hands it to the
	// kernel); today the kernel preserves memfds only. Preserve does not
	// close it, and the caller keeps it open until Preserve returns. A
	// negative FD is refused as no file.
	FD    int
	Token uint64
	Label string
}

// FileDecl is one file the client preserved into its own duplicate of the
// session fd and declares with Declare.
type FileDecl struct {
	Token uint64
	Label string
}

// Default limits, used where Config leaves a limit zero.
const (
	DefaultMaxSessionsPerUID  = 1024
	DefaultMaxFilesPerSession = 4096
)

// Config sets a Custody's limits and the facts it writes into manifests.
type Config struct {
	// MaxSessionsPerUID bounds the sessions of one uid in custody, in any
	// state (finished tombstones count until deleted or replaced). Create
	// beyond it fails with limit. Sessions taken over by Recover are
	// admitted even beyond it, so a lowered limit never loses a session.
	// Zero means DefaultMaxSessionsPerUID.
	MaxSessionsPerUID int
	// MaxFilesPerSession bounds the files luod records for one session
	// (preserved or declared). The kernel has no hard cap, but luod must
	// bound its memory and manifest. Zero means DefaultMaxFilesPerSession.
	MaxFilesPerSession int
	// Release is the running kernel's uname release and BootID its
	// /proc/sys/kernel/random/boot_id; Manifest records them.
	Release, BootID string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (cfg Config) withDefaults() Config {
	if cfg.MaxSessionsPerUID <= 0 {
		cfg.MaxSessionsPerUID = DefaultMaxSessionsPerUID
	}
	if cfg.MaxFilesPerSession <= 0 {
		cfg.MaxFilesPerSession = DefaultMaxFilesPerSession
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg
}

// Custody is the table of sessions luod holds. Lookups by name are O(1),
// per-uid counts are kept, and no goroutine runs per session. Methods are
// safe for concurrent use.
type Custody struct {
	dev Device
	cfg Config

	// commitMu serializes WriteManifest and the last unfreeze, which
	// create and drop the reserved session.
	commitMu sync.Mutex

	mu        sync.Mutex
	idle      sync.Cond // signalled when inflight drops to 0
	byName    map[string]*entry
	perUID    map[uint32]int
	frozen    int    // Freeze calls not yet undone
	inflight  int    // operations running their ioctls unlocked
	reserved  Handle // luod's session carrying the manifest (see WriteManifest)
	recovered bool   // Recover has run
	closed    bool
	// gen counts changes of the table (touchLocked). The reserved
	// session's manifest was taken at generation reservedGen for the
	// liveupdate number reservedNext; while gen still equals reservedGen
	// it is true, and WriteManifest reuses it (reservedM, reservedB).
	gen, reservedGen, reservedNext uint64
	reservedM                      *Manifest
	reservedB                      []byte
	// reservedPause is the reserved session's pause page (PauseToken),
	// nil if it could not be preserved.
	reservedPause *os.File
}

type entry struct {
	s        Session // Labels and Files are owned here; copied out
	h        Handle  // luod's own fd; nil once finished
	busy     bool    // an operation is running on it
	creating bool    // CREATE_SESSION not yet returned
	// enc is the encoding of the session's manifest entry (encodeCached),
	// or the mark of one under way; any change of the entry drops it
	// (touchLocked).
	enc *encodedSession
}

func (e *entry) snapshot() Session {
	s := e.s
	s.Labels = maps.Clone(e.s.Labels)
	s.Files = slices.Clone(e.s.Files)
	if s.Files == nil {
		s.Files = []File{}
	}
	return s
}

// New returns an empty custody over dev.
func New(dev Device, cfg Config) *Custody {
	c := &Custody{
		dev:    dev,
		cfg:    cfg.withDefaults(),
		byName: make(map[string]*entry),
		perUID: make(map[uint32]int),
	}
	c.idle.L = &c.mu
	return c
}

// Limits reports the limits in force, defaults filled in.
func (c *Custody) Limits() (sessionsPerUID, filesPerSession int) {
	return c.cfg.MaxSessionsPerUID, c.cfg.MaxFilesPerSession
}

func notFound(name string) *Error {
	return errorf(CodeNotFound, name, "no such session")
}

// begin looks name up for caller and marks the entry busy; c.mu is held.
func (c *Custody) begin(caller Caller, name string) (*entry, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if c.closed {
		return nil, errorf(CodeInternal, name, "custody is closed")
	}
	if c.frozen > 0 {
		return nil, errorf(CodeBusy, name, busyFrozen)
	}
	e := c.byName[name]
	if e == nil || !caller.sees(e.s.UID) {
		return nil, notFound(name)
	}
	if e.busy {
		return nil, errorf(CodeBusy, name, "another operation on this session is in progress")
	}
	e.busy = true
	c.inflight++
	return e, nil
}

// end undoes begin; c.mu is held.
func (c *Custody) end(e *entry) {
	c.touchLocked(e)
	e.busy = false
	c.inflight--
	if c.inflight == 0 {
		c.idle.Broadcast()
	}
}

// remove drops e from the table; c.mu is held.
func (c *Custody) remove(e *entry) {
	c.touchLocked(e)
	delete(c.byName, e.s.Name)
	if n := c.perUID[e.s.UID] - 1; n > 0 {
		c.perUID[e.s.UID] = n
	} else {
		delete(c.perUID, e.s.UID)
	}
}

// insert adds e to the table; c.mu is held.
func (c *Custody) insert(e *entry) {
	c.touchLocked(e)
	c.byName[e.s.Name] = e
	c.perUID[e.s.UID]++
}

// Create makes a new outgoing session called name, owned by the caller,
// and keeps luod's own fd of it. It returns the entry and a duplicate of
// the session fd (close-on-exec) for the client, which the caller must
// send and then close.
//
// Errors: invalid_name; exists if any uid's session has the name (or the
// kernel still has one: a deleted session whose client fds are open);
// limit past MaxSessionsPerUID or the label limits; busy while frozen.
// A finished session of the caller's own uid does not block the name: the
// new session replaces the tombstone.
func (c *Custody) Create(caller Caller, name string, labels map[string]string) (Session, *os.File, error) {
	s, _, dup, err := c.CreateWith(caller, name, labels, nil, CreateOptions{Dup: true})
	return s, dup, err
}

// CreateOptions are the choices of CreateWith.
type CreateOptions struct {
	// Dup returns a duplicate of the session fd for the client, as Create
	// does; without, luod's fd is the only one.
	Dup bool
	// Keep, if not nil, is given the new session once its files are in
	// (see KeepFunc).
	Keep KeepFunc
}

// KeepFunc is given new sessions, names[i] with luod's own fd fds[i],
// once their files are in and while they are still busy to every other
// operation and not yet listed: luod puts the fds into systemd's fd store
// there, so that no delete can come between and leave the store with a
// session luod forgot. It runs without the Custody's lock (any operation
// on these sessions meanwhile is refused busy; an upgrade's freeze waits
// for it) and must not close or keep the fds (the store takes its own
// copies).
type KeepFunc func(names []string, fds []*os.File)

// CreateWith is Create that also preserves files into the new session, as
// Preserve does, all or nothing: the session is busy to every other
// operation until the files are in, and when one cannot be preserved luod
// closes the session's only fd (the kernel drops it with every file
// preserved into it) and forgets it, so the error leaves nothing behind.
// It returns the session, its preserved files and, with opt.Dup, the
// client's duplicate of the session fd (to send, then close). It does not
// close the files.
//
// Errors are Create's and Preserve's; the files are checked (count,
// tokens, labels) before the session is created.
func (c *Custody) CreateWith(caller Caller, name string, labels map[string]string, files []PreserveFile, opt CreateOptions) (Session, []File, *os.File, error) {
	e, done, cdup, err := c.create(caller, name, labels, files, opt.Dup)
	if err != nil {
		return Session{}, nil, nil, err
	}
	return c.keep([]*entry{e}, opt.Keep)[0], done, cdup, nil
}

// NewSession is one session for CreateMany: its name, labels and the
// files to preserve into it.
type NewSession struct {
	Name   string
	Labels map[string]string
	Files  []PreserveFile
}

// Created is what CreateMany did with one NewSession: the session and its
// preserved files, or why it was refused (Err; nothing of it is left).
type Created struct {
	Session Session
	Files   []File
	Err     error
}

// CreateMany is CreateWith (without Dup) of each session of ns, in order,
// each all or nothing on its own; keep, if not nil, is given every session
// created at once (luod stores them all with one batch).
func (c *Custody) CreateMany(caller Caller, ns []NewSession, keep KeepFunc) []Created {
	out := make([]Created, len(ns))
	held := make([]*entry, 0, len(ns))
	at := make([]int, 0, len(ns))
	for i, n := range ns {
		e, done, _, err := c.create(caller, n.Name, n.Labels, n.Files, false)
		out[i] = Created{Files: done, Err: err}
		if err == nil {
			held, at = append(held, e), append(at, i)
		}
	}
	for i, s := range c.keep(held, keep) {
		out[at[i]].Session = s
	}
	return out
}

// create is CreateWith up to its files being in: on success the entry is
// in the table with its handle and files, still busy and creating (hidden
// from Get, List, the manifest and the record) until keep.
func (c *Custody) create(caller Caller, name string, labels map[string]string, files []PreserveFile, dup bool) (*entry, []File, *os.File, error) {
	if err := ValidateName(name); err != nil {
		return nil, nil, nil, err
	}
	if code, why := labelsProblem(labels); code != "" {
		return nil, nil, nil, errorf(code, name, "%s", why)
	}
	e := &entry{
		s: Session{
			Name: name, UID: caller.UID, GID: caller.GID,
			Labels: maps.Clone(labels), State: StateOpen, Created: c.cfg.Now(),
		},
		busy:     true,
		creating: true,
	}
	if len(files) > 0 {
		// Only the new entry and the fixed limits are read: no lock.
		if err := c.checkNewFiles(e, len(files), func(i int) (uint64, string) { return files[i].Token, files[i].Label }); err != nil {
			return nil, nil, nil, err
		}
	}
	c.mu.Lock()
	switch old := c.byName[name]; {
	case c.closed:
		c.mu.Unlock()
		return nil, nil, nil, errorf(CodeInternal, name, "custody is closed")
	case c.frozen > 0:
		c.mu.Unlock()
		return nil, nil, nil, errorf(CodeBusy, name, busyFrozen)
	case old == nil:
	case old.s.State == StateFinished && old.s.UID == caller.UID && !old.busy:
		c.remove(old)
	default:
		c.mu.Unlock()
		return nil, nil, nil, errorf(CodeExists, name, "session already exists")
	}
	if n := c.perUID[caller.UID]; n >= c.cfg.MaxSessionsPerUID {
		c.mu.Unlock()
		return nil, nil, nil, errorf(CodeLimit, name, "uid %d has %d sessions, the limit", caller.UID, n)
	}
	c.insert(e)
	c.inflight++
	c.mu.Unlock()

	var done []File
	var cdup *os.File
	h, err := c.dev.CreateSession(name)
	if err != nil {
		err = kernelError("CREATE_SESSION", name, 0, false, err)
	} else {
		if len(files) > 0 {
			if done, err = c.preserve(h, name, files, proto.FileListBudget, 0); err != nil {
				var se *Error
				if errors.As(err, &se) {
					se.Err = fmt.Errorf("%w; session creation undone: luod closed the new session, and the kernel dropped it with every file preserved into it", se.Err)
				}
			}
		}
		if err == nil && dup {
			if cdup, err = dupFile(h.File()); err != nil {
				err = errorf(CodeInternal, name, "duplicating the session fd for the client: %w", err)
			}
		}
		if err != nil {
			h.Close() // luod's is the only fd: the kernel drops the session
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.remove(e)
		c.end(e)
		return nil, nil, nil, err
	}
	e.s.Files = append(e.s.Files, done...)
	e.h = h
	return e, done, cdup, nil
}

// keep ends the creation of entries create made: fn (if not nil) is given
// them while they are still busy, then each is listed and free to other
// operations. It returns their snapshots, in order.
func (c *Custody) keep(es []*entry, fn KeepFunc) []Session {
	if len(es) == 0 {
		return nil
	}
	if fn != nil {
		names, fds := make([]string, len(es)), make([]*os.File, len(es))
		for i, e := range es {
			names[i], fds[i] = e.s.Name, e.h.File()
		}
		fn(names, fds)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Session, len(es))
	for i, e := range es {
		e.creating = false
		c.end(e)
		out[i] = e.snapshot()
	}
	return out
}

// Preserve preserves files into the caller's open session on the client's
// behalf (PRESERVE_FD through luod's own fd), in order, and records each
// with its size from fstat. It does not close the files.
//
// Before any ioctl, Preserve refuses the whole request, preserving
// nothing, if: the session is not open (bad_request), the files would pass
// MaxFilesPerSession (limit), a token repeats in the request or is already
// recorded (exists), a file label is too long (limit), or a file is nil,
// closed or given twice (bad_fd). Whether the kernel can preserve a file
// (a memfd, not preserved elsewhere) is left to the kernel.
//
// The kernel has no unpreserve, so a refusal at file k cannot be undone:
// files 0..k-1 stay preserved and recorded, file k and the files after it
// are not preserved (the rest is not attempted). Preserve then returns the
// files it did preserve together with the error, whose Token is file k's
// and whose message lists the preserved tokens. The client may retry the
// rest, or delete the session to drop everything. Kernel errnos map to:
// ENOENT (no handler: not a memfd), EBADF, EBUSY (preserved already), EFBIG
// → bad_fd; EEXIST (token taken, e.g. preserved by the client itself and
// not declared) → exists; ENOSPC → limit; else kernel.
func (c *Custody) Preserve(caller Caller, name string, files []PreserveFile) ([]File, error) {
	c.mu.Lock()
	e, err := c.begin(caller, name)
	if err == nil {
		err = c.checkNewFiles(e, len(files), func(i int) (uint64, string) { return files[i].Token, files[i].Label })
		if err != nil {
			c.end(e)
		}
	}
	var h Handle
	var left, have int
	if err == nil {
		h, left, have = e.h, listLeft(e), len(e.s.Files)
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}

	done, err := c.preserve(h, name, files, left, have)

	c.mu.Lock()
	defer c.mu.Unlock()
	e.s.Files = append(e.s.Files, done...)
	c.end(e)
	return done, err
}

// checkNewFiles checks n new files (token and label of file i from at)
// against e's state and limits; c.mu is held unless e is not in the table yet.
func (c *Custody) checkNewFiles(e *entry, n int, at func(i int) (uint64, string)) error {
	name := e.s.Name
	if e.s.State != StateOpen {
		return errorf(CodeBadRequest, name, "session is %s: files are preserved only into sessions created in this boot", e.s.State)
	}
	if have := len(e.s.Files); have+n > c.cfg.MaxFilesPerSession {
		return errorf(CodeLimit, name, "session has %d files, %d more would pass the limit of %d", have, n, c.cfg.MaxFilesPerSession)
	}
	// A token names one file of its session: seen is true for the
	// session's tokens, false for the request's. Built per request, not
	// kept with the session: 1000 sessions held a map each for this.
	seen := make(map[uint64]bool, len(e.s.Files)+n)
	for _, f := range e.s.Files {
		seen[f.Token] = true
	}
	for i := range n {
		tok, label := at(i)
		if code, why := fileLabelProblem(label); code != "" {
			return tokenErrorf(code, name, tok, "%s", why)
		}
		if old, dup := seen[tok]; dup && old {
			return tokenErrorf(CodeExists, name, tok, "token is already used in this session")
		} else if dup {
			return tokenErrorf(CodeExists, name, tok, "token is given twice in the request")
		}
		seen[tok] = false
	}
	return nil
}

// listLeft is what proto.FileListBudget leaves after e's files: every
// session must fit the answer that hands it back (reclaim,
// retrieve_session), or it could be preserved and never retrieved. c.mu
// is held, or e is busy.
func listLeft(e *entry) int { return proto.FileListBudget - listed(e) }

// listed is the bytes e's files take listed in an answer.
func listed(e *entry) int {
	n := 0
	for _, f := range e.s.Files {
		n += listedBytes(f)
	}
	return n
}

func listedBytes(f File) int {
	return proto.FileInfo{Token: f.Token, Label: f.Label, Size: f.Size}.ListedBytes()
}

// fitList refuses new files past left bytes listed, naming the first
// that does not fit; the session has files already.
func fitList(name string, left, files int, add []File) error {
	for i, f := range add {
		if left -= listedBytes(f); left < 0 {
			return tokenErrorf(CodeLimit, name, f.Token,
				"the session's file list would pass the %d bytes one answer can list, and the session could not be handed back: %d files of these labels and sizes are too many for one session",
				proto.FileListBudget, files+i+1)
		}
	}
	return nil
}

// preserve runs the ioctls of Preserve, unlocked; see Preserve.
// left and have are listLeft and the number of files of the session
// before these: files past what an answer can list are refused before
// any ioctl.
func (c *Custody) preserve(h Handle, name string, files []PreserveFile, left, have int) ([]File, error) {
	type inode struct{ dev, ino uint64 }
	add := make([]File, len(files))
	var seen map[inode]int
	if len(files) > 1 {
		seen = make(map[inode]int, len(files))
	}
	for i, pf := range files {
		if pf.FD < 0 {
			return nil, tokenErrorf(CodeBadFD, name, pf.Token, "no file")
		}
		// One fstat gives the size and the identity.
		var st unix.Stat_t
		if err := unix.Fstat(pf.FD, &st); err != nil {
			return nil, tokenErrorf(CodeBadFD, name, pf.Token, "cannot stat the file: %w", err)
		}
		add[i] = File{Token: pf.Token, Label: pf.Label, Size: st.Size}
		if seen != nil {
			k := inode{uint64(st.Dev), st.Ino}
			if j, dup := seen[k]; dup {
				return nil, tokenErrorf(CodeBadFD, name, pf.Token, "same file as token %#x in the request", files[j].Token)
			}
			seen[k] = i
		}
	}
	if err := fitList(name, left, have, add); err != nil {
		return nil, err
	}
	done := make([]File, 0, len(files))
	for i, pf := range files {
		if perr := h.PreserveFD(pf.FD, pf.Token); perr != nil {
			e := kernelError("PRESERVE_FD", name, pf.Token, true, perr)
			if e.Code == CodeInternal {
				e.Code = CodeBadFD // the file went away under us
			}
			if note := partialNote(done, len(files)-i-1); note != "" {
				e.Err = fmt.Errorf("%w (%s)", e.Err, note)
			}
			return done, e
		}
		done = append(done, add[i])
	}
	return done, nil
}

// partialNote says what a failed Preserve left behind.
func partialNote(done []File, notTried int) string {
	var parts []string
	if len(done) > 0 {
		toks := make([]string, 0, min(len(done), 8))
		for i, f := range done {
			if i == 8 {
				toks = append(toks, fmt.Sprintf("… %d in all", len(done)))
				break
			}
			toks = append(toks, fmt.Sprintf("%#x", f.Token))
		}
		parts = append(parts, fmt.Sprintf("preserved before it and still preserved: token %s", strings.Join(toks, ", ")))
	}
	if notTried > 0 {
		parts = append(parts, fmt.Sprintf("%d later file(s) not attempted", notTried))
	}
	return strings.Join(parts, "; ")
}

// Declare records files the client preserved itself into its duplicate
// of the caller's open session (needed for VFIO/iommufd, which need the
// client's own ioctls), so they enter the manifest and Reclaim can
// retrieve them. luod cannot check that the tokens are really preserved:
// the kernel has no query for an outgoing session; a token declared but
// never preserved fails at Reclaim with not_found. Sizes are recorded as 0
// (unknown). All-or-nothing: the same checks as Preserve's before any
// ioctl, and no ioctl.
func (c *Custody) Declare(caller Caller, name string, files []FileDecl) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, err := c.begin(caller, name)
	if err != nil {
		return err
	}
	defer c.end(e)
	if err := c.checkNewFiles(e, len(files), func(i int) (uint64, string) { return files[i].Token, files[i].Label }); err != nil {
		return err
	}
	add := make([]File, len(files))
	for i, f := range files {
		add[i] = File{Token: f.Token, Label: f.Label}
	}
	if err := fitList(name, listLeft(e), len(e.s.Files), add); err != nil {
		return err
	}
	e.s.Files = append(e.s.Files, add...)
	return nil
}

// Get returns the caller's session called name (not_found if it is
// another uid's and the caller is not admin).
func (c *Custody) Get(caller Caller, name string) (Session, error) {
	if err := ValidateName(name); err != nil {
		return Session{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byName[name]
	if e == nil || e.creating || !caller.sees(e.s.UID) {
		return Session{}, notFound(name)
	}
	return e.snapshot(), nil
}

// List returns the sessions the caller may see, sorted by name: its own
// uid's, or all for an admin. It works while frozen.
func (c *Custody) List(caller Caller) []Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Session, 0, len(c.byName))
	for _, e := range c.byName {
		if !e.creating && caller.sees(e.s.UID) {
			out = append(out, e.snapshot())
		}
	}
	slices.SortFunc(out, func(a, b Session) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Delete releases the caller's session and forgets it.
//
//   - open: luod closes its fd. Once the client's duplicates are closed
//     too, the kernel drops the session and everything preserved in it
//     (until then the kernel keeps the name, and Create of it says exists).
//   - incoming or claimed: luod issues FINISH, then closes its fd; this is
//     the explicit release of a handed-over session. If FINISH fails (a
//     file cannot finish yet), Delete returns the kernel error and keeps
//     the session as it was — closing the fd would not release it either,
//     the kernel would keep it until the next live update — so nothing is
//     dropped silently and Delete can be retried.
//   - finished: the tombstone is removed.
func (c *Custody) Delete(caller Caller, name string) error {
	c.mu.Lock()
	e, err := c.begin(caller, name)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	state, h := e.s.State, e.h
	c.mu.Unlock()

	if h != nil && state != StateOpen {
		if err := h.Finish(); err != nil {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.end(e)
			return kernelError("FINISH", name, 0, false, err)
		}
	}
	if h != nil {
		h.Close() // the fd is gone whatever close(2) says
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	e.h = nil
	c.remove(e)
	c.end(e)
	return nil
}

// RetrieveForClient hands the caller a duplicate of luod's fd of its
// incoming (or already claimed) session, close-on-exec; the session
// becomes claimed. luod keeps its own fd, so the session stays alive if
// the client goes away; the client retrieves files with RETRIEVE_FD and
// finishes with FINISH or Finish. An open or finished session gives
// bad_request.
func (c *Custody) RetrieveForClient(caller Caller, name string) (Session, *os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, err := c.begin(caller, name)
	if err != nil {
		return Session{}, nil, err
	}
	defer c.end(e)
	if err := handedOver(e); err != nil {
		return Session{}, nil, err
	}
	dup, err := dupFile(e.h.File())
	if err != nil {
		return Session{}, nil, errorf(CodeInternal, name, "duplicating the session fd for the client: %w", err)
	}
	e.s.State = StateClaimed
	return e.snapshot(), dup, nil
}

// Holds reports whether luod holds its own fd of session name: the session
// is in custody and not finished (nor deleted).
func (c *Custody) Holds(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byName[name]
	return e != nil && e.h != nil
}

// handedOver checks that e is incoming or claimed.
func handedOver(e *entry) error {
	switch e.s.State {
	case StateIncoming, StateClaimed:
		return nil
	case StateOpen:
		return errorf(CodeBadRequest, e.s.Name, "session is open: it was created in this boot, not handed over by a live update")
	default:
		return errorf(CodeBadRequest, e.s.Name, "session is %s", e.s.State)
	}
}

// Listed is how many files Reclaim of the caller's session name would
// hand back now and the bytes their list takes in an answer
// (proto.FileInfo.ListedBytes); zeros for a session the caller cannot
// see. The sizes listed are those recorded: Reclaim does not change them.
func (c *Custody) Listed(caller Caller, name string) (files, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.byName[name]; e != nil && caller.sees(e.s.UID) {
		return len(e.s.Files), listed(e)
	}
	return 0, 0
}

// Reclaimed is what Reclaim hands back.
type Reclaimed struct {
	// Session is the entry after the reclaim; FDs[i] is the retrieved
	// file of Session.Files[i].
	Session Session
	// FDs are new descriptors (close-on-exec) of the retrieved files, as
	// plain numbers from RETRIEVE_FD on: luod only sends them to the
	// client, and an os.File would cost an fcntl(2) each. The caller owns
	// them and closes each exactly once (proto.CloseFDs), whether the
	// send worked or not. A token retrieved again (here or by the client)
	// is the same open file, sharing its file position: use pread.
	FDs []int
	// Finished reports that FINISH was issued.
	Finished bool
}

// Reclaim retrieves every recorded file of the caller's incoming or
// claimed session through luod's fd (RETRIEVE_FD; the kernel returns the
// same file for a token retrieved before) and, with finish, then issues
// FINISH and closes luod's fd. The session becomes claimed, or finished.
//
// The recorded sizes are reported as they are, with no fstat of the
// retrieved files: they cannot have changed. The kernel's memfd handler
// freezes the file at PRESERVE_FD (memfd_luo_preserve calls
// shmem_freeze under the inode lock and records i_size_read as the size),
// after which truncate, fallocate and growing writes are refused, and
// its retrieve gives the new file exactly that size (i_size_write). A
// declared file's size stays 0 (unknown); its owner can fstat it.
//
// All or nothing: since retrieving again is harmless, a failure closes
// the files retrieved so far and changes nothing. A token that was
// declared but never preserved gives not_found naming it; a FINISH the
// kernel refuses gives kernel, and the client may reclaim without finish.
func (c *Custody) Reclaim(caller Caller, name string, finish bool) (Reclaimed, error) {
	c.mu.Lock()
	e, err := c.begin(caller, name)
	if err == nil {
		if err = handedOver(e); err != nil {
			c.end(e)
		}
	}
	if err != nil {
		c.mu.Unlock()
		return Reclaimed{}, err
	}
	h, files := e.h, slices.Clone(e.s.Files)
	c.mu.Unlock()

	out, err := retrieveAll(h, name, files)
	if err == nil && finish {
		if ferr := h.Finish(); ferr != nil {
			proto.CloseFDs(out)
			out, err = nil, kernelError("FINISH", name, 0, false, ferr)
		} else {
			h.Close()
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.end(e)
	if err != nil {
		return Reclaimed{}, err
	}
	e.s.State = StateClaimed
	if finish {
		e.s.State, e.h = StateFinished, nil
	}
	return Reclaimed{Session: e.snapshot(), FDs: out, Finished: finish}, nil
}

// retrieveAll retrieves files through h, in order. On failure it closes
// the descriptors retrieved so far and returns none.
func retrieveAll(h Handle, name string, files []File) ([]int, error) {
	out := make([]int, 0, len(files))
	for _, f := range files {
		fd, err := h.RetrieveFDNum(f.Token)
		if err != nil {
			proto.CloseFDs(out)
			return nil, kernelError("RETRIEVE_FD", name, f.Token, true, err)
		}
		out = append(out, fd)
	}
	return out, nil
}

// Finish issues FINISH on the caller's incoming or claimed session through
// luod's fd and closes that fd: the kernel takes the preserved state back.
// The session stays listed as finished. Finishing a finished session does
// nothing; an open one gives bad_request. If the kernel refuses, the
// session is unchanged and the error is kernel.
func (c *Custody) Finish(caller Caller, name string) error {
	c.mu.Lock()
	e, err := c.begin(caller, name)
	switch {
	case err != nil:
	case e.s.State == StateFinished:
		c.end(e)
	default:
		if err = handedOver(e); err != nil {
			c.end(e)
		}
	}
	if err != nil || e.s.State == StateFinished {
		c.mu.Unlock()
		return err
	}
	h := e.h
	c.mu.Unlock()

	err = h.Finish()
	if err == nil {
		h.Close()
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.end(e)
	if err != nil {
		return kernelError("FINISH", name, 0, false, err)
	}
	e.s.State, e.h = StateFinished, nil
	return nil
}

// Status is a summary of the custody for the status operation.
type Status struct {
	// Frozen is set between Freeze and unfreeze: an upgrade is committing.
	Frozen bool
	// ManifestWritten is set while frozen once the reserved session holds
	// the manifest of the frozen table: WriteManifest succeeded, or the
	// manifest prewritten before the freeze (PrewriteManifest) is still
	// true.
	ManifestWritten bool
	// Sessions counts sessions by state.
	Open, Incoming, Claimed, Finished int
}

// Snapshot summarizes the custody. It works while frozen.
func (c *Custody) Snapshot() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{Frozen: c.frozen > 0, ManifestWritten: c.frozen > 0 && c.manifestCurrentLocked()}
	for _, e := range c.byName {
		switch {
		case e.creating:
		case e.s.State == StateOpen:
			st.Open++
		case e.s.State == StateIncoming:
			st.Incoming++
		case e.s.State == StateClaimed:
			st.Claimed++
		case e.s.State == StateFinished:
			st.Finished++
		}
	}
	return st
}

// Close closes every fd luod holds, the reserved session's included, and
// makes further operations fail. Closing drops every open session whose
// client fds are closed and finishes every handed-over one: a daemon that
// stops without an upgrade must first hand the fds to systemd's fd store.
func (c *Custody) Close() error {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for c.inflight > 0 {
		c.idle.Wait()
	}
	var hs []Handle
	for _, e := range c.byName {
		if e.h != nil {
			hs = append(hs, e.h)
			e.h = nil
		}
	}
	if h := c.takeReservedLocked(); h != nil {
		hs = append(hs, h)
	}
	c.mu.Unlock()
	var errs []error
	for _, h := range hs {
		if err := h.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
