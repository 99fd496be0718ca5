// Package ioctltest is an in-memory fake of the Linux 7.2 Live Update
// Orchestrator behind ioctl.Backend, for unit tests of code above
// pkg/ioctl. It follows kernel/liveupdate/luo_core.c, luo_session.c and
// luo_file.c check for check, so an ioctl that fails in the kernel fails
// here with the same errno, found in the same order; the contract tests in
// pkg/ioctl/contract run the same table against both.
//
// # Real file descriptors
//
// Every fd the fake hands out (the device, each session) is a real fd: the
// write end of a pipe(2), close-on-exec, whose read end the fake keeps. It
// can be dup'ed, inherited, or passed over SCM_RIGHTS like the kernel's.
// The fake knows an object by the inode of the fd given to Ioctl, which all
// copies share. An object lives while any copy of its write end is open:
// once the last one closes, the read end reports POLLHUP and the fake
// releases the object on its next call (reaping is lazy, at every Backend
// call and at Reboot):
//
//   - the device becomes free for the next Open (luo_release);
//   - an outgoing session is dropped with every file it preserved, and its
//     name is free again (luo_session_release);
//   - a retrieved incoming session is finished, as if FINISH were issued,
//     and is gone (luo_session_release).
//
// Because the fake keeps a read end per object and a dup per preserved
// file, it uses about twice the fds the kernel would charge to the process.
//
// # What is checked, in the kernel's order
//
// Device ioctls (luo_ioctl): nr outside {0x00, 0x01} gives EINVAL; a request
// whose nr is known but whose number differs (type, size or direction bits)
// gives ENOTTY; a size below the struct (72) gives EINVAL; non-zero bytes
// past the struct give E2BIG (copy_struct_from_user). CREATE_SESSION then
// takes an fd, refuses a name that is empty or has no NUL in 64 bytes
// (EINVAL) and a name already used by an outgoing session (EEXIST).
// RETRIEVE_SESSION gives ENOENT for a name the previous kernel did not hand
// over and EINVAL for one already retrieved.
//
// Session ioctls (luo_session_ioctl): nr outside 0x40..0x43 gives EINVAL,
// then ENOTTY as above, then the session type: PRESERVE_FD only on outgoing
// sessions, RETRIEVE_FD and FINISH only on retrieved ones (EINVAL), then the
// size checks. PRESERVE_FD then checks, like luo_preserve_file: the token is
// new in this session (EEXIST), the fd is open in the calling process and
// not O_PATH (EBADF), a handler takes the file (ENOENT: only the memfd
// handler exists, which takes regular tmpfs files with no link, i.e.
// memfds and O_TMPFILE files, but not hugetlb memfds), the inode is not
// preserved already by any session, nor retrieved and unfinished (EBUSY),
// and the file has at most UINT_MAX pages (EFBIG). GET_NAME and FINISH
// refuse reserved != 0 (EINVAL).
//
// A failed ioctl writes nothing back; a successful one writes back
// min(size, struct size) bytes, as luo_ucmd_respond does. An fd that is
// not one of the fake's gives ENOTTY, as a memfd, a pipe or /dev/null do.
//
// # Reboot
//
// Reboot simulates reboot(LINUX_REBOOT_CMD_KEXEC) and the boot of the next
// kernel. Every outgoing session alive at that moment becomes an incoming
// session of the next kernel with its files; each preserved file is copied
// into a fresh memfd (contents, size, file position and seals, as
// memfd_luo restores them), so a retrieved file is a new inode, as in the
// new kernel. Incoming sessions of the current kernel are discarded,
// retrieved or not, the device is free, and LiveUpdateNum goes up by one.
//
// The calling process survives a Reboot, which a real one does not. Every
// device and session fd handed out before it is dead: any ioctl on one
// gives EBADF, as the fd would not exist in the next kernel, and closing it
// has no effect on the new kernel's objects. The process's own memfds are
// not touched.
//
// RETRIEVE_FD returns a new fd of the restored file (a dup of the fake's
// reference, so all fds of one token share the file position, as the
// kernel's struct file does); retrieving the token again returns the same
// file. From the first retrieve until FINISH, the file counts as preserved:
// PRESERVE_FD of it into a new outgoing session gives EBUSY. FINISH drops
// every file of the session; RETRIEVE_FD then gives ENOENT, and FINISH can
// be repeated. The session stays retrieved until its last fd closes; then
// its name is gone (RETRIEVE_SESSION gives ENOENT).
//
// # Not modelled
//
// Preserving a memfd freezes its size in the kernel (memfd_luo_preserve
// calls shmem_freeze: ftruncate, fallocate and growing writes fail with
// EPERM until it is unpreserved); the fake cannot do this to a real memfd
// (seals are permanent, and only a memfd made with MFD_ALLOW_SEALING takes
// them), so a test must not change a preserved file's size: luod reports
// the size it recorded at preserve, as the kernel guarantees it. The
// fake's objects are pipes, so read, write, fstat and fcntl(F_GETFL) on
// them differ from the kernel's misc device and anon inodes, generic VFS
// ioctls (FIOCLEX and friends) are not handled, and a new session fd is
// not the lowest free fd number (the pipe's read end takes that one).
// Out-of-memory paths, a failing freeze at reboot, and a failing
// deserialization at open exist only through fault injection (FailNext,
// FailRetrieve).
//
// # Fault injection
//
// FailNext(req, errno) makes the next call with that request fail with
// errno before any check and with no effect, in the manner of
// mdlayher/netlink's nltest.Error; ReqOpen and ReqReboot name Open and
// Reboot. FailRetrieve makes RETRIEVE_FD of one incoming file fail with an
// errno every time, as a failed memfd_luo_retrieve does.
package ioctltest
