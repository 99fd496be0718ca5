package proto

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// Session states, SessionInfo.State.
const (
	// StateOpen: created in this kernel, preserving; it goes over at the
	// next live update.
	StateOpen = "open"
	// StateIncoming: handed over by the previous kernel, not yet claimed
	// by its owner.
	StateIncoming = "incoming"
	// StateClaimed: retrieved by its owner (OpRetrieveSession or
	// OpReclaim), not yet finished.
	StateClaimed = "claimed"
	// StateFinished: its owner is done; the kernel has its state back.
	StateFinished = "finished"
)

// Continuity values, of HelloResult and Status: how this boot relates to
// the last one.
const (
	// ContinuityOK: a live update happened and luod's manifest matches the
	// sessions the kernel handed over.
	ContinuityOK = "ok"
	// ContinuityMismatch: a live update happened but the sessions or the
	// live update number differ from luod's manifest.
	ContinuityMismatch = "mismatch"
	// ContinuityColdBoot: the last boot had sessions and this one did not
	// come from it by live update: they are lost (Status.LostSessions).
	ContinuityColdBoot = "cold_boot"
	// ContinuityNoManifest: a live update happened but luod's own manifest
	// did not come over.
	ContinuityNoManifest = "no_manifest"
	// ContinuityFresh: nothing to continue.
	ContinuityFresh = "fresh"
)

// Upgrade phases, in order, of ProgressEvent.Phase and Status.UpgradePhase.
const (
	// PhaseBarrier: subscribers got EventPrepare; luod waits for OpReady.
	PhaseBarrier = "barrier"
	// PhaseManifest: luod writes its manifest into its own session.
	PhaseManifest = "manifest"
	// PhaseReboot: luod calls reboot(LINUX_REBOOT_CMD_KEXEC).
	PhaseReboot = "reboot"
)

// ReservedPrefix starts the names of luod's own sessions; clients may not
// use it (see ValidateSessionName).
const ReservedPrefix = "luod"

// HelloResult is the result of OpHello.
type HelloResult struct {
	// Version is the protocol version luod speaks.
	Version int `json:"version"`
	// Daemon names the daemon and its build, e.g. "luod 0.3.1".
	Daemon string `json:"daemon"`
	// Release is the running kernel's release (uname -r).
	Release string `json:"release"`
	// LiveUpdateNumber counts the live updates since the last cold boot.
	LiveUpdateNumber uint64 `json:"liveupdate_number"`
	// Continuity is one of the Continuity constants.
	Continuity string `json:"continuity"`
}

// CreateSessionArgs are the arguments of OpCreateSession. The response
// carries one fd: a duplicate of the new session's fd (luod keeps its own,
// so the session outlives the connection).
type CreateSessionArgs struct {
	// Name is the session's name; see ValidateSessionName.
	Name string `json:"name"`
	// Labels are free-form key/value pairs kept in luod's manifest and
	// shown by OpListSessions.
	Labels map[string]string `json:"labels,omitempty"`
	// Files, if any, are preserved into the new session as by OpPreserve,
	// one fd attached per entry in the same order (at most MaxFDs): one
	// round trip instead of two. Either the session is created holding
	// every file, or the request fails and no session is left.
	Files []FileSpec `json:"files,omitempty"`
}

// CreateSessionsArgs are the arguments of OpCreateSessions: OpCreateSession
// of several sessions in one request, at most MaxCreateSessions, with
// their fds attached session after session, each in the order of its
// Files (so at most MaxFDs files in all). No name may appear twice.
type CreateSessionsArgs struct {
	Sessions []SessionToCreate `json:"sessions"`
}

// SessionToCreate is one session of CreateSessionsArgs: the
// CreateSessionArgs of one create_session.
type SessionToCreate = CreateSessionArgs

// CreateSessionsResult is the result of OpCreateSessions: one entry per
// session of the request, in request order. The response carries no fd:
// a client that needs its own fd of a session uses OpCreateSession.
type CreateSessionsResult struct {
	Sessions []CreatedSession `json:"sessions"`
}

