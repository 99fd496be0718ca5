package kho

// DebugFSDir is where debugfs is conventionally mounted, and the parent of
// DefaultDir's "kho" directory.
const DebugFSDir = "/sys/kernel/debug"

// MountDebugFS mounts debugfs at DebugFSDir unless it is mounted there
// already, so that ReadDir(DefaultDir) can tell a cold boot from a missing
// mount. It needs CAP_SYS_ADMIN, and fails under kernel lockdown
// (debugfs is restricted) or outside Linux (errors.ErrUnsupported).
func MountDebugFS() error { return mountDebugFS(DebugFSDir) }
