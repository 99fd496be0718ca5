//go:build linux

package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/metrics"
	"github.com/luod/luod/pkg/proto"
)

// Session is a session fd of the caller's own, from CreateSession or
// RetrieveSession. Its embedded *ioctl.Session issues the kernel's ioctls
// directly on it: PreserveFD (then Declare the tokens to luod), RetrieveFD
// and Finish. luod holds its own fd of the session, so closing this one
// does not end the session; DeleteSession does.
type Session struct {
	*ioctl.Session
	// Files, for a retrieved session, are the files luod's manifest lists
	// in it: what RetrieveFD can get back.
	Files []proto.FileInfo
}

// FileToPreserve is a file for Preserve.
type FileToPreserve struct {
	// File is the file to preserve (a memfd). The caller keeps it open
	// and closes it; preservation holds the file itself, not this fd.
	File *os.File
	// Token is the file's key in the session, unique in the session.
	Token uint64
	// Label is kept in luod's manifest, e.g. "guest-ram-0".
	Label string
}

// ReclaimedFile is a file Reclaim got back.
type ReclaimedFile struct {
	Token uint64
	Label string
	// Size is the file's size in bytes as luod recorded it.
	Size int64
	// File is the restored file; the caller closes it.
	File *os.File
}

// Hello asks luod who it is and how this boot continues the last.
func (c *Client) Hello(ctx context.Context) (*proto.HelloResult, error) {
	var res proto.HelloResult
	if _, err := c.do(ctx, proto.OpHello, nil, nil, &res, 0); err != nil {
		return nil, err
	}
	return &res, nil
}

// CreateSession creates a session called name, owned by the caller's uid,
// with free-form labels. The name is checked locally first
// (proto.ValidateSessionName, the same *proto.Error luod would answer).
// luod keeps the session alive on its own; the returned Session holds a
// duplicate of its fd.
func (c *Client) CreateSession(ctx context.Context, name string, labels map[string]string) (*Session, error) {
	if err := proto.ValidateSessionName(name); err != nil {
		return nil, err
	}
	s, _, err := c.createSession(ctx, name, labels, nil, nil)
	return s, err
}

// createSession sends one create_session request for name, with the files
// specs (none for CreateSession), fds riding along, and returns the
// session and the files luod says it preserved.
func (c *Client) createSession(ctx context.Context, name string, labels map[string]string, specs []proto.FileSpec, fds []*os.File) (*Session, []proto.PreservedFile, error) {
	var res proto.CreateSessionResult
	got, err := c.do(ctx, proto.OpCreateSession, proto.CreateSessionArgs{Name: name, Labels: labels, Files: specs}, fds, &res, 1)
	if err != nil {
		return nil, nil, err
	}
	if res.Name == "" {
		res.Name = name
	}
	return &Session{Session: ioctl.NewSession(c.backend, got[0], res.Name, false)}, res.Files, nil
}

// CreateSessionWithFiles creates a session as CreateSession does and has
// luod preserve files into it as Preserve does, in one request when they
// fit one (at most proto.MaxFDs files and proto.MaxMessageSize bytes):
// one round trip instead of two. That first request is all or nothing: if
// luod cannot preserve one of its files, it answers the error and no
// session is left. Files past the first request follow in preserve
// requests, with Preserve's partial-failure rules; then the session
// exists, and it is returned with the error and the files preserved.
//
// It needs a luod that knows the files of create_session (a luod from
// before answers bad_request and creates nothing); with no files it is
// CreateSession.
func (c *Client) CreateSessionWithFiles(ctx context.Context, name string, labels map[string]string, files []FileToPreserve) (*Session, []proto.PreservedFile, error) {
	if len(files) == 0 {
		s, err := c.CreateSession(ctx, name, labels)
		return s, nil, err
	}
	if err := proto.ValidateSessionName(name); err != nil {
		return nil, nil, err
	}
	if err := checkFiles(proto.OpCreateSession, files); err != nil {
		return nil, nil, err
	}
	// Every file is measured once and checked to fit a request before
	// anything is sent; the files past the first request go to preserve.
	specs, fds := wireFiles(files)
	sizes, err := listSizes(specs)
	var ends []int
	if err == nil {
		base := baseSize(proto.OpCreateSession, proto.CreateSessionArgs{Name: name, Labels: labels, Files: []proto.FileSpec{}})
		ends, err = runs(base, sizes, 1)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("luod create_session: %w", err)
	}
	n := ends[0]
	s, done, err := c.createSession(ctx, name, labels, specs[:n], fds[:n])
	if err != nil {
		return nil, nil, err
	}
	if len(done) != n {
		return s, done, fmt.Errorf("luod create_session: %d files preserved, %d sent", len(done), n)
	}
	if n < len(files) {
		more, err := c.preserve(ctx, s.Name(), specs[n:], fds[n:], sizes[n:])
		done = append(done, more...)
		if err != nil {
			return s, done, err
		}
	}
	return s, done, nil
}

