// Package ioctl is luod's binding to the kernel's Live Update Orchestrator
// (LUO) user API, include/uapi/linux/liveupdate.h (Linux 7.2).
//
// # The device
//
// /dev/liveupdate is a misc device that only one process may hold open at a
// time: a second open(2) fails with EBUSY until the first holder closes it.
// Open reports who holds it (pid and command, found in /proc). When the
// previous kernel handed sessions over, the first open deserializes them;
// a failure there is reported as EIO.
//
// Two ioctls exist on the device:
//
//   - CREATE_SESSION (nr 0x00) makes a new, empty outgoing session with a
//     unique name (1 to 63 bytes, NUL-terminated in a 64-byte field) and
//     returns a session file descriptor. A name already in use gives EEXIST.
//   - RETRIEVE_SESSION (nr 0x01) takes a session that the previous kernel
//     handed over, by name, and returns a session file descriptor for it.
//     ENOENT: no such session came over; EINVAL: it was retrieved already.
//
// # Sessions
//
// A session lives exactly as long as a file descriptor for it is open
// (dups and fds passed over SCM_RIGHTS count). When the last one closes, an
// outgoing session and everything preserved in it is dropped; an incoming
// (retrieved) session is finished. At reboot(LINUX_REBOOT_CMD_KEXEC) the
// kernel serializes every open outgoing session for the next kernel.
//
// Four ioctls exist on a session fd:
//
//   - PRESERVE_FD (nr 0x40), outgoing sessions only: marks an fd (today: a
//     memfd) for preservation under a caller-chosen 64-bit token. ENOENT: no
//     handler can preserve that kind of file; EBUSY: the file is already
//     preserved, in this or another session; EEXIST: the token is taken in
//     this session; EBADF: not an open fd.
//   - RETRIEVE_FD (nr 0x41), incoming sessions only: returns a new fd for a
//     preserved token. Retrieving a token again returns the same file;
//     a failed retrieve fails the same way every time.
//   - FINISH (nr 0x42), incoming sessions only: gives the preserved state
//     back to the kernel once the workload has restored it.
//   - GET_NAME (nr 0x43): the session's full name.
//
// Using an incoming-only ioctl on an outgoing session (or the reverse) gives
// EINVAL.
//
// # Encoding
//
// Every ioctl number is _IO(0xBA, nr): no size or direction bits. Every
// argument struct starts with its own u32 size; the kernel accepts a larger
// struct as long as the bytes it does not know are zero (else E2BIG) and
// refuses one too small to hold the last field it needs (EINVAL). Structs
// here are encoded to bytes in the CPU's byte order, so the same encoding
// drives the real kernel and the fake in ioctltest.
//
// All kernel errors come back as *Error, which names the operation, the
// session, the token and the errno's meaning; errors.Is(err, unix.EBUSY)
// and friends work through Unwrap. A missing device is ErrNotSupported.
//
// This package alone touches unsafe and raw ioctls; everything above it
// goes through Device and Session.
package ioctl
