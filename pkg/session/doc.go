// Package session is luod's custody of Live Update Orchestrator sessions:
// the table of sessions luod holds for its clients, the manifest that
// carries that table across a kexec, and the recovery that rebuilds it in
// the next kernel and proves the handover happened.
//
// The package is pure: it opens no sockets, talks to no systemd and never
// kexecs. Its only effects on the kernel go through Device and Handle, a
// thin seam over pkg/ioctl (FromIoctl adapts an *ioctl.Device); tests drive
// it with pkg/ioctl/ioctltest.
//
// # Sessions and states
//
// A kernel session lives exactly as long as one of its fds is open. luod
// therefore keeps its own fd of every session in its custody, so the
// session outlives the client that asked for it (a VMM may checkpoint and
// exit before the update). A session is in one of four states:
//
//   - open: created in this boot; files are preserved into it. At the
//     next live update the kernel carries it over.
//   - incoming: handed over by the previous kernel and retrieved by luod at
//     Recover, not yet claimed by its owner.
//   - claimed: its owner took a duplicate of the session fd
//     (RetrieveForClient) or had luod retrieve its files (Reclaim).
//   - finished: FINISH gave the preserved state back to the kernel. The
//     entry stays listed (as a tombstone) until Delete, or until its owner
//     creates a new session of the same name.
//
// Only open sessions cross the next live update: the kernel cannot
// preserve a retrieved session again, so incoming and claimed sessions are
// discarded by the next kexec (Status counts them so an upgrade can refuse).
//
// # Authorization
//
// Every operation takes the Caller's identity. A workload sees and touches
// only the sessions of its own uid; an admin sees and touches all. A
// session of another uid is reported exactly like a missing one, not_found,
// so a workload cannot probe other users' names; the one unavoidable leak
// is Create, which must say exists for a name taken by anyone, because
// names are unique on the host.
//
// # Concurrency
//
// A Custody is safe for concurrent use. One mutex guards the table and is
// never held across an ioctl: an operation marks its session busy, runs its
// ioctls unlocked, then records the result. A second operation on the same
// session meanwhile fails with busy instead of queueing. Freeze waits for
// operations in flight, so the manifest written while frozen matches the
// kernel exactly. A manifest written before the freeze (PrewriteManifest)
// is kept only while no change has been counted since; the first change
// drops it from the kernel.
package session