// SessionToCreate is one session for CreateSessions.
type SessionToCreate struct {
	Name   string
	Labels map[string]string
	Files  []FileToPreserve
}

// CreatedSession is what CreateSessions did with one SessionToCreate.
type CreatedSession struct {
	// Files are the files preserved, in order, when Err is nil.
	Files []proto.PreservedFile
	// Err is nil when the session was created holding every file asked.
	// Otherwise it says why not: luod's *proto.Error when luod refused the
	// session (nothing of it is left), a local check's error when it was
	// not sent, or the error that ended the call (see CreateSessions). A
	// session of more than proto.MaxFDs files is CreateSessionWithFiles's:
	// with Err set it may exist, holding the Files listed.
	Err error
}

// CreateSessions creates many sessions, each as CreateSessionWithFiles
// would, in as few requests as the protocol allows (create_sessions: up
// to proto.MaxCreateSessions sessions and proto.MaxFDs files a request),
// and returns one CreatedSession per session, in order. Each session is
// all or nothing, and one refused (name taken, a file that cannot be
// preserved, …) does not keep the others from being created. No session
// fd comes back: luod holds the sessions; a workload that needs its own
// fd of a session uses CreateSession. A session of more than proto.MaxFDs
// files is created alone by CreateSessionWithFiles (then its files past
// the first request follow with Preserve's partial-failure rules).
//
// The error is nil when every session was created. Otherwise it names how
// many were not and wraps the first reason. A request that got no answer
// (the connection failed, ctx ended) may still take effect: its sessions
// and those not yet sent carry that error, and ListSessions tells which
// exist. A luod without create_sessions gets one create_session a
// session.
func (c *Client) CreateSessions(ctx context.Context, sessions []SessionToCreate) ([]CreatedSession, error) {
	out := make([]CreatedSession, len(sessions))
	seen := make(map[string]bool, len(sessions))
	size := newRequest(baseSize(proto.OpCreateSessions, proto.CreateSessionsArgs{Sessions: []proto.SessionToCreate{}}), proto.MaxCreateSessions)
	var batch []int // indexes of sessions in the request being built
	var specs []proto.SessionToCreate
	var fds []*os.File
	batched := true
	var fatal error

	// send sends the request built so far, or creates its sessions one by
	// one once luod turned out not to know create_sessions.
	send := func() {
		if len(batch) > 0 && fatal == nil {
			if batched {
				batched, fatal = c.createBatch(ctx, sessions, batch, specs, fds, out)
			}
			if !batched {
				for _, i := range batch {
					out[i].Files, out[i].Err = c.createOne(ctx, sessions[i])
				}
			}
		}
		batch, specs, fds = batch[:0], specs[:0], fds[:0]
	}

	for i, s := range sessions {
		if fatal != nil {
			out[i].Err = fatal
			continue
		}
		if err := proto.ValidateSessionName(s.Name); err != nil {
			out[i].Err = err
			continue
		}
		if seen[s.Name] {
			out[i].Err = fmt.Errorf("luod create_sessions: session %q is named twice", s.Name)
			continue
		}
		seen[s.Name] = true
		if err := checkFiles(proto.OpCreateSessions, s.Files); err != nil {
			out[i].Err = err
			continue
		}
		if len(s.Files) > proto.MaxFDs {
			out[i].Files, out[i].Err = c.createOne(ctx, s)
			continue
		}
		spec, sfds := wireFiles(s.Files)
		ps := proto.SessionToCreate{Name: s.Name, Labels: s.Labels, Files: spec}
		n, err := listSize(ps)
		if err != nil {
			out[i].Err = fmt.Errorf("luod create_sessions: session %q: %w", s.Name, err)
			continue
		}
		if !size.alone(n) {
			out[i].Err = fmt.Errorf("luod create_sessions: session %q alone is too large for one request (%d bytes of JSON)", s.Name, n)
			continue
		}
		if size.add(n, len(sfds)) {
			send()
			if fatal != nil {
				out[i].Err = fatal
				continue
			}
		}
		batch = append(batch, i)
		specs = append(specs, ps)
		fds = append(fds, sfds...)
	}
	send()

	failed, first := 0, -1
	for i := range out {
		if out[i].Err != nil {
			if first < 0 {
				first = i
			}
			failed++
		}
	}
	if failed > 0 {
		return out, fmt.Errorf("luod create_sessions: %d of %d sessions not created; the first, %q: %w",
			failed, len(sessions), sessions[first].Name, out[first].Err)
	}
	return out, nil
}

