// Package klog reads the kernel's own account of a live update from its log
// ring: the lines KHO and LUO print at boot when they find handed-over
// state. They are the independent witness that decoded handover blobs are
// checked against.
//
//	luo: Retrieved live update data, liveupdate number: N   (kernel/liveupdate/luo_core.c)
//	KHO: exec from: RELEASE (count N)                     (kernel/liveupdate/kexec_handover.c)
package klog

import (
	"regexp"
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

var (
	reLUO  = regexp.MustCompile(`liveupdate number: (\d+)`)
	reExec = regexp.MustCompile(`KHO: exec from: (\S+) \(count (\d+)\)`)
)

// Parse extracts the handover lines from kernel log text.
func Parse(log []byte) Handover {
	var h Handover
	if m := reLUO.FindSubmatch(log); m != nil {
		if n, err := strconv.ParseUint(string(m[1]), 10, 64); err == nil {
			h.LiveUpdateNumber, h.HasLiveUpdate = n, true
		}
	}
	if m := reExec.FindSubmatch(log); m != nil {
		if n, err := strconv.ParseUint(string(m[2]), 10, 32); err == nil {
			h.PreviousRelease, h.KexecCount, h.HasExecFrom = string(m[1]), uint32(n), true
		}
	}
	return h
}
