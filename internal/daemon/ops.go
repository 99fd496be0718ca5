package daemon

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/kho"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// dispatch runs one decoded request. It returns the result and the fds
// to send with it (which the caller sends, or not, and closes), or an
// error. files are the request's fds, which the caller closes; an op that
// takes one over sets its entry to -1.
func (d *Daemon) dispatch(c *conn, req *proto.Request, caller session.Caller, cred *unix.Ucred, files []int) (any, attached, error) {
	// docs/protocol.md: only create_session(s), preserve and load take
	// fds, and an op without args refuses any field; the cases below check
	// only their own.
	if req.Op != proto.OpCreateSession && req.Op != proto.OpCreateSessions && req.Op != proto.OpPreserve &&
		req.Op != proto.OpLoad && len(files) > 0 {
		return nil, nil, proto.Errorf(proto.CodeBadRequest, "%s takes no file descriptors, got %d", req.Op, len(files))
	}
	switch req.Op {
	case proto.OpHello, proto.OpSubscribe, proto.OpStatus, proto.OpUnload, proto.OpMetrics:
		if err := decode(req, &struct{}{}); err != nil {
			return nil, nil, err
		}
	}
	switch req.Op {
	case proto.OpHello:
		return proto.HelloResult{Version: proto.Version, Daemon: Version, Release: d.boot.release}, nil, nil

	case proto.OpCreateSession:
		var a proto.CreateSessionArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		if len(a.Files) == 0 && len(files) > 0 {
			return nil, nil, proto.Errorf(proto.CodeBadRequest,
				"create_session without files takes no file descriptors, got %d", len(files))
		}
		if len(a.Files) != len(files) {
			return nil, nil, proto.Errorf(proto.CodeBadRequest,
				"create_session names %d files but %d file descriptors came with it", len(a.Files), len(files))
		}
		return d.createSession(caller, cred, a, files)

	case proto.OpCreateSessions:
		var a proto.CreateSessionsArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		if err := checkCreateSessions(a, len(files)); err != nil {
			return nil, nil, err
		}
		return d.createSessions(caller, cred, a, files), nil, nil

	case proto.OpPreserve:
		var a proto.PreserveArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		if len(a.Files) != len(files) {
			return nil, nil, proto.Errorf(proto.CodeBadRequest,
				"preserve names %d files but %d file descriptors came with it", len(a.Files), len(files))
		}
		done, err := d.preserve(caller, a.Session, a.Files, files)
		if len(done) > 0 {
			d.changed(a.Session)
			// One line a request, not a file: a request carries up to
			// proto.MaxFDs files, and the log is on the preserve path.
			bytes := d.logPreserved(a.Session, caller, done)
			d.log.Info("files preserved", "session", a.Session, "uid", caller.UID, "count", len(done), "bytes", bytes,
				"first_token", done[0].Token, "last_token", done[len(done)-1].Token)
		}
		if err != nil {
			return nil, nil, err
		}
		return proto.PreserveResult{Files: preserved(done)}, nil, nil

	case proto.OpDeclare:
		var a proto.DeclareArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		decl := make([]session.FileDecl, len(a.Files))
		for i, f := range a.Files {
			decl[i] = session.FileDecl{Token: f.Token, Label: f.Label}
		}
		if err := d.custody.Declare(caller, a.Session, decl); err != nil {
			return nil, nil, err
		}
		d.log.Info("files declared", "session", a.Session, "uid", caller.UID, "count", len(decl))
		d.changed(a.Session)
		return struct{}{}, nil, nil

	case proto.OpListSessions, proto.OpSessions:
		var a proto.SessionsArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		if a.Limit < 0 {
			return nil, nil, proto.Errorf(proto.CodeBadRequest, "limit %d is negative", a.Limit)
		}
		who := caller
		if req.Op == proto.OpListSessions {
			who.Admin = false // a workload's own view, even for root
		}
		res, err := sessionsPage(d.custody.List(who), a)
		return res, nil, err

	case proto.OpDeleteSession:
		var a proto.DeleteSessionArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		if err := d.custody.Delete(caller, a.Name); err != nil {
			return nil, nil, err
		}
		d.log.Info("session deleted", "session", a.Name, "uid", caller.UID)
		d.changed(a.Name)
		return struct{}{}, nil, nil

	case proto.OpSubscribe:
		d.mu.Lock()
		d.subs[c] = true
		d.mu.Unlock()
		d.log.Info("client subscribed to upgrade events", "conn", c.id, "pid", cred.Pid, "uid", cred.Uid)
		return struct{}{}, nil, nil

	case proto.OpReady:
		var a proto.ReadyArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		d.mu.Lock()
		b := d.barrier
		d.mu.Unlock()
		if b == nil || b.id != a.Upgrade {
			return nil, nil, proto.Errorf(proto.CodeNotFound, "no upgrade %q is waiting for clients", a.Upgrade)
		}
		b.ready(c)
		return struct{}{}, nil, nil

	case proto.OpRetrieveSession:
		var a proto.RetrieveSessionArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		// A session from an older luod may list more than an answer
		// holds: refused before it is handed over.
		if _, listed := d.custody.Listed(caller, a.Name); answerSize(a.Name, listed) > maxAnswer {
			return nil, nil, unanswerable(a.Name, answerSize(a.Name, listed))
		}
		s, dup, err := d.custody.RetrieveForClient(caller, a.Name)
		if err != nil {
			return nil, nil, err
		}
		d.log.Info("session handed to its owner", "session", s.Name, "uid", caller.UID, "pid", cred.Pid)
		d.changed(s.Name)
		return proto.RetrieveSessionResult{Name: s.Name, Files: fileInfos(s.Files)}, fileList{dup}, nil

	case proto.OpReclaim:
		var a proto.ReclaimArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		res, fds, err := d.reclaim(caller, []string{a.Name}, a.Finish)
		if err != nil {
			return nil, nil, err
		}
		return res.Sessions[0].ReclaimResult, fds, nil

	case proto.OpReclaimSessions:
		var a proto.ReclaimSessionsArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		if len(a.Names) == 0 {
			return nil, nil, proto.Errorf(proto.CodeBadRequest, "reclaim_sessions names no session")
		}
		res, fds, err := d.reclaim(caller, a.Names, a.Finish)
		if err != nil {
			return nil, nil, err
		}
		return res, fds, nil

	case proto.OpFinishSession:
		var a proto.FinishSessionArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		if err := d.custody.Finish(caller, a.Name); err != nil {
			return nil, nil, err
		}
		d.log.Info("session finished", "session", a.Name, "uid", caller.UID)
		d.changed(a.Name)
		return struct{}{}, nil, nil

	case proto.OpStatus:
		return d.status(), nil, nil
	case proto.OpMetrics:
		return d.metricsSnapshot(), nil, nil
	case proto.OpInspect:
		var a proto.InspectArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		return d.inspect(a.Dir)
	case proto.OpLoad:
		var a proto.LoadArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		in := takeFiles(files)
		defer func() {
			for _, f := range in {
				f.Close()
			}
		}()
		res, err := d.load(a, in)
		return res, nil, err
	case proto.OpUnload:
		return struct{}{}, nil, d.unload()
	case proto.OpUpgrade:
		var a proto.UpgradeArgs
		if err := decode(req, &a); err != nil {
			return nil, nil, err
		}
		res, err := d.upgrade(c, a)
		return res, nil, err
	}
	return nil, nil, proto.Errorf(proto.CodeUnknownOp, "unknown operation %q", req.Op)
}

// reclaim reclaims names in order (reclaim and reclaim_sessions) while
// their files fit one answer (proto.MaxFDs fds, proto.MaxMessageSize
// bytes), stopping at the first it cannot reclaim: that error is the
// answer only when nothing was reclaimed before it. A session that fits
// no answer on its own is refused (limit) before anything of it is
// retrieved or finished: finishing a session whose files then cannot be
// sent would lose them. The client takes such a session's fd with
// retrieve_session instead (pkg/client does).
// The sessions done are then recorded together: one
// append to the custody record, one log line, before the answer, so a
// luod killed before answering has recorded every session it finished.
// The fds of the files are the caller's to send and close.
func (d *Daemon) reclaim(caller session.Caller, names []string, finish bool) (proto.ReclaimSessionsResult, fdList, error) {
	var res proto.ReclaimSessionsResult
	var fds fdList
	var err error
	budget := maxAnswer
	for _, name := range names {
		n, listed := d.custody.Listed(caller, name)
		size := answerSize(name, listed)
		if len(res.Sessions) > 0 && (len(fds)+n > proto.MaxFDs || size > budget) {
			break
		}
		if size > maxAnswer {
			err = unanswerable(name, size)
			break
		}
		if n > proto.MaxFDs {
			err = proto.Errorf(proto.CodeLimit,
				"session %q has more files than one answer carries (%d, at most %d fds): nothing of it was retrieved or finished; take its fd with retrieve_session, retrieve each file with RETRIEVE_FD, then finish_session",
				name, n, proto.MaxFDs)
			break
		}
		var r session.Reclaimed
		if r, err = d.custody.Reclaim(caller, name, finish); err != nil {
			break
		}
		budget -= size
		res.Sessions = append(res.Sessions, proto.ReclaimedSession{Name: name,
			ReclaimResult: proto.ReclaimResult{Files: fileInfos(r.Session.Files), Finished: r.Finished}})
		fds = append(fds, r.FDs...)
	}
	if len(res.Sessions) == 0 {
		return res, nil, err
	}
	done := make([]string, len(res.Sessions))
	for i, s := range res.Sessions {
		done[i] = s.Name
	}
	if len(done) == 1 {
		r := res.Sessions[0]
		d.log.Info("session reclaimed", "session", r.Name, "uid", caller.UID, "files", len(r.Files), "finished", r.Finished)
	} else {
		d.log.Info("sessions reclaimed", "sessions", len(done), "first", done[0], "last", done[len(done)-1],
			"uid", caller.UID, "files", len(fds), "finish", finish, "stopped_by", err)
	}
	d.changed(done...)
	return res, fds, nil
}

// answerEnvelope bounds a response's bytes around its result:
// {"v":1,"id":…,"ok":true,"result":{"sessions":[…]}}; maxAnswer is what
// is left of a message for the result.
const (
	answerEnvelope = 256
	maxAnswer      = proto.MaxMessageSize - answerEnvelope
)

// unanswerable refuses (limit) session name, whose answer would take
// about size bytes, past maxAnswer: only an older luod made such a
// session (it refused none), and no answer, reclaim or retrieve_session,
// can hand it back.
func unanswerable(name string, size int) error {
	return proto.Errorf(proto.CodeLimit,
		"session %q lists more files than one answer holds (about %d bytes, at most %d): luod cannot hand it back, nothing of it was retrieved or finished, and its files stay preserved until it is deleted",
		name, size, maxAnswer)
}

// answerSize bounds the bytes a session called name whose files take
// listed bytes (Custody.Listed) adds to a reclaim answer:
// {"name":"…","files":[…],"finished":false}, (a session name needs no
// escape).
func answerSize(name string, listed int) int { return 40 + len(name) + listed }

// preserve preserves the received files into session name, each with
// the token and label its spec (same index) gives.
func (d *Daemon) preserve(caller session.Caller, name string, specs []proto.FileSpec, files []int) ([]session.File, error) {
	return d.custody.Preserve(caller, name, preserveFiles(specs, files))
}

// preserveFiles pairs the received files with their specs (same index).
func preserveFiles(specs []proto.FileSpec, files []int) []session.PreserveFile {
	if len(files) == 0 {
		return nil
	}
	pf := make([]session.PreserveFile, len(files))
	for i, f := range files {
		pf[i] = session.PreserveFile{FD: f, Token: specs[i].Token, Label: specs[i].Label}
	}
	return pf
}

// createSession creates a session and preserves files into it, the files
// of the request if any, all or nothing (custody.CreateWith: when a file
// cannot be preserved, the session is dropped again and no other request
// saw it). The fd store and the custody record learn of the session once,
// holding its files; the fd store before any other request can delete
// it, so a delete's removal cannot overtake the store.
func (d *Daemon) createSession(caller session.Caller, cred *unix.Ucred, a proto.CreateSessionArgs, files []int) (any, attached, error) {
	s, done, dup, err := d.custody.CreateWith(caller, a.Name, a.Labels, preserveFiles(a.Files, files),
		session.CreateOptions{Dup: true, Keep: d.storeSessions})
	if err != nil {
		return nil, nil, err
	}
	var bytes int64
	if len(done) > 0 {
		bytes = d.logPreserved(s.Name, caller, done)
	}
	// One line for the request, files and all.
	d.log.Info("session created", "session", s.Name, "uid", s.UID, "pid", cred.Pid, "files", len(done), "bytes", bytes)
	d.changed(s.Name)
	return proto.CreateSessionResult{Name: s.Name, Files: preserved(done)}, fileList{dup}, nil
}

// checkCreateSessions refuses a create_sessions request as a whole, before
// anything is created: no session, more than proto.MaxCreateSessions, a
// name given twice, or files named that do not match the fds attached.
func checkCreateSessions(a proto.CreateSessionsArgs, nfd int) error {
	switch n := len(a.Sessions); {
	case n == 0:
		return proto.Errorf(proto.CodeBadRequest, "create_sessions names no session")
	case n > proto.MaxCreateSessions:
		return proto.Errorf(proto.CodeLimit, "create_sessions names %d sessions, at most %d a request", n, proto.MaxCreateSessions)
	}
	seen := make(map[string]struct{}, len(a.Sessions))
	files := 0
	for _, s := range a.Sessions {
		if _, dup := seen[s.Name]; dup {
			return proto.Errorf(proto.CodeBadRequest, "create_sessions names session %.64q twice", s.Name)
		}
		seen[s.Name] = struct{}{}
		files += len(s.Files)
	}
	if files != nfd {
		return proto.Errorf(proto.CodeBadRequest,
			"create_sessions names %d files but %d file descriptors came with it", files, nfd)
	}
	return nil
}

// createSessions is create_session of each session of a, in order,
// each all or nothing and refused on its own (its error in its entry of
// the answer). No session fd goes back to the client. The sessions
// created go into the fd store together, one batch of messages
// (custody.CreateMany keeps them busy until it is sent; systemd takes one
// FDNAME a message), and are then recorded together, as reclaim_sessions
// does: one append to the custody record, one log line, all before the
// answer, so a luod killed before answering has recorded every session it
// created.
func (d *Daemon) createSessions(caller session.Caller, cred *unix.Ucred, a proto.CreateSessionsArgs, files []int) *proto.CreateSessionsResult {
	ns := make([]session.NewSession, len(a.Sessions))
	off := 0
	for i, s := range a.Sessions {
		ns[i] = session.NewSession{Name: s.Name, Labels: s.Labels, Files: preserveFiles(s.Files, files[off:off+len(s.Files)])}
		off += len(s.Files)
	}
	res := &proto.CreateSessionsResult{Sessions: make([]proto.CreatedSession, len(a.Sessions))}
	created := make([]string, 0, len(a.Sessions))
	nfiles, refused := 0, 0
	var bytes int64
	var firstErr error
	for i, c := range d.custody.CreateMany(caller, ns, d.storeSessions) {
		if c.Err != nil {
			d.metrics.Error(proto.OpCreateSessions)
			res.Sessions[i].Error = proto.AsError(toProto(c.Err))
			refused++
			firstErr = cmp.Or(firstErr, c.Err)
			continue
		}
		if len(c.Files) > 0 {
			res.Sessions[i].Files = preserved(c.Files)
			bytes += d.logPreserved(c.Session.Name, caller, c.Files)
			nfiles += len(c.Files)
		}
		created = append(created, c.Session.Name)
	}
	if len(created) > 0 {
		d.changed(created...)
	}
	attrs := []any{"sessions", len(created), "uid", caller.UID, "pid", cred.Pid, "files", nfiles, "bytes", bytes}
	if len(created) > 0 {
		attrs = append(attrs, "first", created[0], "last", created[len(created)-1])
	}
	if refused > 0 {
		attrs = append(attrs, "refused", refused, "first_refusal", firstErr)
	}
	d.log.Info("sessions created", attrs...)
	fitAnswer(res)
	return res
}

// fitAnswer shortens the error messages of a create_sessions answer until
// it fits a message: with at most proto.MaxCreateSessions entries and
// proto.MaxFDs files it then does, whatever the messages held (they may
// quote long rejected names and labels). The codes stay.
func fitAnswer(res *proto.CreateSessionsResult) {
	for _, limit := range []int{-1, 160, 0} {
		if limit >= 0 {
			for _, s := range res.Sessions {
				if s.Error != nil && len(s.Error.Message) > limit {
					s.Error.Message = strings.ToValidUTF8(s.Error.Message[:limit], "") + "…"
				}
			}
		}
		if b, err := json.Marshal(res); err == nil && len(b) <= maxAnswer {
			return
		}
	}
}

// logPreserved logs each preserved file at debug level and returns their
// bytes.
func (d *Daemon) logPreserved(name string, caller session.Caller, done []session.File) int64 {
	var bytes int64
	debug := d.log.Enabled(context.Background(), slog.LevelDebug)
	for _, f := range done {
		bytes += f.Size
		if debug {
			d.log.Debug("file preserved", "session", name, "uid", caller.UID, "token", f.Token, "bytes", f.Size)
		}
	}
	return bytes
}

// preserved is the protocol's account of done.
func preserved(done []session.File) []proto.PreservedFile {
	out := make([]proto.PreservedFile, len(done))
	for i, f := range done {
		out[i] = proto.PreservedFile{Token: f.Token, Size: f.Size}
	}
	return out
}

// takeFiles makes files of received fds, for an op that reads them (load):
// the files own the fds now, and the entries of fds become -1 so that the
// request's cleanup leaves them alone.
func takeFiles(fds []int) []*os.File {
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), fmt.Sprintf("scm_rights[%d]", i))
		fds[i] = -1
	}
	return files
}

// decode decodes a request's args; it exists so that a nil *proto.Error
// becomes a nil error, not a non-nil interface holding nil.
func decode(req *proto.Request, v any) error {
	if err := req.DecodeArgs(v); err != nil {
		return err
	}
	return nil
}

// pageBudget is how many bytes of sessions a page holds: a message less
// room for the envelope and the page's own fields.
const pageBudget = proto.MaxMessageSize - 1024

// sessionsPage is the page of ss (sorted by name) that a.After and
// a.Limit ask for, as many sessions as fit one message. A single session
// too large for a message on its own (thousands of files) is a limit
// error naming it.
func sessionsPage(ss []session.Session, a proto.SessionsArgs) (*proto.SessionsResult, error) {
	i, _ := slices.BinarySearchFunc(ss, a.After, func(s session.Session, name string) int { return strings.Compare(s.Name, name) })
	if i < len(ss) && ss[i].Name == a.After {
		i++
	}
	res := &proto.SessionsResult{Sessions: []proto.SessionInfo{}}
	size := 0
	for ; i < len(ss); i++ {
		if a.Limit > 0 && len(res.Sessions) == a.Limit {
			break
		}
		info := infos(ss[i : i+1])[0]
		b, err := json.Marshal(info)
		if err != nil {
			return nil, err
		}
		if size+len(b)+1 > pageBudget {
			if len(res.Sessions) == 0 {
				return nil, proto.Errorf(proto.CodeLimit, "session %q alone (%d bytes) does not fit the protocol's %d-byte message", info.Name, len(b), proto.MaxMessageSize)
			}
			break
		}
		size += len(b) + 1
		res.Sessions = append(res.Sessions, info)
	}
	if i < len(ss) {
		res.Next = res.Sessions[len(res.Sessions)-1].Name
	}
	return res, nil
}

func infos(ss []session.Session) []proto.SessionInfo {
	out := make([]proto.SessionInfo, len(ss))
	for i, s := range ss {
		out[i] = proto.SessionInfo{Name: s.Name, UID: s.UID, Labels: s.Labels, State: string(s.State),
			Files: fileInfos(s.Files), Created: s.Created, Incoming: s.Incoming}
	}
	return out
}

func fileInfos(fs []session.File) []proto.FileInfo {
	out := make([]proto.FileInfo, len(fs))
	for i, f := range fs {
		out[i] = proto.FileInfo{Token: f.Token, Label: f.Label, Size: f.Size}
	}
	return out
}

// inspect decodes a handover directory: this boot's, or a saved copy.
func (d *Daemon) inspect(dir string) (any, attached, error) {
	if dir == "" {
		dir = d.cfg.KHODir
	}
	h, err := kho.ReadDir(dir)
	if err != nil {
		return nil, nil, proto.Errorf(proto.CodeNotFound, "%v", err)
	}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, nil, err
	}
	return json.RawMessage(b), nil, nil
}