// createBatch sends sessions[batch] (specs, with fds) in one
// create_sessions request and sets their out. batched is false, and
// nothing set, when luod does not know create_sessions; fatal is an error
// that ends CreateSessions, set for every session of the batch.
func (c *Client) createBatch(ctx context.Context, sessions []SessionToCreate, batch []int, specs []proto.SessionToCreate, fds []*os.File, out []CreatedSession) (batched bool, fatal error) {
	var res proto.CreateSessionsResult
	_, err := c.do(ctx, proto.OpCreateSessions, proto.CreateSessionsArgs{Sessions: specs}, fds, &res, 0)
	switch {
	case errors.Is(err, proto.ErrUnknownOp):
		return false, nil
	case err != nil:
		fatal = err
	case len(res.Sessions) != len(batch):
		fatal = fmt.Errorf("luod create_sessions: %w: %d sessions answered for %d asked", ErrProtocol, len(res.Sessions), len(batch))
	}
	for k, i := range batch {
		if fatal != nil {
			break
		}
		switch r := res.Sessions[k]; {
		case r.Error != nil:
			out[i].Err = r.Error
		case len(r.Files) != len(sessions[i].Files):
			fatal = fmt.Errorf("luod create_sessions: %w: session %q: %d files answered for %d sent",
				ErrProtocol, sessions[i].Name, len(r.Files), len(sessions[i].Files))
		default:
			out[i].Files = r.Files
		}
	}
	if fatal != nil {
		for _, i := range batch {
			out[i].Files, out[i].Err = nil, fatal
		}
	}
	return true, fatal
}

// createOne creates one session of CreateSessions with
// CreateSessionWithFiles, closing the session fd it hands back.
func (c *Client) createOne(ctx context.Context, s SessionToCreate) ([]proto.PreservedFile, error) {
	cs, done, err := c.CreateSessionWithFiles(ctx, s.Name, s.Labels, s.Files)
	if cs != nil {
		cs.Close()
	}
	return done, err
}

// request is a request being filled with items, against the protocol's
// limits: at most proto.MaxMessageSize bytes of JSON (its envelope without
// the items, base, included), proto.MaxFDs fds and, if maxItems is not 0,
// maxItems items.
type request struct {
	base, maxItems   int
	size, fds, items int
}

func newRequest(base, maxItems int) request {
	return request{base: base, maxItems: maxItems, size: base}
}

// alone reports whether an item of size n (listSize) fits a request of its
// own.
func (r *request) alone(n int) bool { return r.base+n <= proto.MaxMessageSize }

