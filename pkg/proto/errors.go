package proto

import (
	"errors"
	"fmt"
)

// Code is the machine-readable kind of an Error, the "code" field.
type Code string

// Error codes, exactly those of docs/protocol.md.
const (
	// CodeBadRequest: not JSON, not an object, a missing, unknown or
	// invalid field, the wrong number of fds, or a packet too large.
	CodeBadRequest Code = "bad_request"
	// CodeUnsupportedVersion: "v" is not Version.
	CodeUnsupportedVersion Code = "unsupported_version"
	// CodeUnknownOp: no such operation.
	CodeUnknownOp Code = "unknown_op"
	// CodeInvalidName: a session name breaks the rule of
	// ValidateSessionName.
	CodeInvalidName Code = "invalid_name"
	// CodeExists: a session of that name exists; names are unique on the
	// host across all users.
	CodeExists Code = "exists"
	// CodeNotFound: no such session visible to the caller, or no such
	// token.
	CodeNotFound Code = "not_found"
	// CodePermissionDenied: another uid's session, or an admin operation
	// from a non-admin.
	CodePermissionDenied Code = "permission_denied"
	// CodeBadFD: an fd that cannot be preserved (not a memfd, closed,
	// already preserved).
	CodeBadFD Code = "bad_fd"
	// CodeBusy: an upgrade, or another conflicting operation, is in
	// progress.
	CodeBusy Code = "busy"
	// CodeNoKernelLoaded: OpUpgrade without a loaded kernel.
	CodeNoKernelLoaded Code = "no_kernel_loaded"
	// CodePreflightFailed: the kernel image, initrd or config failed the
	// preflight checks.
	CodePreflightFailed Code = "preflight_failed"
	// CodeKexecFailed: the kernel refused kexec_file_load or reboot; every
	// session is intact.
	CodeKexecFailed Code = "kexec_failed"
	// CodeAborted: the upgrade barrier failed: a client did not answer
	// OpReady in time, or went away.
	CodeAborted Code = "aborted"
	// CodeLimit: a documented limit was reached (sessions per uid, fds per
	// session, connections).
	CodeLimit Code = "limit"
	// CodeKernel: the kernel refused an ioctl; the message names the
	// operation, session, token and errno.
	CodeKernel Code = "kernel"
	// CodeInternal: anything else; luod logs the details.
	CodeInternal Code = "internal"
)

// Sentinels, one per code, for errors.Is: errors.Is(err, proto.ErrExists)
// holds for any *Error with CodeExists, whatever its message.
var (
	ErrBadRequest         = &Error{Code: CodeBadRequest}
	ErrUnsupportedVersion = &Error{Code: CodeUnsupportedVersion}
	ErrUnknownOp          = &Error{Code: CodeUnknownOp}
	ErrInvalidName        = &Error{Code: CodeInvalidName}
	ErrExists             = &Error{Code: CodeExists}
	ErrNotFound           = &Error{Code: CodeNotFound}
	ErrPermissionDenied   = &Error{Code: CodePermissionDenied}
	ErrBadFD              = &Error{Code: CodeBadFD}
	ErrBusy               = &Error{Code: CodeBusy}
	ErrNoKernelLoaded     = &Error{Code: CodeNoKernelLoaded}
	ErrPreflightFailed    = &Error{Code: CodePreflightFailed}
	ErrKexecFailed        = &Error{Code: CodeKexecFailed}
	ErrAborted            = &Error{Code: CodeAborted}
	ErrLimit              = &Error{Code: CodeLimit}
	ErrKernel             = &Error{Code: CodeKernel}
	ErrInternal           = &Error{Code: CodeInternal}
)

// Error is a failed request, the "error" of a Response. A client receives
// luod's errors as *Error; match them by code with errors.Is against a
// sentinel or any *Error of that code.
type Error struct {
	// Code is the kind of failure, one of the Code constants (a newer
	// luod may send codes this package does not know).
	Code Code `json:"code"`
	// Message is a human sentence naming the object concerned.
	Message string `json:"message"`
}

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "luod: " + string(e.Code)
	}
	return "luod: " + string(e.Code) + ": " + e.Message
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t != nil && t.Code == e.Code
}

// Errors of Conn about a received or outgoing packet. A received packet
// that fails so has been consumed whole and its fds closed; the connection
// stays usable and in step, so luod answers CodeBadRequest (with id 0: the
// request could not be read) and goes on.
var (
	// ErrMessageTooLarge: a packet over MaxMessageSize bytes.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrTooManyFDs: more than MaxFDs file descriptors in one packet.
	ErrTooManyFDs = errors.New("too many file descriptors")
	// ErrControlTruncated: the kernel could not deliver all ancillary
	// data (MSG_CTRUNC); some file descriptors were lost.
	ErrControlTruncated = errors.New("ancillary data truncated")
)

// AsError converts err to the *Error to send in a response: an *Error in
// err's chain as is; a bad packet (ErrMessageTooLarge, ErrTooManyFDs,
// ErrControlTruncated) as CodeBadRequest with err's text; anything else as
// CodeInternal with a generic message, since details are for luod's log.
func AsError(err error) *Error {
	var e *Error
	switch {
	case err == nil:
		return &Error{Code: CodeInternal, Message: "unknown error"}
	case errors.As(err, &e):
		return e
	case errors.Is(err, ErrMessageTooLarge), errors.Is(err, ErrTooManyFDs), errors.Is(err, ErrControlTruncated):
		return &Error{Code: CodeBadRequest, Message: err.Error()}
	}
	return &Error{Code: CodeInternal, Message: "internal error; see luod's log"}
}
