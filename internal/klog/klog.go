// Package klog reads the kernel's own account of a live update from its log
// ring: the lines KHO and LUO print at boot when they find handed-over
// state. They are the independent witness that decoded handover blobs are
// checked against.
//
//	luo: Retrieved live update data, liveupdate number: N   (kernel/liveupdate/luo_core.c)
//	KHO: exec from: RELEASE (count N)                     (kernel/liveupdate/kexec_handover.c)
package klog

import (
	"bytes"
	"strconv"
)

// Handover is what the kernel log says came over at this boot.
type Handover struct {
	// LiveUpdateNumber is from LUO's line; HasLiveUpdate says it was found.
	LiveUpdateNumber uint64
	HasLiveUpdate    bool
	// PreviousRelease and KexecCount are from KHO's kexec-metadata line;
	// HasExecFrom says it was found.
	PreviousRelease string
	KexecCount      uint32
	HasExecFrom     bool
}

// Parse extracts the handover lines from kernel log text. It scans for
// the two lines by hand: the regular expressions it used before were
// compiled at every luod start, before main, and scanned the whole log
// (TestParseLikeRegexp keeps their meaning).
func Parse(log []byte) Handover {
	var h Handover
	if m, ok := liveUpdateNumber(log); ok {
		if n, err := strconv.ParseUint(string(m), 10, 64); err == nil {
			h.LiveUpdateNumber, h.HasLiveUpdate = n, true
		}
	}
	if rel, count, ok := execFrom(log); ok {
		if n, err := strconv.ParseUint(string(count), 10, 32); err == nil {
			h.PreviousRelease, h.KexecCount, h.HasExecFrom = string(rel), uint32(n), true
		}
	}
	return h
}

// liveUpdateNumber finds the first `liveupdate number: (\d+)`.
func liveUpdateNumber(log []byte) (digits []byte, ok bool) {
	const key = "liveupdate number: "
	for at := 0; ; at++ {
		i := bytes.Index(log[at:], []byte(key))
		if i < 0 {
			return nil, false
		}
		at += i
		rest := log[at+len(key):]
		if n := span(rest, isDigit); n > 0 {
			return rest[:n], true
		}
	}
}

// execFrom finds the first `KHO: exec from: (\S+) \(count (\d+)\)`.
func execFrom(log []byte) (release, count []byte, ok bool) {
	const key, countKey = "KHO: exec from: ", " (count "
	for at := 0; ; at++ {
		i := bytes.Index(log[at:], []byte(key))
		if i < 0 {
			return nil, nil, false
		}
		at += i
		rest := log[at+len(key):]
		r := span(rest, func(c byte) bool { return !isSpace(c) })
		if r == 0 || !bytes.HasPrefix(rest[r:], []byte(countKey)) {
			continue
		}
		tail := rest[r+len(countKey):]
		if c := span(tail, isDigit); c > 0 && c < len(tail) && tail[c] == ')' {
			return rest[:r], tail[:c], true
		}
	}
}

// span is the length of b's prefix whose bytes all satisfy f.
func span(b []byte, f func(byte) bool) int {
	for i, c := range b {
		if !f(c) {
			return i
		}
	}
	return len(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isSpace is \s of Go's regular expressions: [\t\n\f\r ].
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r'
}
