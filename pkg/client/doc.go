// Package client is the Go library a VMM (or luoctl) uses to talk to luod
// over its socket; see pkg/proto and docs/protocol.md for the protocol.
//
// A Client is one connection. It is safe for concurrent use: every method
// sends one request (or a few, see Preserve) with a fresh id, and a single
// reader goroutine hands each response to the call that waits for it and
// queues events for Events. Every method takes a context; cancelling it
// stops the wait (and a send blocked on a full socket) but cannot recall a
// request luod already has: the operation may still happen.
//
// Errors are of three kinds:
//
//   - luod's answers: *proto.Error, matched by code with errors.Is, e.g.
//     errors.Is(err, proto.ErrExists);
//   - the connection's: ErrClosed (Close was called), ErrDisconnected
//     (luod went away; with ErrRebooting too when it announced a committed
//     upgrade first), ErrProtocol (luod sent something unreadable; the
//     connection is then closed, as no pending call could be answered
//     reliably);
//   - the context's: context.Canceled or context.DeadlineExceeded.
//
// # Sessions and fds
//
// CreateSession and RetrieveSession return a Session wrapping a session fd
// of the caller's own: its PreserveFD, RetrieveFD and Finish are the
// kernel's ioctls issued directly (pkg/ioctl), the path for VFIO and
// iommufd, which need the workload's own ioctls. Tokens preserved so must
// be told to luod with Declare so that they enter its manifest. For
// memfds, Preserve and Reclaim let luod do the ioctls. Files passed in are
// duplicated by the kernel in transit and stay the caller's to close;
// files handed out (Session.File, ReclaimedFile.File) are the caller's to
// close too.
//
// # Upgrades
//
// A workload that must quiesce before a live update calls Subscribe and
// reads Events: on proto.EventPrepare it gets ready and answers with Ready
// before the deadline; proto.EventCommitted means the machine is about to
// kexec. Upgrade (admin) runs an upgrade, reporting its phases; a real one
// ends with ErrRebooting rather than a result.
//
// The package builds on Linux only.
package client