// add counts in an item of size n with fds fds, first starting a new
// request if it does not fit the one being filled; next reports that.
func (r *request) add(n, fds int) (next bool) {
	next = r.items > 0 && (r.size+n > proto.MaxMessageSize || r.fds+fds > proto.MaxFDs || r.maxItems > 0 && r.items == r.maxItems)
	if next {
		r.size, r.fds, r.items = r.base, 0, 0
	}
	r.size, r.fds, r.items = r.size+n, r.fds+fds, r.items+1
	return next
}

// listSize is the size of item in a request's list: its JSON and a comma.
func listSize(item any) (int, error) {
	b, err := json.Marshal(item)
	return len(b) + 1, err
}

// listSizes is listSize of each file.
func listSizes(files []proto.FileSpec) ([]int, error) {
	sizes := make([]int, len(files))
	for i, f := range files {
		var err error
		if sizes[i], err = listSize(f); err != nil {
			return nil, err
		}
	}
	return sizes, nil
}

// runs splits files of sizes (listSizes), fdsEach fds riding with each,
// into runs that each fit one request whose envelope without them has
// size base (see request), and returns where each run ends.
func runs(base int, sizes []int, fdsEach int) ([]int, error) {
	r := newRequest(base, 0)
	var ends []int
	for i, n := range sizes {
		if !r.alone(n) {
			return nil, fmt.Errorf("file %d alone is too large for one request (%d bytes of JSON)", i, n)
		}
		if r.add(n, fdsEach) {
			ends = append(ends, i)
		}
	}
	if len(sizes) > 0 {
		ends = append(ends, len(sizes))
	}
	return ends, nil
}

// baseSize is the size of a request for op whose args are args with an
// empty files list, with the largest id.
func baseSize(op string, args any) int {
	req, err := proto.NewRequest(math.MaxUint64, op, args)
	if err != nil {
		return proto.MaxMessageSize
	}
	b, _ := json.Marshal(req)
	return len(b)
}

// Preserve has luod preserve files (memfds) into the caller's session,
// each under its token, and returns their sizes in order. Files go in
// requests of at most proto.MaxFDs files (and proto.MaxMessageSize bytes)
// each. luod preserves a request's files in order and stops at the first
// it cannot preserve, naming its token in the error; the kernel cannot
// undo a preservation, so the files before it stay preserved. On error,
// Preserve returns the files of the requests that fully succeeded;
// ListSessions tells exactly what the session holds. An empty list sends
// nothing.
func (c *Client) Preserve(ctx context.Context, session string, files []FileToPreserve) ([]proto.PreservedFile, error) {
	if len(files) == 0 {
		return nil, nil
	}
	if err := checkFiles(proto.OpPreserve, files); err != nil {
		return nil, err
	}
	specs, fds := wireFiles(files)
	sizes, err := listSizes(specs)
	if err != nil {
		return nil, fmt.Errorf("luod preserve: %w", err)
	}
	return c.preserve(ctx, session, specs, fds, sizes)
}

// preserve is Preserve of files checked and split (wireFiles), their
// sizes measured (listSizes).
func (c *Client) preserve(ctx context.Context, session string, specs []proto.FileSpec, fds []*os.File, sizes []int) ([]proto.PreservedFile, error) {
	base := baseSize(proto.OpPreserve, proto.PreserveArgs{Session: session, Files: []proto.FileSpec{}})
	ends, err := runs(base, sizes, 1)
	if err != nil {
		return nil, fmt.Errorf("luod preserve: %w", err)
	}
	var done []proto.PreservedFile
	start := 0
	for _, end := range ends {
		args := proto.PreserveArgs{Session: session, Files: specs[start:end]}
		var res proto.PreserveResult
		if _, err := c.do(ctx, proto.OpPreserve, args, fds[start:end], &res, 0); err != nil {
			if len(done) > 0 {
				err = fmt.Errorf("luod preserve: request for files %d to %d of %d failed (the %d before are preserved): %w",
					len(done), len(done)+end-start-1, len(specs), len(done), err)
			}
			return done, err
		}
		done = append(done, res.Files...)
		start = end
	}
	return done, nil
}