// CreatedSession answers one SessionToCreate. Without Error the session
// was created holding every file asked, Files listing them in request
// order; with Error nothing of it was left (each session is all or
// nothing, as OpCreateSession is), and the other sessions of the request
// are not affected.
type CreatedSession struct {
	Files []PreservedFile `json:"files,omitempty"`
	Error *Error          `json:"error,omitempty"`
}

// CreateSessionResult is the result of OpCreateSession.
type CreateSessionResult struct {
	Name string `json:"name"`
	// Files are the files preserved with the request, in request order;
	// absent when it carried none.
	Files []PreservedFile `json:"files,omitempty"`
}

// FileSpec names one file to preserve or declare.
type FileSpec struct {
	// Token is the file's 64-bit key in the session, chosen by the client
	// and unique in the session; it retrieves the file after the update.
	Token uint64 `json:"token"`
	// Label is a free-form description kept in luod's manifest.
	Label string `json:"label,omitempty"`
}

// PreserveArgs are the arguments of OpPreserve. The request carries one fd
// per entry of Files, in the same order (so at most MaxFDs files).
type PreserveArgs struct {
	// Session names a session of the caller in state open.
	Session string     `json:"session"`
	Files   []FileSpec `json:"files"`
}

// PreservedFile is one file preserved by OpPreserve.
type PreservedFile struct {
	Token uint64 `json:"token"`
	// Size is the file's size in bytes when preserved.
	Size int64 `json:"size"`
}

// PreserveResult is the result of OpPreserve: one entry per file, in
// request order.
type PreserveResult struct {
	Files []PreservedFile `json:"files"`
}

// DeclareArgs are the arguments of OpDeclare: tokens the client preserved
// itself with PRESERVE_FD on its session fd, so that luod records them in
// its manifest and can reclaim them. No fds.
type DeclareArgs struct {
	Session string     `json:"session"`
	Files   []FileSpec `json:"files"`
}

// DeleteSessionArgs are the arguments of OpDeleteSession.
type DeleteSessionArgs struct {
	Name string `json:"name"`
}

// ReadyArgs are the arguments of OpReady, the answer to EventPrepare.
type ReadyArgs struct {
	// Upgrade is PrepareEvent.Upgrade.
	Upgrade string `json:"upgrade"`
}

// RetrieveSessionArgs are the arguments of OpRetrieveSession.
type RetrieveSessionArgs struct {
	Name string `json:"name"`
}

// RetrieveSessionResult is the result of OpRetrieveSession. The response
// carries one fd: the retrieved session's fd (luod keeps its own).
type RetrieveSessionResult struct {
	Name string `json:"name"`
	// Files are the files luod's manifest lists for the session.
	Files []FileInfo `json:"files"`
}

// ReclaimArgs are the arguments of OpReclaim.
type ReclaimArgs struct {
	Name string `json:"name"`
	// Finish asks luod to finish the session once every file is
	// retrieved.
	Finish bool `json:"finish,omitempty"`
}

// ReclaimResult is the result of OpReclaim. The response carries one fd
// per entry of Files, in the same order.
type ReclaimResult struct {
	Files []FileInfo `json:"files"`
	// Finished reports whether the session was finished. With Finish
	// asked, false means the kernel refused FINISH for now (EBUSY): the
	// files are still sent and OpFinishSession may be retried.
	Finished bool `json:"finished"`
}

// ReclaimSessionsArgs are the arguments of OpReclaimSessions: OpReclaim
// of several sessions in one request.
type ReclaimSessionsArgs struct {
	Names []string `json:"names"`
	// Finish asks luod to finish each session once its files are
	// retrieved.
	Finish bool `json:"finish,omitempty"`
}

// ReclaimSessionsResult is the result of OpReclaimSessions: the sessions
// reclaimed, a prefix of the names asked, in that order. luod stops
// before a session whose files would take the response past MaxFDs, and
// at a session it cannot reclaim (the error is the answer when it is the
// first); the client asks again for the rest. The response carries one
// fd per file, session after session, each in the order of its Files.
type ReclaimSessionsResult struct {
	Sessions []ReclaimedSession `json:"sessions"`
}

