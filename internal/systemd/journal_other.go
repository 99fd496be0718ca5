//go:build !linux

package systemd

import "log/slog"

// NewLogger returns false: the journal exists only on Linux.
func NewLogger(level slog.Leveler) (*slog.Logger, bool) { return nil, false }