// Declare tells luod about tokens the caller preserved itself with
// Session.PreserveFD, so that its manifest lists them and Reclaim can get
// them back. A list too long for one request is sent in several, each
// accepted or refused as a whole; an empty list sends nothing.
func (c *Client) Declare(ctx context.Context, session string, files []proto.FileSpec) error {
	base := baseSize(proto.OpDeclare, proto.DeclareArgs{Session: session, Files: []proto.FileSpec{}})
	sizes, err := listSizes(files)
	var ends []int
	if err == nil {
		ends, err = runs(base, sizes, 0)
	}
	if err != nil {
		return fmt.Errorf("luod declare: %w", err)
	}
	start := 0
	for _, end := range ends {
		if _, err := c.do(ctx, proto.OpDeclare, proto.DeclareArgs{Session: session, Files: files[start:end]}, nil, nil, 0); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// ListSessions lists the caller's sessions, sorted by name, asking luod
// page after page (SessionsPage) until it has them all.
func (c *Client) ListSessions(ctx context.Context) ([]proto.SessionInfo, error) {
	return c.allPages(ctx, proto.OpListSessions)
}

// SessionsPage asks for one page of a listing, op being
// proto.OpListSessions (the caller's sessions) or proto.OpSessions (every
// user's, admin): the sessions after args.After in name order, at most
// args.Limit if not 0. res.Next, if not empty, is the After of the next
// page.
func (c *Client) SessionsPage(ctx context.Context, op string, args proto.SessionsArgs) (*proto.SessionsResult, error) {
	var res proto.SessionsResult
	if _, err := c.do(ctx, op, args, nil, &res, 0); err != nil {
		return nil, err
	}
	return &res, nil
}

// allPages is every page of listing op, joined. Sessions created or
// deleted meanwhile may or may not appear; none appears twice, since each
// page starts after the last name of the one before.
func (c *Client) allPages(ctx context.Context, op string) ([]proto.SessionInfo, error) {
	var all []proto.SessionInfo
	var args proto.SessionsArgs
	for {
		res, err := c.SessionsPage(ctx, op, args)
		if err != nil {
			return nil, err
		}
		all = append(all, res.Sessions...)
		if res.Next == "" {
			if all == nil {
				all = []proto.SessionInfo{}
			}
			return all, nil
		}
		if res.Next <= args.After {
			return nil, fmt.Errorf("luod: listing %s: page after %q ends at %q, not further", op, args.After, res.Next)
		}
		args.After = res.Next
	}
}

// DeleteSession has luod close its fd of the caller's session name; the
// kernel drops the session and its files once the caller's fds of it are
// closed too. After a live update, deleting an unclaimed session finishes
// it.
func (c *Client) DeleteSession(ctx context.Context, name string) error {
	_, err := c.do(ctx, proto.OpDeleteSession, proto.DeleteSessionArgs{Name: name}, nil, nil, 0)
	return err
}

// Subscribe asks for upgrade events on this connection; read them from
// Events. Answer every proto.EventPrepare with Ready before its deadline,
// or the upgrade is aborted.
func (c *Client) Subscribe(ctx context.Context) error {
	_, err := c.do(ctx, proto.OpSubscribe, nil, nil, nil, 0)
	return err
}

// Ready answers proto.EventPrepare of the upgrade upgradeID: this workload
// is ready for the live update.
func (c *Client) Ready(ctx context.Context, upgradeID string) error {
	_, err := c.do(ctx, proto.OpReady, proto.ReadyArgs{Upgrade: upgradeID}, nil, nil, 0)
	return err
}

// RetrieveSession gets, after a live update, a fd of the caller's session
// name as handed over by the previous kernel. Retrieve files with
// Session.RetrieveFD and end with Session.Finish or FinishSession.
func (c *Client) RetrieveSession(ctx context.Context, name string) (*Session, error) {
	var res proto.RetrieveSessionResult
	files, err := c.do(ctx, proto.OpRetrieveSession, proto.RetrieveSessionArgs{Name: name}, nil, &res, 1)
	if err != nil {
		return nil, err
	}
	if res.Name == "" {
		res.Name = name
	}
	return &Session{Session: ioctl.NewSession(c.backend, files[0], res.Name, true), Files: res.Files}, nil
}

// Reclaim has luod retrieve every file of the caller's session name after
// a live update and send them, in manifest order; with finish, luod
// finishes the session too. A session of more files than one answer
// carries, which luod refuses untouched, is taken through its own fd
// (RetrieveSession, RETRIEVE_FD of each file, FinishSession). If the
// files were retrieved but the session could not be finished, Reclaim
// returns the files and an error matching ErrNotFinished (the one case
// of both): retry with FinishSession.
func (c *Client) Reclaim(ctx context.Context, name string, finish bool) ([]ReclaimedFile, error) {
	var res proto.ReclaimResult
	files, err := c.do(ctx, proto.OpReclaim, proto.ReclaimArgs{Name: name, Finish: finish}, nil, &res, -1)
	if errors.Is(err, proto.ErrLimit) {
		return c.reclaimLarge(ctx, name, finish, err)
	}
	if err != nil {
		return nil, err
	}
	if len(files) != len(res.Files) {
		closeFiles(files)
		return nil, fmt.Errorf("luod reclaim: %w: response lists %d files but has %d fds", ErrProtocol, len(res.Files), len(files))
	}
	out := reclaimed(res.Files, files)
	if finish && !res.Finished {
		return out, fmt.Errorf("luod reclaim of session %q: %w", name, ErrNotFinished)
	}
	return out, nil
}

// reclaimLarge is Reclaim of a session whose files do not fit one answer
// (luod refused reclaim with limit, untouched: refused is that error):
// the session's fd from retrieve_session, RETRIEVE_FD of each file
// through it, then, with finish, finish_session. If that fails too, the
// error holds both. A RETRIEVE_FD that fails leaves the session claimed
// (retrieve_session did that), its files still preserved: Reclaim may
// be tried again.
func (c *Client) reclaimLarge(ctx context.Context, name string, finish bool, refused error) ([]ReclaimedFile, error) {
	s, err := c.RetrieveSession(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%w; and through the session's fd: %w", refused, err)
	}
	defer s.Close()
	out := make([]ReclaimedFile, 0, len(s.Files))
	for _, fi := range s.Files {
		f, err := s.RetrieveFD(fi.Token)
		if err != nil {
			for _, r := range out {
				r.File.Close()
			}
			return nil, fmt.Errorf("%w; and through the session's fd: %w", refused, err)
		}
		out = append(out, ReclaimedFile{Token: fi.Token, Label: fi.Label, Size: fi.Size, File: f})
	}
	if finish {
		if err := c.FinishSession(ctx, name); err != nil {
			return out, fmt.Errorf("luod reclaim of session %q: %w: %w", name, ErrNotFinished, err)
		}
	}
	return out, nil
}

// reclaimed pairs the files luod lists with the fds that came with them,
// fds[i] being the file of infos[i].
func reclaimed(infos []proto.FileInfo, fds []*os.File) []ReclaimedFile {
	out := make([]ReclaimedFile, len(infos))
	for i, fi := range infos {
		out[i] = ReclaimedFile{Token: fi.Token, Label: fi.Label, Size: fi.Size, File: fds[i]}
	}
	return out
}

// ReclaimSessions is Reclaim of every session of names, in as few
// requests as the fds allow (reclaim_sessions: up to proto.MaxFDs files
// an answer); the result's [i] are the files of names[i]. On an error,
// it holds the sessions reclaimed before it (nil for the others). With finish, a
// session the kernel would not finish yet gives ErrNotFinished once all
// are reclaimed. A luod without reclaim_sessions gets one Reclaim a
// session.
func (c *Client) ReclaimSessions(ctx context.Context, names []string, finish bool) ([][]ReclaimedFile, error) {
	got := make([][]ReclaimedFile, len(names))
	var unfinished []string
	// one reclaims names[i] with a request of its own (Reclaim: a
	// session whose files fit no answer it takes through its fd).
	one := func(i int) error {
		var err error
		got[i], err = c.Reclaim(ctx, names[i], finish)
		if errors.Is(err, ErrNotFinished) {
			unfinished = append(unfinished, names[i])
			return nil
		}
		return err
	}
	for done := 0; done < len(names); {
		var res proto.ReclaimSessionsResult
		files, err := c.do(ctx, proto.OpReclaimSessions, proto.ReclaimSessionsArgs{Names: names[done:], Finish: finish}, nil, &res, -1)
		if errors.Is(err, proto.ErrUnknownOp) {
			for ; done < len(names); done++ {
				if err := one(done); err != nil {
					return got, err
				}
			}
			break
		}
		if errors.Is(err, proto.ErrLimit) { // names[done] alone fits no answer
			if err := one(done); err != nil {
				return got, err
			}
			done++
			continue
		}
		if err != nil {
			return got, err
		}
		n := 0
		for _, s := range res.Sessions {
			n += len(s.Files)
		}
		if len(res.Sessions) == 0 || len(res.Sessions) > len(names)-done || n != len(files) {
			closeFiles(files)
			return got, fmt.Errorf("luod reclaim_sessions: %w: %d sessions with %d files for %d names, %d fds",
				ErrProtocol, len(res.Sessions), n, len(names)-done, len(files))
		}
		for _, s := range res.Sessions {
			if s.Name != names[done] {
				closeFiles(files)
				return got, fmt.Errorf("luod reclaim_sessions: %w: answered %q for %q", ErrProtocol, s.Name, names[done])
			}
			got[done] = reclaimed(s.Files, files)
			files = files[len(s.Files):]
			if finish && !s.Finished {
				unfinished = append(unfinished, s.Name)
			}
			done++
		}
	}
	if len(unfinished) > 0 {
		return got, fmt.Errorf("luod reclaim of sessions %q: %w", unfinished, ErrNotFinished)
	}
	return got, nil
}

// FinishSession has luod finish the caller's retrieved session name: the
// kernel gets the preserved state back.
func (c *Client) FinishSession(ctx context.Context, name string) error {
	_, err := c.do(ctx, proto.OpFinishSession, proto.FinishSessionArgs{Name: name}, nil, nil, 0)
	return err
}

// Status reports luod's state (admin).
func (c *Client) Status(ctx context.Context) (*proto.Status, error) {
	var res proto.Status
	if _, err := c.do(ctx, proto.OpStatus, nil, nil, &res, 0); err != nil {
		return nil, err
	}
	return &res, nil
}

// Metrics returns luod's state and event counts (admin only): what
// luod-exporter serves to Prometheus.
func (c *Client) Metrics(ctx context.Context) (*metrics.Snapshot, error) {
	var s metrics.Snapshot
	if _, err := c.do(ctx, proto.OpMetrics, nil, nil, &s, 0); err != nil {
		return nil, err
	}
	return &s, nil
}

// Sessions lists every user's sessions (admin), sorted by name, page
// after page as ListSessions does.
func (c *Client) Sessions(ctx context.Context) ([]proto.SessionInfo, error) {
	return c.allPages(ctx, proto.OpSessions)
}

// Inspect returns the decoded KHO handover of the running kernel, or of a
// saved copy in dir if not empty (admin).
func (c *Client) Inspect(ctx context.Context, dir string) (json.RawMessage, error) {
	var res json.RawMessage
	if _, err := c.do(ctx, proto.OpInspect, proto.InspectArgs{Dir: dir}, nil, &res, 0); err != nil {
		return nil, err
	}
	return res, nil
}

// Load has luod check and load kernel, with initrd and config if not nil,
// for the next upgrade (admin). args.Initrd and args.Config are set from
// the files given.
func (c *Client) Load(ctx context.Context, kernel, initrd, config *os.File, args proto.LoadArgs) (*proto.LoadResult, error) {
	if kernel == nil {
		return nil, errors.New("luod load: no kernel image")
	}
	files := []*os.File{kernel}
	args.Initrd, args.Config = initrd != nil, config != nil
	if initrd != nil {
		files = append(files, initrd)
	}
	if config != nil {
		files = append(files, config)
	}
	var res proto.LoadResult
	if _, err := c.do(ctx, proto.OpLoad, args, files, &res, 0); err != nil {
		return nil, err
	}
	return &res, nil
}

// Unload drops the loaded kernel (admin).
func (c *Client) Unload(ctx context.Context) error {
	_, err := c.do(ctx, proto.OpUnload, nil, nil, nil, 0)
	return err
}

// Upgrade runs a live update into the loaded kernel (admin), calling
// progress (if not nil), in this goroutine, as each phase starts.
//
// A dry run, or a run that stopped before the reboot, returns its result
// or luod's *proto.Error (proto.ErrAborted when a workload did not get
// ready, proto.ErrKexecFailed when the reboot failed with every session
// intact). A real upgrade never answers: luod sends proto.EventCommitted
// and the connection closes as the machine kexecs. Upgrade then returns
// a result naming the upgrade and an error matching ErrRebooting: success,
// as far as this kernel can tell.
//
// Cancelling ctx stops the wait, not the upgrade. One Upgrade at a time
// may run on a Client.
func (c *Client) Upgrade(ctx context.Context, args proto.UpgradeArgs, progress func(proto.ProgressEvent)) (*proto.UpgradeResult, error) {
	cl := &call{op: proto.OpUpgrade, wake: make(chan struct{}, 1)}
	if err := c.start(ctx, cl, args, nil); err != nil {
		return nil, err
	}
	defer func() {
		c.mu.Lock()
		if c.upgrade == cl {
			c.upgrade = nil
		}
		c.mu.Unlock()
	}()
	var committed *proto.CommittedEvent
	drain := func() {
		c.mu.Lock()
		evs := cl.evs
		cl.evs = nil
		c.mu.Unlock()
		for _, ev := range evs {
			switch ev.Event {
			case proto.EventProgress:
				var p proto.ProgressEvent
				if ev.Decode(&p) == nil && progress != nil {
					progress(p)
				}
			case proto.EventCommitted:
				committed = &proto.CommittedEvent{}
				ev.Decode(committed)
			}
		}
	}
	for {
		select {
		case <-cl.wake:
			drain()
		case r := <-cl.done:
			drain()
			if r.err != nil {
				if committed != nil && errors.Is(r.err, ErrRebooting) {
					return &proto.UpgradeResult{Upgrade: committed.Upgrade}, opError(cl, r.err)
				}
				return nil, opError(cl, r.err)
			}
			var res proto.UpgradeResult
			if _, err := result(cl, r, &res, 0); err != nil {
				return nil, err
			}
			return &res, nil
		case <-ctx.Done():
			c.abandon(cl)
			return nil, fmt.Errorf("luod upgrade (request %d): %w; the upgrade goes on", cl.id, ctx.Err())
		}
	}
}

// checkFiles refuses a file to preserve that has no File, before anything
// is sent.
func checkFiles(op string, files []FileToPreserve) error {
	for i, f := range files {
		if f.File == nil {
			return fmt.Errorf("luod %s: file %d (token %#x) has no File", op, i, f.Token)
		}
	}
	return nil
}

// wireFiles splits files into what a request names (token, label) and the
// fds that ride with it, in the same order.
func wireFiles(files []FileToPreserve) ([]proto.FileSpec, []*os.File) {
	specs := make([]proto.FileSpec, len(files))
	fds := make([]*os.File, len(files))
	for i, f := range files {
		specs[i] = proto.FileSpec{Token: f.Token, Label: f.Label}
		fds[i] = f.File
	}
	return specs, fds
}
