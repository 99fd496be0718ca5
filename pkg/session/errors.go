package session

import (
	"errors"
	"fmt"

	"github.com/luod/luod/pkg/ioctl"
	"golang.org/x/sys/unix"
)

// Error codes, as docs/protocol.md defines them. An *Error's Code is one
// of these; the server puts it into the response's error.code unchanged.
const (
	// CodeBadRequest: the request does not fit the session's state (preserve
	// into an incoming session, retrieve an open one) or a field is invalid
	// (a label that is not UTF-8, a nil file).
	CodeBadRequest = "bad_request"
	// CodeInvalidName: the session name breaks the rule of ValidateName.
	CodeInvalidName = "invalid_name"
	// CodeExists: the session name is taken (by anyone: names are unique
	// host-wide), or a token is taken in the session.
	CodeExists = "exists"
	// CodeNotFound: no such session visible to the caller — also what
	// another uid's session looks like — or no such token.
	CodeNotFound = "not_found"
	// CodePermissionDenied: the caller may not do this at all. Custody
	// never answers it for another uid's session (see CodeNotFound); the
	// server uses it for admin operations.
	CodePermissionDenied = "permission_denied"
	// CodeBadFD: a file that cannot be preserved: nil or closed, given
	// twice, of a kind no kernel handler takes (not a memfd), already
	// preserved in some session, or too large.
	CodeBadFD = "bad_fd"
	// CodeBusy: an upgrade is committing (Freeze), or another operation on
	// the same session is running.
	CodeBusy = "busy"
	// CodeLimit: a documented limit (Config, MaxLabels and friends,
	// MaxManifestSize) was reached.
	CodeLimit = "limit"
	// CodeKernel: the kernel refused an ioctl; Err is the *ioctl.Error,
	// which names op, session, token and errno.
	CodeKernel = "kernel"
	// CodeInternal: anything else (out of fds duplicating a session fd,
	// misuse of the API).
	CodeInternal = "internal"
)

// Error is a failed custody operation.
type Error struct {
	// Code is one of the Code constants.
	Code string
	// Session names the session concerned, if any.
	Session string
	// Token is the file token concerned, valid when HasToken is set.
	Token    uint64
	HasToken bool
	// Err is the cause: an *ioctl.Error (possibly wrapped with more
	// context) for kernel refusals, else a sentence.
	Err error
}

// Error is a human sentence naming the session and token. A kernel error
// is the *ioctl.Error's own text, which names them already.
func (e *Error) Error() string {
	var ie *ioctl.Error
	if errors.As(e.Err, &ie) && ie.Session != "" {
		return e.Err.Error()
	}
	var prefix string
	switch {
	case e.Session != "" && e.HasToken:
		prefix = fmt.Sprintf("session %q token %#x: ", e.Session, e.Token)
	case e.Session != "":
		prefix = fmt.Sprintf("session %q: ", e.Session)
	case e.HasToken:
		prefix = fmt.Sprintf("token %#x: ", e.Token)
	}
	if e.Err == nil {
		return prefix + e.Code
	}
	return prefix + e.Err.Error()
}

// Unwrap gives the cause, so errors.As(err, new(*ioctl.Error)) and
// errors.Is(err, unix.EBUSY) work for kernel errors.
func (e *Error) Unwrap() error { return e.Err }

// CodeOf is the protocol error code of err: an *Error's Code (found with
// errors.As), "" for nil, CodeInternal for anything else.
func CodeOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

func errorf(code, session string, format string, args ...any) *Error {
	return &Error{Code: code, Session: session, Err: fmt.Errorf(format, args...)}
}

func tokenErrorf(code, session string, token uint64, format string, args ...any) *Error {
	return &Error{Code: code, Session: session, Token: token, HasToken: true, Err: fmt.Errorf(format, args...)}
}

// busyFrozen is the sentence of every mutating operation during Freeze.
const busyFrozen = "upgrade in progress: sessions are frozen until it commits or aborts"

// kernelError maps an error from the Device or a Handle to an *Error. The
// errno decides the code where the protocol has a better one than kernel.
func kernelError(op, session string, token uint64, hasToken bool, err error) *Error {
	e := &Error{Code: CodeKernel, Session: session, Token: token, HasToken: hasToken, Err: err}
	var ie *ioctl.Error
	if !errors.As(err, &ie) {
		if errors.Is(err, ioctl.ErrInvalidName) {
			e.Code = CodeInvalidName
		} else {
			e.Code = CodeInternal
		}
		return e
	}
	switch op {
	case "CREATE_SESSION":
		if ie.Errno == unix.EEXIST {
			e.Code = CodeExists
		}
	case "PRESERVE_FD":
		switch ie.Errno {
		case unix.ENOENT, unix.EBADF, unix.EBUSY, unix.EFBIG:
			e.Code = CodeBadFD
		case unix.EEXIST:
			e.Code = CodeExists
		case unix.ENOSPC:
			e.Code = CodeLimit
		}
	case "RETRIEVE_SESSION", "RETRIEVE_FD":
		if ie.Errno == unix.ENOENT {
			e.Code = CodeNotFound
		}
	}
	return e
}
