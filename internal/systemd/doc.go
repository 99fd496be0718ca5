// Package systemd is luod's edge to systemd: readiness and watchdog
// notifications, the file descriptor store that keeps sessions alive while
// luod restarts, taking those fds back at start, structured logging to the
// journal, and the "orderly" kexec through systemd's kexec.target.
//
// Everything here degrades to a no-op (or an honest false) when luod does
// not run under systemd, so the daemon calls it unconditionally.
//
// # Why luod needs the fd store
//
// A Live Update Orchestrator session lives exactly as long as one of its
// file descriptors is open. luod keeps one fd of every session it holds
// (pkg/session), so if luod exits — crash, OOM kill, watchdog, a package
// upgrade's restart — every session it held is dropped by the kernel,
// together with the guest memory preserved in it. The service manager can
// hold a second fd on luod's behalf: the file descriptor store.
//
// # The notification protocol (sd_notify(3))
//
// systemd passes the address of its notification socket, an AF_UNIX
// datagram socket, in $NOTIFY_SOCKET (a path, or an abstract name written
// with a leading '@'). Each datagram is newline-separated VAR=value
// assignments:
//
//   - READY=1: startup finished (Type=notify). luod sends it once recovery
//     is done and it accepts clients; units ordered After=luod.service start
//     only then.
//   - STATUS=…: one free-form line shown by systemctl status.
//   - WATCHDOG=1: keep-alive. With WatchdogSec= set, systemd kills the
//     service (SIGABRT) when no ping arrives for that long; $WATCHDOG_USEC
//     says how long, $WATCHDOG_PID which process it applies to.
//   - STOPPING=1: shutdown has begun.
//   - FDSTORE=1 with FDNAME=name: store the fds attached to this datagram
//     as SCM_RIGHTS ancillary data. systemd keeps a duplicate (in the sense
//     of dup(2)); luod's own fd stays open and usable. systemd drops an fd
//     it already holds (same open file) instead of storing it twice.
//   - FDSTOREREMOVE=1 with FDNAME=name: close every stored fd of that name.
//
// NotifyAccess=main in luod.service makes systemd accept these only from
// luod's main process. systemd never answers: a datagram that was sent may
// still have been refused (FileDescriptorStoreMax= reached or 0, an invalid
// name), which systemd only logs. go-systemd's daemon.SdNotify cannot
// attach fds and dials a new socket for every message, so luod has its
// own small sender (SCM_RIGHTS for StoreFD) on one socket kept connected.
//
// # What happens to the store
//
// On the next start of luod.service systemd passes the stored fds back the
// way socket activation passes sockets: as fds 3, 4, … with $LISTEN_FDS
// (how many), $LISTEN_PID (for which process) and $LISTEN_FDNAMES (the
// names, ':'-separated, in the same order). The sockets of luod.socket come
// first, named by its FileDescriptorName= ("luod.socket"), then the store.
// TakeInherited sorts them out.
//
// The store survives a restart job (systemctl restart) and an automatic
// restart (Restart=on-failure, including a watchdog kill), on every systemd
// version. It is released when the service is stopped with no job queued —
// systemctl stop, a start-limit hit, a failed state — unless
// FileDescriptorStorePreserve=yes (systemd 254 and later), which keeps it as
// long as the unit is loaded; `systemctl clean --what=fdstore luod` empties
// it. Across a kexec it survives only with systemd 261 or later, whose
// shutdown preserves every unit's store through the Live Update
// Orchestrator: it recognises LUO session fds in a store, leaves them to
// the kernel as sessions, retrieves them again in the next boot and hands
// the retrieved session fds back under the same FDNAME. luod's direct path
// (reboot(LINUX_REBOOT_CMD_KEXEC) called by luod itself) never involves the
// store; there luod's own manifest carries everything.
//
// # Names
//
// FDNAME is the only thing that tells the next luod which fd is which, so
// every stored fd carries one built by FDName: "session-<name>" for a
// session's fd and "manifest" for a memfd holding luod's serialized state.
// systemd accepts names of at most 255 bytes of printable ASCII without
// ':' (':' separates $LISTEN_FDNAMES). Session names may contain ':', so
// FDName percent-encodes it; see FDName for the exact rule.
//
// # What luod must do
//
// Store a session's fd as soon as luod holds it (created, or recovered
// after a live update), and remove it when luod lets the session go
// (delete, finish): a stored fd pins the session exactly like luod's own,
// so forgetting FDSTOREREMOVE keeps a deleted session — and its memory —
// alive until the store is emptied. At start, adopt what TakeInherited
// returns before anything else, and remove and close what is not
// recognised.
package systemd