// ReclaimedSession is one session of a ReclaimSessionsResult: the
// ReclaimResult of its name.
type ReclaimedSession struct {
	Name string `json:"name"`
	ReclaimResult
}

// FinishSessionArgs are the arguments of OpFinishSession.
type FinishSessionArgs struct {
	Name string `json:"name"`
}

// SessionsArgs are the optional arguments of OpListSessions and
// OpSessions: a page of the listing, which is sorted by name. Without
// them the answer is the first page.
type SessionsArgs struct {
	// After lists only sessions whose names sort after it: the Next of the
	// previous page.
	After string `json:"after,omitempty"`
	// Limit caps the sessions in the page; 0 leaves it to luod, which
	// fills a page up to what one message holds.
	Limit int `json:"limit,omitempty"`
}

// SessionsResult is the result of OpListSessions and OpSessions: one page
// of sessions, in name order.
type SessionsResult struct {
	Sessions []SessionInfo `json:"sessions"`
	// Next, when not empty, is the last name of this page and says that
	// more sessions follow: ask again with After set to it.
	Next string `json:"next,omitempty"`
}

// SessionInfo describes a session.
type SessionInfo struct {
	Name   string            `json:"name"`
	UID    uint32            `json:"uid"`
	Labels map[string]string `json:"labels,omitempty"`
	// State is one of the State constants.
	State string     `json:"state"`
	Files []FileInfo `json:"files"`
	// Created is when the session was created, in the boot that created
	// it.
	Created time.Time `json:"created"`
	// Incoming reports whether the session came from the previous kernel
	// (state incoming, claimed or finished).
	Incoming bool `json:"incoming"`
}

// FileInfo describes a preserved or declared file.
type FileInfo struct {
	Token uint64 `json:"token"`
	Label string `json:"label,omitempty"`
	// Size in bytes; 0 for a declared file whose size luod cannot know.
	Size int64 `json:"size"`
}

// FileListBudget is the most bytes a session's files may take listed
// (ListedBytes of each): what a reclaim or retrieve_session answer about
// the session alone may hold besides the envelope and the session's name.
// luod refuses to preserve or declare files past it, so that every
// session can be handed back.
const FileListBudget = MaxMessageSize - 512

