//go:build !linux

package klog

import "golang.org/x/sys/unix"

// Follower reads what the kernel logs; Linux only.
type Follower struct{}

// Follow is Linux only.
func Follow() (*Follower, error) { return nil, unix.ENOSYS }

// Lines is Linux only.
func (w *Follower) Lines() []string { return nil }

// Close is Linux only.
func (w *Follower) Close() error { return nil }
