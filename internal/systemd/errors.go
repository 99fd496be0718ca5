package systemd

// Error is a failed exchange with systemd. Op is what luod tried
// ("READY", "FDSTORE", "FDSTOREREMOVE", "LISTEN_FDS", "kexec.target", …),
// FDName the fd concerned when there is one.
type Error struct {
	Op     string
	FDName string
	Err    error
}

func (e *Error) Error() string {
	s := "systemd: " + e.Op
	if e.FDName != "" {
		s += " " + e.FDName
	}
	return s + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }
