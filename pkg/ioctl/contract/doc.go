// Package contract is one table of test cases for /dev/liveupdate that runs
// unchanged against the real kernel (ioctl.System) and against the fake in
// pkg/ioctl/ioctltest. A case that passes on one and fails on the other is
// a bug in the fake.
//
// The table holds the 15 TEST_F cases of the kernel selftest
// tools/testing/selftests/liveupdate/liveupdate.c, under the same names,
// followed by cases for the rest of the uAPI in
// include/uapi/linux/liveupdate.h as Linux 7.2 implements it: errno order
// of the ioctl checks, struct size rules, session lifetime, and
// preservation rules. Cases that need a kexec are not here; they run in the
// VM harness.
//
// Every case closes all it opens, so that nothing it created survives into
// a later case or across a kexec of the machine it ran on; Run checks after
// every case that the device is free again.
//
// The cases need only what a minimal Linux system has: /dev/null, memfds,
// /proc for the holder check, and the right to raise RLIMIT_NOFILE to about
// 4100 (root, or a hard limit that high).
package contract