// ListedBytes bounds the bytes f takes in an answer's list of files: its
// JSON and a comma, exact but for the label, counted as encoding/json may
// write it at most: a byte it may escape (<, >, &, ", \, a control
// byte) as 6 (\u003c), an invalid UTF-8 byte as 6 (\ufffd), U+2028 and
// U+2029 as 6, any other character as its bytes.
func (f FileInfo) ListedBytes() int {
	var buf [20]byte
	n := len(`{"token":,"size":},`) + len(strconv.AppendUint(buf[:0], f.Token, 10)) + len(strconv.AppendInt(buf[:0], f.Size, 10))
	if f.Label == "" {
		return n
	}
	n += len(`,"label":""`)
	for i := 0; i < len(f.Label); {
		c := f.Label[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				n += 6
			} else {
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(f.Label[i:])
		switch {
		case r == utf8.RuneError && size == 1, r == '\u2028', r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}

// Status is the result of OpStatus.
type Status struct {
	// Version is the protocol version.
	Version int    `json:"version"`
	Release string `json:"release"`
	BootID  string `json:"boot_id"`
	// LiveUpdateNumber counts the live updates since the last cold boot.
	LiveUpdateNumber uint64 `json:"liveupdate_number"`
	// Continuity is one of the Continuity constants.
	Continuity string `json:"continuity"`
	// ExpectedLiveUpdateNumber is what the manifest of the previous boot
	// predicted this boot's LiveUpdateNumber to be.
	ExpectedLiveUpdateNumber uint64 `json:"expected_liveupdate_number"`
	// PreviousRelease is the kernel release of the previous boot, if known.
	PreviousRelease string `json:"previous_release"`
	// LostSessions names the sessions of the last boot that did not come
	// over (ContinuityColdBoot, ContinuityMismatch).
	LostSessions []string      `json:"lost_sessions"`
	Sessions     SessionCounts `json:"sessions"`
	// Loaded is the kernel loaded for the next upgrade, or nil.
	Loaded *LoadedKernel `json:"loaded"`
	// UpgradePhase is the phase of the upgrade in progress (a Phase
	// constant), or "" when none runs.
	UpgradePhase string `json:"upgrade_phase"`
	// UnclaimedOverdue names incoming sessions still unclaimed after
	// luod's grace period.
	UnclaimedOverdue []string `json:"unclaimed_overdue"`
}

// SessionCounts counts sessions by state.
type SessionCounts struct {
	Open     int `json:"open"`
	Incoming int `json:"incoming"`
	Claimed  int `json:"claimed"`
}

// InspectArgs are the arguments of OpInspect. Its result is the decoded
// KHO handover, as pkg/kho renders it to JSON.
type InspectArgs struct {
	// Dir is a saved copy of the KHO debugfs tree to decode instead of
	// the running kernel's; empty for the running kernel.
	Dir string `json:"dir,omitempty"`
}

// LoadArgs are the arguments of OpLoad. The request carries the kernel
// image's fd, then the initrd's if Initrd, then the config's if Config.
type LoadArgs struct {
	// Cmdline is the new kernel's command line.
	Cmdline string `json:"cmdline,omitempty"`
	// ReuseCmdline starts from the running kernel's command line
	// (/proc/cmdline) instead of Cmdline.
	ReuseCmdline bool `json:"reuse_cmdline,omitempty"`
	// Append is appended, after a space, to the command line.
	Append string `json:"append,omitempty"`
	// Force loads despite preflight warnings (not errors).
	Force bool `json:"force,omitempty"`
	// Initrd says an initrd fd follows the kernel's.
	Initrd bool `json:"initrd,omitempty"`
	// Config says the kernel's config fd follows, for the preflight
	// checks.
	Config bool `json:"config,omitempty"`
}

// LoadedKernel describes the kernel loaded for the next upgrade.
type LoadedKernel struct {
	// Release is the new kernel's release, read from its image.
	Release string `json:"release"`
	// Kernel and Initrd identify the loaded images (file name as luod saw
	// it and SHA-256); Initrd is "" without one.
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd"`
	Cmdline string `json:"cmdline"`
}

// LoadResult is the result of OpLoad.
type LoadResult struct {
	LoadedKernel
	// Warnings are preflight findings that did not stop the load.
	Warnings []string `json:"warnings"`
}

// UpgradeArgs are the arguments of OpUpgrade.
type UpgradeArgs struct {
	// TimeoutMS bounds the barrier: how long subscribers have to answer
	// OpReady; 0 means luod's default.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// DryRun does everything but the reboot, and answers.
	DryRun bool `json:"dry_run,omitempty"`
	// Force goes on although some preflight check warns.
	Force bool `json:"force,omitempty"`
}

// UpgradeResult is the result of OpUpgrade, sent only for a dry run or a
// run that stopped before the reboot; a real upgrade ends with
// EventCommitted and the connection closing instead.
type UpgradeResult struct {
	Upgrade string `json:"upgrade"`
	DryRun  bool   `json:"dry_run"`
	// Phases maps each phase that ran to how long it took, in
	// milliseconds.
	Phases map[string]int64 `json:"phases"`
}

// PrepareEvent is the data of EventPrepare.
type PrepareEvent struct {
	// Upgrade identifies the upgrade; pass it to OpReady.
	Upgrade string `json:"upgrade"`
	// DeadlineMS is how long, from the event, the client has to answer.
	DeadlineMS int64 `json:"deadline_ms"`
}

// AbortedEvent is the data of EventAborted.
type AbortedEvent struct {
	Upgrade string `json:"upgrade"`
	// Reason is a human sentence, e.g. naming the client that did not
	// answer.
	Reason string `json:"reason"`
}

// CommittedEvent is the data of EventCommitted.
type CommittedEvent struct {
	Upgrade string `json:"upgrade"`
}

// ProgressEvent is the data of EventProgress.
type ProgressEvent struct {
	Upgrade string `json:"upgrade"`
	// Phase is one of the Phase constants.
	Phase string `json:"phase"`
}
